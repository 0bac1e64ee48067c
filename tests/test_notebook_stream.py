"""The notebook example's stream cells, run in a real kernel (nbclient): the bar counts
the source batches to the end and shows rows/s, the outputs are printed as they come,
and the per-stage summary table is shown.

The whole notebook runs, as a user runs it top to bottom; the stream cells carry the
``stream`` tag, which is how this test finds them.
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
NOTEBOOK = ROOT / "examples" / "notebook.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@pytest.fixture(scope="module")
def executed() -> Any:
    old = os.environ.get("PYTHONPATH")
    # The kernel is a child process: it must import this checkout's asyncgraph.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), old) if p)
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        )
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    return nb


def _stream_cells(nb: Any) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code" and "stream" in c.metadata.get("tags", [])]


def _text(cell: Any, name: str) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == name)


def test_the_stream_cells_exist_and_open_a_stream_with_a_bar(executed):
    cells = _stream_cells(executed)
    assert len(cells) >= 2
    assert any("ag.open_stream(" in c.source and "progress=True" in c.source for c in cells)


def test_the_bar_counts_every_source_batch_and_shows_rows_per_second(executed):
    [cell] = [c for c in _stream_cells(executed) if "ag.open_stream(" in c.source]
    states = executed.metadata["widgets"][WIDGET_STATE]["state"]
    bars = []
    for out in cell.outputs:
        data = out.get("data", {})
        if WIDGET_VIEW not in data:
            continue
        box = states[data[WIDGET_VIEW]["model_id"]]["state"]
        for child in box["children"]:
            model = states[child.removeprefix("IPY_MODEL_")]
            if model["model_name"] in ("IntProgressModel", "FloatProgressModel"):
                bars.append((model["state"], data.get("text/plain", "")))
    [(bar, text)] = bars
    assert (bar["value"], bar["max"]) == (12, 12)  # 12 source batches of max_batches=12
    assert bar["bar_style"] == "success"
    assert "12/12" in text and "done 12" in text and "failed 0" in text, text
    assert re.search(r"[\d,]+ rows/s", text), text


def test_outputs_are_printed_as_they_come_and_the_result_is_shown(executed):
    [cell] = [c for c in _stream_cells(executed) if "ag.open_stream(" in c.source]
    printed = _text(cell, "stdout").splitlines()
    assert printed and all(line.startswith("keep batch ") for line in printed), printed
    # 12 batches of 100 rows, merged by three and split in two (<= 250 rows): each output
    # once, every source batch in some output, and the rows add up (half kept).
    ids = [line.split()[2].rstrip(":") for line in printed]
    assert len(set(ids)) == len(ids) == 8 and "0+1+2.0" in ids, printed
    sources = {s for line in printed for s in re.findall(r"\d+", line.split("[")[1])}
    assert sorted(map(int, sources)) == list(range(12)), printed
    rows = sum(int(re.search(r": (\d+) rows", line)[1]) for line in printed)
    assert rows == 600
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in cell.outputs)
    assert "<StreamResult batches: 12 done; 1200 rows>" in shown, shown


def test_the_per_stage_summary_table_is_shown(executed):
    [cell] = [c for c in _stream_cells(executed) if "to_frame()" in c.source]
    [html] = [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
    for column in ("calls", "done", "failed", "rows_in", "rows_out", "busy"):
        assert f"<th>{column}</th>" in html, html
    for stage in ("fetch", "score", "keep"):
        assert f"<th>{stage}</th>" in html, html


FAILING_STREAM = """
import pandas as pd
import asyncgraph as ag

g = ag.Graph()

@g.stream
async def check(source):
    if source["n"].iloc[0] == 3:
        raise ValueError("batch 3 is bad")
    return source

def five():
    for i in range(5):
        yield pd.DataFrame({"n": [i]})
"""


def test_an_open_ended_bar_fills_and_ends_danger_when_a_batch_failed(monkeypatch):
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(FAILING_STREAM),
        # no max_batches: the bar's total is the batches read so far
        nbformat.v4.new_code_cell("r = await ag.run_stream(g, source=five, progress=True)\nr"),
    ]
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    states = nb.metadata["widgets"][WIDGET_STATE]["state"]
    found = []
    for out in nb.cells[1].outputs:
        data = out.get("data", {})
        if WIDGET_VIEW in data:
            box = states[data[WIDGET_VIEW]["model_id"]]["state"]
            for child in box["children"]:
                model = states[child.removeprefix("IPY_MODEL_")]
                if model["model_name"] in ("IntProgressModel", "FloatProgressModel"):
                    found.append((model["state"], data.get("text/plain", "")))
    [(bar, text)] = found
    assert (bar["value"], bar["max"]) == (5, 5)
    assert bar["bar_style"] == "danger"
    assert "5/5" in text and "done 4" in text and "failed 1" in text, text
