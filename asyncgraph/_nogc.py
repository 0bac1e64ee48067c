"""The cycle collector paused while a bulk structure is built: :func:`paused`.

CPython's collector runs each time some hundreds more container objects were allocated
than freed, and each pass walks the young objects (and, every so often, all of them).
A load builds the stored rows, records and elements of every task at once, all of which
stay alive: without a pause each of them is walked several times, which measured
30-50 % of a load of 10k tasks. ``paused()`` turns the collector off for such a step
and back on after, as Mercurial's ``util.nogc`` does while it builds large containers
("disable GC while building complex (huge) containers").

Nothing here changes what is kept or freed: the objects made meanwhile are looked at by
the next collection instead. Only a collector that was on is turned back on, so a pause
inside a pause, one in another thread at the same time, or a program that runs with
the collector off are left as they were (at worst a pause ends early).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused"]


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block (see the module's docstring)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
