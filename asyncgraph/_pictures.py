"""Pictures of a Graph: Mermaid and DOT text, SVG through graphviz, the HTML table, and
the Gantt chart of its timeline.

Text output is deterministic: nodes in definition order, edges by dependent in
definition order, each dependent's edges in binding order. Nodes get generated ids
(``t0``, ``t1``, ...) and the task's name goes only into a quoted, escaped label, so
any name (spaces, quotes, dashes, ``#``, ``<``) is safe. IO tasks are rounded (a
stadium in Mermaid, an ellipse in DOT), CPU tasks are boxes; the fill is the status.

No module here is imported by ``import asyncgraph``; matplotlib is imported only by
``plot_timeline`` (the ``plot`` extra) and graphviz is the ``dot`` program, not a
Python package.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import warnings
from typing import TYPE_CHECKING, Any

from ._state import State
from ._task import Kind

if TYPE_CHECKING:
    from ._graph import BaseGraph

__all__ = ["MermaidText", "SVG", "plot_timeline", "to_dot", "to_html", "to_mermaid", "visualize"]

#: Fill and border colour of each status (Material palette: readable in both themes).
COLOURS: dict[State, tuple[str, str]] = {
    State.PENDING: ("#eeeeee", "#9e9e9e"),
    State.RUNNING: ("#bbdefb", "#1565c0"),
    State.DONE: ("#c8e6c9", "#2e7d32"),
    State.FAILED: ("#ffcdd2", "#c62828"),
    State.SKIPPED: ("#fff9c4", "#f9a825"),
    State.CANCELLED: ("#e0e0e0", "#424242"),
}


def _ids(graph: BaseGraph) -> dict[str, str]:
    return {name: f"t{i}" for i, name in enumerate(graph)}


def _edges(graph: BaseGraph) -> list[tuple[str, str, bool]]:
    """(dependency, dependent, order-only) of every edge; order-only edges (``after=``)
    are drawn dashed: the dependent waits for the dependency but gets no result. A
    family's elements are drawn inside it, without edges."""
    tasks = graph.tasks
    if graph._dag.fans:
        return [
            (dep, name, dep in task.after)
            for name, task in tasks.items()
            if task.family is None
            for dep in task.deps
        ]
    return [(dep, name, dep in task.after) for name, task in tasks.items() for dep in task.deps]


#: At most this many elements of a family are drawn; the rest are counted.
SHOWN_ELEMENTS = 12


def _families(graph: BaseGraph) -> dict[str, tuple[str, list[str], int]]:
    """Each mapped task with elements: its box's title (the count of its elements by
    status), the elements drawn, and how many are not."""
    out = {}
    records = graph.records
    for template, members in graph._dag.families().items():
        if template not in records:
            continue
        counts: dict[str, int] = {}
        for m in members:
            st = records[m].status.value
            counts[st] = counts.get(st, 0) + 1
        order = [st.value for st in State if st.value in counts]
        detail = ", ".join(f"{st} {counts[st]}" for st in order)
        title = f"{template} ({len(members)}: {detail})"
        shown = list(members[:SHOWN_ELEMENTS])
        out[template] = (title, shown, len(members) - len(shown))
    return out


# -- Mermaid ---------------------------------------------------------------------------


def _mermaid_label(name: str) -> str:
    # Inside "...", Mermaid reads #code; entities: escape '#' first, then what would
    # end the string or be read as markup.
    out = name.replace("#", "#35;")
    for char, code in (
        ('"', "#quot;"),
        ("&", "#amp;"),  # else "&lt;" in a name would show as "<"
        ("<", "#lt;"),
        (">", "#gt;"),
        ("`", "#96;"),  # else a `name` turns into a Markdown string
        ("\r", " "),
        ("\n", " "),
    ):
        out = out.replace(char, code)
    return f'"{out}"'


def to_mermaid(graph: BaseGraph) -> str:
    ids = _ids(graph)
    records = graph.records
    lines = ["flowchart LR"]
    families = _families(graph) if graph._dag.fans else {}
    tasks = graph.tasks
    for name, task in tasks.items():
        if task.family is not None and task.family in families:
            continue  # drawn in its family's box
        label = _mermaid_label(name)
        shape = f"([{label}])" if task.kind is Kind.IO else f"[{label}]"
        node = f"{ids[name]}{shape}:::{records[name].status.value}"
        family = families.get(name)
        if family is None:
            lines.append(f"    {node}")
            continue
        title, shown, more = family
        lines.append(f"    subgraph f{ids[name]} [{_mermaid_label(title)}]")
        lines.append(f"        {node}")
        for m in shown:
            inner = _mermaid_label(m)
            shape = f"([{inner}])" if tasks[m].kind is Kind.IO else f"[{inner}]"
            lines.append(f"        {ids[m]}{shape}:::{records[m].status.value}")
        if more:
            lines.append(f"        {ids[name]}more[{_mermaid_label(f'... {more} more')}]")
        lines.append("    end")
    for dep, name, order_only in _edges(graph):
        arrow = "-.->" if order_only else "-->"
        lines.append(f"    {ids[dep]} {arrow} {ids[name]}")
    used = {r.status for r in records.values()}
    for state in State:
        if state in used:
            fill, stroke = COLOURS[state]
            lines.append(f"    classDef {state.value} fill:{fill},stroke:{stroke},color:#000")
    return "\n".join(lines) + "\n"


# -- DOT -------------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    # Graphviz decodes HTML entities even in quoted strings: "&lt;" would show as "<".
    out = text.replace("&", "&amp;")
    out = out.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{out}"'


def to_dot(graph: BaseGraph) -> str:
    ids = _ids(graph)
    records = graph.records
    lines = [
        "digraph asyncgraph {",
        "    rankdir=LR;",
        '    node [style=filled, fontname="Helvetica"];',
    ]
    families = _families(graph) if graph._dag.fans else {}
    tasks = graph.tasks

    def node(name: str, indent: str = "    ") -> str:
        status = records[name].status
        fill, stroke = COLOURS[status]
        shape = "ellipse" if tasks[name].kind is Kind.IO else "box"
        return (
            f"{indent}{ids[name]} [label={_dot_string(name)}, shape={shape}, "
            f'fillcolor="{fill}", color="{stroke}", tooltip="{status.value}"];'
        )

    for name, task in tasks.items():
        if task.family is not None and task.family in families:
            continue  # drawn in its family's box
        family = families.get(name)
        if family is None:
            lines.append(node(name))
            continue
        title, shown, more = family
        lines.append(f"    subgraph cluster_{ids[name]} {{")
        lines.append(f"        label={_dot_string(title)};")
        lines.append(node(name, "        "))
        for m in shown:
            lines.append(node(m, "        "))
        if more:
            lines.append(
                f"        {ids[name]}more [label={_dot_string(f'... {more} more')}, "
                "shape=plaintext];"
            )
        lines.append("    }")
    for dep, name, order_only in _edges(graph):
        style = " [style=dashed]" if order_only else ""
        lines.append(f"    {ids[dep]} -> {ids[name]}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- visualize -------------------------------------------------------------------------


class SVG:
    """An SVG picture: shown by Jupyter, ``str()`` is the SVG text."""

    __slots__ = ("data",)

    def __init__(self, data: str) -> None:
        self.data = data

    def _repr_svg_(self) -> str:
        return self.data

    def __str__(self) -> str:
        return self.data

    def __repr__(self) -> str:
        return f"<SVG picture, {len(self.data)} characters>"


class MermaidText:
    """Mermaid text, the fallback of ``visualize()``: ``str()`` is the Mermaid source;
    Jupyter shows it as a mermaid block (rendered by JupyterLab >= 4.1)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_markdown_(self) -> str:
        return f"```mermaid\n{self.text}```\n"

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


#: Said when ``dot`` is missing; a test checks it names what to install.
HINT = (
    "graphviz's 'dot' program was not found, so visualize() returns Mermaid text; "
    "install graphviz (e.g. apt-get install graphviz, brew install graphviz, "
    "conda install graphviz) for an SVG picture"
)


def visualize(graph: BaseGraph) -> SVG | MermaidText:
    dot = shutil.which("dot")
    if dot is None:
        warnings.warn(HINT, stacklevel=3)
        return MermaidText(to_mermaid(graph))
    proc = subprocess.run(
        [dot, "-Tsvg"], input=to_dot(graph), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        warnings.warn(f"dot failed ({proc.stderr.strip()}); returning Mermaid text", stacklevel=3)
        return MermaidText(to_mermaid(graph))
    return SVG(proc.stdout)


# -- the HTML table ----------------------------------------------------------------------

#: Rows shown by ``_repr_html_``: a notebook cannot show 100k rows usefully.
HTML_ROWS = 200


def to_html(graph: BaseGraph, max_rows: int = HTML_ROWS) -> str:
    """An HTML status table: one row per task, coloured by status; escaped text."""
    tasks = graph.tasks
    head = "".join(
        f"<th>{h}</th>" for h in ("name", "kind", "status", "attempts", "duration_s", "error")
    )
    rows = []
    for i, (name, rec) in enumerate(graph.records.items()):
        if i == max_rows:
            break
        fill, _ = COLOURS[rec.status]
        duration = "" if rec.duration is None else f"{rec.duration:.3f}"
        error = "" if rec.error is None else f"{type(rec.error).__name__}: {rec.error}"
        rows.append(
            "<tr>"
            f"<td>{html.escape(name)}</td>"
            f"<td>{tasks[name].kind.value}</td>"
            f'<td style="background-color:{fill};color:#000">{rec.status.value}</td>'
            f"<td>{rec.attempts}</td>"
            f"<td>{duration}</td>"
            f"<td>{html.escape(error)}</td>"
            "</tr>"
        )
    more = len(graph) - len(rows)
    tail = f"<p>… and {more} more tasks (see to_frame())</p>" if more > 0 else ""
    caption = html.escape(repr(graph))
    return (
        f'<div class="asyncgraph"><p>{caption}</p>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{tail}</div>"
    )


# -- the Gantt chart ---------------------------------------------------------------------


def plot_timeline(graph: BaseGraph, ax: Any = None) -> Any:
    """Draw the timeline as horizontal bars on lanes; return the matplotlib Axes."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plot_timeline() needs matplotlib: pip install 'asyncgraph[plot]'"
        ) from None
    from ._report import timeline  # pandas, only now

    frame = timeline(graph)
    lanes = 1 if frame.empty else int(frame["lane"].max()) + 1
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 1 + 0.4 * lanes))
    if frame.empty:
        ax.set_title("nothing has run yet")
        return ax
    origin = frame["start"].min()
    starts = (frame["start"] - origin).dt.total_seconds()
    for (_, row), left in zip(frame.iterrows(), starts, strict=True):
        fill, stroke = COLOURS[State(row["status"])]
        ax.barh(
            row["lane"],
            row["duration_s"],
            left=left,
            color=fill,
            edgecolor=stroke,
            hatch="//" if row["kind"] == "cpu" else None,
        )
        ax.text(left, row["lane"], f" {row['name']}", va="center", ha="left", fontsize=8)
    ax.set_xlabel("seconds since the first start")
    # One tick per lane, at the whole numbers the bars sit on (matplotlib's own locator
    # would put ticks at 0.0, 0.5, 1.0 ...), labelled with the lane's number.
    ax.set_yticks(range(lanes), [str(i) for i in range(lanes)])
    ax.set_ylabel("lane (tasks that ran at once)")
    ax.invert_yaxis()
    ax.set_title("timeline (hatched: cpu)")
    return ax
