"""Small helpers shared by the benchmark scripts (timing, tables, JSON, machine info)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

# Make `python benchmarks/NAME.py` work from a checkout without installing the package;
# an asyncgraph already importable (PYTHONPATH, an install) is used as it is.
ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("asyncgraph") is None:
    sys.path.insert(0, str(ROOT))


def machine() -> dict[str, Any]:
    import asyncio  # noqa: F401

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    import asyncgraph

    pkg = Path(asyncgraph.__file__).parent
    info["asyncgraph_path"] = str(pkg)
    info["asyncgraph_commit"] = _git(pkg, "rev-parse", "HEAD")
    dirty = _git(pkg, "status", "--porcelain", "--", ".")
    info["asyncgraph_dirty"] = None if dirty is None else bool(dirty)
    for mod in ("uvloop", "anyio", "dask", "cloudpickle"):
        try:
            info[mod] = importlib.metadata.version(mod)
        except Exception:  # noqa: BLE001 - optional
            info[mod] = None
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = os.getloadavg()
    return info


def _git(where: Path, *args: str) -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, sep, *body])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    payload = {"machine": machine(), **payload}
    Path(path).write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {path}")
