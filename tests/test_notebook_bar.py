"""The progress bar in a real Jupyter kernel: the widget fills as tasks settle, ends
``success`` or ``danger`` as the run ended, and the saved text shows the final counts.

Each notebook is executed by nbclient, which also saves the widgets' state (what a
browser would draw) in the notebook's metadata: the test reads the bar from there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")
pytest.importorskip("tqdm")

ROOT = Path(__file__).resolve().parents[1]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

GRAPH = """
import asyncgraph as ag

g = ag.Graph()
for name in ("a", "b", "c"):
    g.add(name, lambda: 1)

@g.task
def total(a, b, c):
    return a + b + c
"""

FAILING = """
@g.task
def boom(total):
    raise ValueError("the database is down")

@g.task
def after_boom(boom):
    return boom
"""


def _execute(*cells: str) -> Any:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    return nb


@pytest.fixture(autouse=True)
def _this_checkout(monkeypatch):
    # The kernel is a child process: it must import this checkout's asyncgraph.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )


def _bars(nb: Any, cell: int) -> list[tuple[dict[str, Any], str]]:
    """The progress widgets a cell shows: (the bar's saved state, the output's text)."""
    states = nb.metadata["widgets"][WIDGET_STATE]["state"]
    found = []
    for out in nb.cells[cell].outputs:
        data = out.get("data", {})
        if WIDGET_VIEW not in data:
            continue
        box = states[data[WIDGET_VIEW]["model_id"]]["state"]
        for child in box["children"]:
            model = states[child.removeprefix("IPY_MODEL_")]
            if model["model_name"] in ("IntProgressModel", "FloatProgressModel"):
                found.append((model["state"], data.get("text/plain", "")))
    return found


def test_the_bar_fills_and_ends_danger_when_a_task_failed():
    nb = _execute(GRAPH + FAILING, "done = await ag.run(g, progress=True)\ndone.summary()")
    [(bar, text)] = _bars(nb, 1)
    assert bar["max"] == 6
    assert bar["value"] == 6  # every task settled: 4 done, 1 failed, 1 skipped
    assert bar["bar_style"] == "danger"
    # the text a saved notebook shows where no widget can be drawn: the final counts
    assert "6/6" in text and "done 4 · failed 1 · skipped 1" in text, text
    # not tqdm's indeterminate bar ("0task [00:00, ?task/s]"); a rate such as "102.10task/s"
    # ends in "0task" too, so the count is matched as a whole number
    assert not re.search(r"(?<![\d.])0task\b", text) and "?task/s" not in text, text


def test_the_bar_ends_success_from_run_sync_in_a_notebook():
    # run_sync in a running loop runs the graph on a helper thread: the bar still reaches
    # this cell's widget.
    nb = _execute(GRAPH, "done = ag.run_sync(g, progress=True)\ndone.status")
    [(bar, text)] = _bars(nb, 1)
    assert (bar["value"], bar["max"]) == (4, 4)
    assert bar["bar_style"] == "success"
    assert "4/4" in text and "done 4 · failed 0 · skipped 0" in text, text


def test_a_second_run_gets_its_own_bar():
    nb = _execute(
        GRAPH + FAILING,
        "first = await ag.run(g, progress=True)",
        "second = await ag.run(ag.reset(first, ['a']), progress=True)",
    )
    [(first, _)] = _bars(nb, 1)
    [(second, text)] = _bars(nb, 2)
    assert first["value"] == first["max"] == 6
    # the rerun of a: a, total and boom run again (boom fails again), after_boom skipped
    assert second["value"] == second["max"] == 4, text
    assert second["bar_style"] == "danger"


def test_a_workers_print_shows_in_the_running_cell(monkeypatch):
    # What docs/guide.md says: ipykernel reads the kernel's file descriptors, which the
    # worker processes share, so a CPU task's print reaches the cell that runs the graph.
    # (ipykernel does not read them in a kernel started under pytest: it would fight
    # pytest's capture; a user's kernel is not.)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    nb = _execute(
        "import sys\nimport asyncgraph as ag\ng = ag.Graph()\n"
        "@g.task(kind='cpu')\ndef shout():\n"
        "    print('hello from a worker', flush=True)\n"
        "    print('worker stderr', file=sys.stderr, flush=True)\n"
        "@g.task\nasync def after(shout):\n    return 1\n",
        "done = await ag.run(g, cpu_workers=1)\nassert done.status['after'] is ag.State.DONE",
    )
    outputs = nb.cells[1].outputs
    text = {
        name: "".join(o["text"] for o in outputs if o.get("name") == name)
        for name in ("stdout", "stderr")
    }
    assert "hello from a worker" in text["stdout"], outputs
    assert "worker stderr" in text["stderr"], outputs
