"""``asyncgraph status`` of a family keyed by digits that are not decimal (``²``).

The table orders a family's elements by position when every key is a number; ``"²"``
passes ``str.isdigit`` but not ``int()``, so a family keyed by such text made the
command fail. Only decimal keys are read as positions now.
"""

from __future__ import annotations

import asyncgraph as ag
from asyncgraph.__main__ import main


def test_a_family_keyed_by_superscript_digits_is_listed(tmp_path, capsys):
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("xs", lambda: ["²", "³", "10"], deps=[])
    g.add("up", lambda x: x * 2, deps=["xs"], over="xs", key=lambda x: x)
    ag.run_sync(g, store=db)
    assert main(["status", str(db)]) == 0
    out = capsys.readouterr().out
    assert "up[²]" in out and "up[³]" in out and "up[10]" in out
