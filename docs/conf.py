"""Sphinx configuration of asyncgraph's documentation site.

Build it (the ``docs`` extra) with the command README.md gives:

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The pages are the Markdown files beside this one (MyST-Parser), the theme is Furo. What
this file adds to a plain Sphinx setup, each part a small function below:

* the API reference (``reference.md``): generated from ``asyncgraph.__all__`` at build
  time, so a new public name appears without editing the page; a public name, or a
  public method of a public class, without a docstring is a warning (so ``-W`` fails);
* the example pages (``examples/*.md``): the ``asyncgraph-example`` directive shows a
  script's code and runs it, showing what it printed in this build; an example script
  without a page is a warning;
* links out of ``docs/`` (``../examples/``, ``../benchmarks/``, ``../README.md``): to the
  page that shows them where there is one, else shown as the path; a link to nothing is
  still a warning;
* intersphinx to Python, pandas, anyio and Dask from the inventories shipped in
  ``_inventories/`` (see ``_inventories/make.py``): the build reads no network.

tests/test_docs_site.py runs the build and fails on any warning.
"""

from __future__ import annotations

import inspect
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT))  # this checkout's asyncgraph, installed or not

import asyncgraph  # noqa: E402

logger = logging.getLogger("asyncgraph.docs")

# -- the project -------------------------------------------------------------------------

project = "asyncgraph"
author = "the asyncgraph authors"
copyright = "the asyncgraph authors"
release = version = asyncgraph.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inventories", "**/.ipynb_checkpoints"]
suppress_warnings: list[str] = []

# -- Markdown (MyST) ----------------------------------------------------------------------

myst_heading_anchors = 4  # the pages link to their sections by GitHub-style anchors
myst_enable_extensions = ["colon_fence"]

# -- HTML --------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"asyncgraph {release}"
html_static_path = ["_static"]
html_css_files = ["asyncgraph.css"]
html_show_sourcelink = False

# -- the API reference -------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
python_use_unqualified_type_names = True
autodoc_default_options = {"members": True}  # no "Bases:" lines: BaseGraph is internal
add_module_names = True

# -- links to other projects' docs, from local inventories (no network) ----------------

INVENTORIES = HERE / "_inventories"
intersphinx_mapping = {
    # The URL is where links point; the file is the inventory that version published.
    "python": ("https://docs.python.org/3.11/", str(INVENTORIES / "python.inv")),
    "pandas": (
        "https://pandas.pydata.org/pandas-docs/version/1.5.3/",
        str(INVENTORIES / "pandas.inv"),
    ),
    "dask": ("https://docs.dask.org/en/stable/", str(INVENTORIES / "dask.inv")),
    "anyio": ("https://anyio.readthedocs.io/en/stable/", str(INVENTORIES / "anyio.inv")),
}
intersphinx_timeout = 1  # never used: every inventory above is a local file

# -- every broken reference is a warning -------------------------------------------------

nitpicky = True
nitpick_ignore_regex = [
    # The library's own internals that public signatures name (their docs are the
    # public names'; the reference shows public API only).
    (r"py:.*", r"asyncgraph\._.*"),
    (r"py:.*", r"(F|G|_TF|_G|T|Emit|OnEvent|Progress|Backend|MermaidText|SVG)"),
    # Names typing and collections.abc spell without their module in signatures.
    (r"py:class", r"(NoneType|ellipsis)"),
    # The value class the public Graph subclasses (rewrites and TaskFailures name it).
    (r"py:class", r"BaseGraph"),
    # Named by SQLiteStore.write's docstring; public once issue 12/13's names are merged.
    (r"py:class", r"Batch"),
]


# ==== the generated API reference ========================================================

REFERENCE_MARKER = "<!-- the API reference is generated here by docs/conf.py -->"


def _groups() -> dict[str, list[str]]:
    """``asyncgraph.__all__``, grouped by what each name is, in ``__all__`` order."""
    groups: dict[str, list[str]] = {"Functions": [], "Classes": [], "Errors": [], "Constants": []}
    for name in asyncgraph.__all__:
        obj = getattr(asyncgraph, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            groups["Errors"].append(name)
        elif isinstance(obj, type):
            groups["Classes"].append(name)
        elif callable(obj):
            groups["Functions"].append(name)
        else:
            groups["Constants"].append(name)
    return groups


def _directive(name: str) -> list[str]:
    obj = getattr(asyncgraph, name)
    target = f"asyncgraph.{name}"
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return [f".. autoexception:: {target}", ""]
    if isinstance(obj, type):
        lines = [f".. autoclass:: {target}"]
        if any(c.__name__ == "Enum" for c in obj.__mro__):
            lines.append("   :undoc-members:")  # the enum's values
        elif obj.__mro__[1] is not object and obj.__mro__[1].__module__.startswith("asyncgraph"):
            lines.append("   :inherited-members:")  # e.g. Graph's building and reading
        return [*lines, ""]
    if callable(obj):
        return [f".. autofunction:: {target}", ""]
    doc = inspect.getdoc(type(obj)) or ""
    # under ``currentmodule:: asyncgraph``: the bare name (a constant has no __module__)
    return [f".. py:data:: {name}", "", *("   " + line for line in doc.splitlines()), ""]


def _reference_text() -> str:
    """The reference's body: one eval-rst block of autodoc directives per group."""
    parts = []
    for title, names in _groups().items():
        if not names:
            continue
        rst = [".. currentmodule:: asyncgraph", ""]
        for name in names:
            rst += _directive(name)
        parts.append(f"## {title}\n\n```{{eval-rst}}\n" + "\n".join(rst) + "\n```\n")
    return "\n".join(parts)


def _fill_reference(app: Sphinx, docname: str, source: list[str]) -> None:
    if REFERENCE_MARKER in source[0]:
        source[0] = source[0].replace(REFERENCE_MARKER, _reference_text())


def _check_docstrings(app: Sphinx) -> None:
    """Every public name, and every public method and property of a public class that
    asyncgraph defines, has a docstring of its own."""
    missing = []
    for name in asyncgraph.__all__:
        obj = getattr(asyncgraph, name)
        own = vars(obj).get("__doc__") if isinstance(obj, type) else obj.__doc__
        if (isinstance(obj, type) or inspect.isfunction(obj)) and not own:
            missing.append(f"asyncgraph.{name}")
        if not isinstance(obj, type) or issubclass(obj, BaseException):
            continue
        for klass in obj.__mro__:
            if not klass.__module__.startswith("asyncgraph"):
                continue
            for member, value in vars(klass).items():
                if member.startswith("_") or not (
                    inspect.isfunction(value) or isinstance(value, property)
                ):
                    continue
                # inspect.getdoc, as autodoc: a method's docstring may come from the
                # same method of a base class
                if not inspect.getdoc(getattr(obj, member)):
                    missing.append(f"asyncgraph.{name}.{member}")
    for dotted in sorted(set(missing)):
        logger.warning(
            "%s is public but has no docstring: write one (the API reference shows it)",
            dotted,
            type="asyncgraph",
            subtype="docstring",
        )


# ==== the example pages ==================================================================


class ExampleDirective(SphinxDirective):
    """``asyncgraph-example``: a script of examples/, its code and what it prints.

    The argument is the script's path under ``examples/``. Options: ``args`` (its
    command-line arguments), ``exit`` (the exit status it must end with, 0 by default),
    ``touch`` (files to create before it runs, in its directory). Every script of a page
    runs in one scratch directory of that page, so a page can show two steps of a flow.
    """

    required_arguments = 1
    option_spec: ClassVar[dict[str, Any]] = {
        "args": directives.unchanged,
        "exit": directives.nonnegative_int,
        "touch": directives.unchanged,
        "no-code": directives.flag,
    }

    def run(self) -> list[nodes.Node]:
        script = EXAMPLES / self.arguments[0]
        self.env.note_dependency(str(script))
        if not script.is_file():
            raise self.error(f"no example {script}: the argument is a path under examples/")
        scratch = _scratch(self.env.docname)
        for name in shlex.split(self.options.get("touch", "")):
            (scratch / name).touch()
        args = shlex.split(self.options.get("args", ""))
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        )
        env.pop("PYTEST_CURRENT_TEST", None)
        proc = subprocess.run(
            [sys.executable, str(script), *args],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        want = self.options.get("exit", 0)
        if proc.returncode != want:
            logger.warning(
                "examples/%s exited %d, not %d:\n%s%s",
                self.arguments[0],
                proc.returncode,
                want,
                proc.stdout,
                proc.stderr,
                location=(self.env.docname, self.lineno),
                type="asyncgraph",
                subtype="example",
            )
        shown: list[nodes.Node] = []
        if "no-code" not in self.options:
            code = nodes.literal_block(script.read_text(), script.read_text(), language="python")
            shown.append(_captioned(code, f"examples/{self.arguments[0]}"))
        command = " ".join(["python", f"examples/{self.arguments[0]}", *args])
        output = (proc.stdout + proc.stderr).rstrip() or "(nothing)"
        if want:
            output += f"\n(exit status {proc.returncode})"
        out = nodes.literal_block(output, output, language="text")
        shown.append(_captioned(out, f"$ {command}  (run when this page was built)"))
        return shown


class NotebookDirective(SphinxDirective):
    """``asyncgraph-notebook``: the code cells of a notebook under ``examples/``."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        import json

        path = EXAMPLES / self.arguments[0]
        self.env.note_dependency(str(path))
        cells = json.loads(path.read_text())["cells"]
        shown: list[nodes.Node] = []
        for number, cell in enumerate((c for c in cells if c["cell_type"] == "code"), 1):
            code = "".join(cell["source"])
            block = nodes.literal_block(code, code, language="python")
            shown.append(_captioned(block, f"cell {number}"))
        return shown


def _captioned(block: nodes.literal_block, caption: str) -> nodes.container:
    container = nodes.container("", literal_block=True, classes=["literal-block-wrapper"])
    container += nodes.caption(caption, caption)
    container += block
    return container


_SCRATCH: dict[str, Path] = {}


def _scratch(docname: str) -> Path:
    if docname not in _SCRATCH:
        _SCRATCH[docname] = Path(tempfile.mkdtemp(prefix="asyncgraph-docs-"))
    return _SCRATCH[docname]


def _check_example_pages(app: Sphinx, env: Any) -> None:
    pages = {p.stem for p in (HERE / "examples").glob("*.md")}
    for path in sorted(EXAMPLES.iterdir()):
        if path.name.startswith((".", "_")) or path.suffix not in (".py", ".ipynb", ""):
            continue
        if path.stem not in pages:
            logger.warning(
                "examples/%s has no page: add docs/examples/%s.md (see the others)",
                path.name,
                path.stem,
                type="asyncgraph",
                subtype="example",
            )


# ==== links out of docs/ =================================================================

#: Repository files that a page of the site shows: a link to them goes to that page.
SHOWN_BY = {ROOT / "README.md": "readme", EXAMPLES: "examples/index"}


class LinksOutOfDocs(SphinxTransform):
    """Links to the repository's files outside ``docs/`` (they work on GitHub): to the
    site's page that shows them when there is one, else the path as literal text. A link
    to a path that does not exist is left for MyST, which warns."""

    default_priority = 5

    def apply(self, **kwargs: Any) -> None:
        here = (HERE / self.env.docname).parent
        for node in list(self.document.findall(addnodes.download_reference)) + list(
            self.document.findall(addnodes.pending_xref)
        ):
            if node.get("reftype") != "myst" or node.get("refdomain") not in (None, ""):
                continue
            target = str(node["reftarget"]).split("#", 1)[0]
            if not target:
                continue
            path = (here / target).resolve()
            if HERE in path.parents or path == HERE or not path.exists():
                if path.is_dir() and (path / "index.md").is_file():
                    self._to_doc(node, path.relative_to(HERE).as_posix() + "/index")
                continue
            doc = SHOWN_BY.get(path)
            if doc is None and path.parent == EXAMPLES:
                candidate = f"examples/{path.stem}"
                if (HERE / f"{candidate}.md").is_file():
                    doc = candidate
            if doc is not None:
                self._to_doc(node, doc)
            else:
                text = path.relative_to(ROOT).as_posix() + ("/" if path.is_dir() else "")
                node.replace_self(nodes.literal(text, text))

    def _to_doc(self, node: nodes.Element, doc: str) -> None:
        xref = addnodes.pending_xref(
            "",
            refdomain="std",
            reftype="doc",
            reftarget="/" + doc,
            refdoc=self.env.docname,
            refexplicit=True,
            refwarn=True,
        )
        xref += nodes.inline("", node.astext(), classes=["xref", "std", "std-doc"])
        node.replace_self(xref)


def _links_to_shown_files(app: Sphinx, docname: str, source: list[str]) -> None:
    """``[..](../README.md)`` is a document link MyST cannot follow (README.md is not
    under docs/): point it at the page that shows that file (``readme``)."""
    here = (HERE / docname).parent
    for path, doc in SHOWN_BY.items():
        if path.suffix != ".md":
            continue
        link = os.path.relpath(path, here)
        page = os.path.relpath(HERE / f"{doc}.md", here)
        source[0] = source[0].replace(f"]({link})", f"]({page})")
        source[0] = source[0].replace(f"]({link}#", f"]({page}#")


#: How the library's annotations spell other projects' names (``pd`` is imported for type
#: checkers only, ``Callable`` from collections.abc): the inventories' full names.
SPELLED = {"pd.": "pandas.", "np.": "numpy.", "concurrent.futures._base.": "concurrent.futures."}
SPELLED_BARE = {
    name: f"collections.abc.{name}"
    for name in ("Callable", "Iterable", "Iterator", "Mapping", "Awaitable", "Coroutine")
} | {"AsyncIterator": "collections.abc.AsyncIterator", "PathLike": "os.PathLike"}


def _spelled_in_full(app: Sphinx, env: Any, node: addnodes.pending_xref, contnode: Any) -> Any:
    from sphinx.ext import intersphinx

    target = node.get("reftarget", "")
    full = SPELLED_BARE.get(target)
    for short, long in SPELLED.items():
        if target.startswith(short):
            full = long + target[len(short) :]
    if node.get("refdomain") != "py" or full is None:
        return None
    node["reftarget"] = full
    return intersphinx.missing_reference(app, env, node, contnode)


def _no_factory_defaults(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """A dataclass field with ``default_factory`` shows as ``= <factory>``, which is not
    Python: the signature parser then splits ``dict[int, X]`` at its comma. Show ``...``."""
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), return_annotation
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-signature", _no_factory_defaults)
    app.connect("missing-reference", _spelled_in_full)
    app.connect("source-read", _fill_reference)
    app.connect("source-read", _links_to_shown_files)
    app.connect("builder-inited", _check_docstrings)
    app.connect("env-updated", _check_example_pages)
    app.add_directive("asyncgraph-example", ExampleDirective)
    app.add_directive("asyncgraph-notebook", NotebookDirective)
    app.add_transform(LinksOutOfDocs)
    return {"parallel_read_safe": False}
