"""Task fingerprints (placeholder until the full digest lands: code bytes only)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._graph import Graph


def _code(fn: Any) -> bytes:
    code = getattr(fn, "__code__", None)
    return code.co_code if code is not None else repr(fn).encode()


def digests(graph: Graph) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for name in graph.topological_order():
        t = graph.tasks[name]
        own = hashlib.sha256(_code(t.fn) + repr((t.args, t.kwargs, t.skip_none)).encode())
        own_hex = own.hexdigest()[:32]
        full = hashlib.sha256(own_hex.encode())
        for d in t.deps:
            full.update(out[d][1].encode())
        out[name] = (own_hex, full.hexdigest()[:32])
    return out
