"""A result as stored: ``serialize`` to ``(format, bytes)`` and ``deserialize`` back.

Two formats: ``pickle`` (plain values through :mod:`pickle`, anything else through
cloudpickle) and ``parquet`` (a pandas DataFrame, when pyarrow is installed). pandas and
pyarrow are imported only when a DataFrame is stored or loaded.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from .._exceptions import StoreError, UnstorableResultError

__all__ = ["deserialize", "serialize"]

_PLAIN = (type(None), bool, int, float, str, bytes)
_NONE = ("pickle", pickle.dumps(None, protocol=5))


def serialize(name: str, value: Any, what: str = "returned") -> tuple[str, bytes]:
    """A result as ``(format, data)``; raise UnstorableResultError if it cannot be.

    Plain values go through :mod:`pickle`; anything else through cloudpickle, so a class
    or function defined in a script or a notebook is stored by value and loads in another
    process. A pandas DataFrame is stored as Parquet when pyarrow is installed (smaller,
    faster, readable by other tools), and pickled if Parquet cannot represent it.
    """
    if value is None:
        return _NONE  # the most common result of all (a task run for its side effects)
    if type(value) in _PLAIN:
        return "pickle", pickle.dumps(value, protocol=5)
    if type(value).__name__ == "DataFrame" and type(value).__module__.startswith("pandas"):
        data = _to_parquet(value)
        if data is not None:
            return "parquet", data
    try:
        return "pickle", cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        raise UnstorableResultError(
            f"task {name!r} {what} a {type(value).__name__} that cannot be stored "
            f"({type(exc).__name__}: {exc}); return a picklable value (plain data, a "
            "DataFrame) or run without a store"
        ) from exc


def _to_parquet(frame: Any) -> bytes | None:
    import importlib.util
    import io

    if importlib.util.find_spec("pyarrow") is None:
        return None

    buf = io.BytesIO()
    try:
        frame.to_parquet(buf)
    except Exception:  # noqa: BLE001 - e.g. mixed-type columns: fall back to a pickle
        return None
    return buf.getvalue()


def deserialize(fmt: str, data: bytes) -> Any:
    """The value ``serialize`` made ``(fmt, data)`` of; StoreError for a format it
    does not know."""
    if fmt == "pickle":
        return pickle.loads(data)
    if fmt == "parquet":
        import io

        import pandas as pd

        return pd.read_parquet(io.BytesIO(data))
    raise StoreError(f"unknown result format {fmt!r}; was the store written by a newer asyncgraph?")
