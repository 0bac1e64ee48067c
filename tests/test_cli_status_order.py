"""``asyncgraph status`` lists a family's elements right after the family, by position.

The store writes an element's row when the element ends, so without this the table
showed them in the order they finished (``score[0], score[2], score[4], score[1]``), and
a loaded graph's run recorded them before their family.
"""

from __future__ import annotations

import asyncio

import pytest

import asyncgraph as ag
from asyncgraph.__main__ import main


def _rows(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("name")) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(line.split()[0])
    return rows


def _graph() -> ag.Graph:
    g = ag.Graph()

    @g.task
    async def items() -> list[int]:
        return list(range(12))

    @g.task(over="items")
    async def square(items: int) -> int:
        for _ in range(12 - items):  # the later the position, the sooner it ends
            await asyncio.sleep(0)
        return items * items

    @g.task
    def total(square: list[int]) -> int:
        return sum(square)

    return g


def test_elements_follow_their_family_by_position(tmp_path, capsys: pytest.CaptureFixture[str]):
    db = str(tmp_path / "order.db")
    g = _graph()
    done = ag.run_sync(g, store=db)
    assert done.results["total"] == sum(i * i for i in range(12))
    expected = ["items", "square", *(f"square[{i}]" for i in range(12)), "total"]

    assert main(["status", db]) == 0
    assert _rows(capsys.readouterr().out) == expected

    # a run of the loaded graph records the elements in its order too: still grouped
    ag.run_sync(ag.reset(ag.load(g, db), ["total"]), store=db)
    assert main(["status", db]) == 0
    assert _rows(capsys.readouterr().out) == expected
