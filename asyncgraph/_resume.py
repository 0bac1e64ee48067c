"""The old name of ``_store/resume.py``, kept until ``_runner`` imports it from there.

Not a copy: this name is the module ``asyncgraph._store.resume`` itself (see the last
line), so a name patched here (``benchmarks/store.py`` patches ``for_run`` and
``digests``) is patched there. Delete this file once nothing imports ``._resume``.
"""

from __future__ import annotations

import sys

from ._store import resume
from ._store.resume import Loaded, check_origin, durations, for_run, history, load, plan

__all__ = ["Loaded", "check_origin", "durations", "for_run", "history", "load", "plan"]

sys.modules[__name__] = resume
