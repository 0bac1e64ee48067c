"""examples/notebook.ipynb runs top to bottom in a real kernel, without a cell error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "notebook.ipynb"


def test_notebook_runs_without_errors(monkeypatch):
    # The kernel is a child process: it must import this checkout's asyncgraph.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel_name="python3" is the ipykernel of the Python running this test (jupyter's
    # native kernel), so no kernelspec has to be installed by hand.
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any('class="asyncgraph"' in h for h in html), "no HTML status table shown"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no timeline drawn"
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    # With ipywidgets (the test extra has it) the bar is a widget, whose saved text is
    # its final line; without, tqdm's text bar on the cell's stderr.
    widget = "".join(
        o["data"].get("text/plain", "")
        for o in outputs
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    )
    assert "5/5" in stderr + widget, "no progress bar drawn"
