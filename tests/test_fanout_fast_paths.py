"""The fast paths of a family's expansion and of ``plan`` write what the plain ones did.

Issue 15 wrote the common cases out inline (an int or str item's digest, a key's frame
in an element's fingerprint, a plan's rows as tuples): the bytes hashed, and so every
fingerprint a store holds, and the plan's table are unchanged, which these pin.
"""

from __future__ import annotations

import hashlib

import asyncgraph as ag
from asyncgraph import _fingerprint as fp


def test_an_items_digest_is_the_generic_one():
    values = [0, 1, -1, 127, 128, 255, 256, -129, 2**70, -(2**70)]
    values += ["", "a", "é", "\udcff", "x" * 1000, 1.5, -0.0, None, True, b"zz", 3j]
    got = fp.input_digests(values)
    want = [hashlib.sha256(b"top" + fp._atom(v)).hexdigest()[:32] for v in values]
    assert got == want


def test_a_familys_fingerprints_are_the_generic_ones():
    items = [("0", "ab" * 16, 0), ("k", None, 3), ("é", "cd" * 16, 5), ("", None, 0)]
    got = fp.element_fingerprints(("own", b"bind"), ["o1", "o2"], "parent", items)
    want = [
        fp.element_fingerprint(("own", b"bind"), ["o1", "o2"], k, item, "parent", i)
        for k, item, i in items
    ]
    assert got == want


def test_the_plans_table_keeps_its_columns_and_types(tmp_path):
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("xs", lambda: [1, 2], deps=[])
    g.add("double", lambda x: 2 * x, deps=["xs"], over="xs")
    g.add("total", lambda double: sum(double), deps=["double"])
    ag.run_sync(g, store=db)
    plan = ag.plan(g, db)
    assert list(plan.columns) == ["name", "kind", "action", "reason", "last_status", "last_run"]
    assert str(plan["last_run"].dtype) == "Int64"
    assert plan["name"].tolist() == ["xs", "double", "total", "double[0]", "double[1]"]
    assert set(plan["action"]) == {"reuse"}
    new = ag.Graph()
    new.add("fresh", lambda: 1, deps=[])
    fresh = ag.plan(new, tmp_path / "other.db")
    assert fresh["last_status"].isna().all() and fresh["last_run"].isna().all()
