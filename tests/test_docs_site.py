"""The documentation site builds without a single warning (the ``docs`` extra).

The build is README's command, in a temporary output directory: Sphinx with ``-W
--keep-going``, so a broken link or reference, a duplicate label, a public name without
a docstring, an example without a page or an example that fails makes this test fail,
listing every warning. Skipped cleanly when Sphinx, MyST-Parser or Furo is missing.
"""

from __future__ import annotations

import html as html_lib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("sphinx", "myst_parser", "furo"):
    pytest.importorskip(_module, reason="the docs extra: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]

import asyncgraph as ag  # noqa: E402


def _text(page: Path) -> str:
    """A page's words, without its HTML tags (highlighting splits code into spans)."""
    return html_lib.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("PYTEST_CURRENT_TEST", None)  # the examples' kernels and pools, as a user's
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"]
    command += ["-d", str(out / "doctrees"), "docs", str(out / "html")]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"the docs build failed:\n{proc.stderr}\n{proc.stdout[-3000:]}"
    return out / "html"


def test_the_site_builds_without_warnings(site):
    assert (site / "index.html").is_file()


def test_every_public_name_is_in_the_reference_under_its_public_path(site):
    html = (site / "reference.html").read_text()
    for name in ag.__all__:
        assert f'id="asyncgraph.{name}"' in html, name
    private = re.findall(r"asyncgraph\._[a-z]\w*", html)
    assert not private, f"the reference names private paths: {sorted(set(private))}"


def test_the_reference_shows_typed_signatures_and_docstrings(site):
    text = _text(site / "reference.html")
    # ag.run's signature with its types, then its docstring's first words
    start = text.index("async asyncgraph.run(graph")
    block = " ".join(text[start : start + 3000].split())
    assert "cpu_workers: int | None = None" in block, block[:500]
    assert "Run every pending task of graph and return a new Graph" in block, block[:1500]


def test_each_example_page_shows_its_code_and_what_it_printed(site):
    page = _text(site / "examples" / "quickstart.html")
    assert '@g.task(kind="cpu")' in page  # the code
    assert "$ python examples/quickstart.py" in page
    assert "published: ada=37.5, grace=12.5" in page  # what it printed


def test_links_to_other_projects_resolve_offline(site):
    html = (site / "reference.html").read_text() + (site / "guide.html").read_text()
    assert "https://docs.python.org/3.11/" in html


def _conf():
    import importlib.util

    spec = importlib.util.spec_from_file_location("asyncgraph_docs_conf", ROOT / "docs" / "conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_public_name_without_a_docstring_is_a_warning(monkeypatch, caplog):
    conf = _conf()

    def undocumented() -> None:
        pass

    class Quiet:
        """Documented itself, but not its method."""

        def speak(self) -> None:
            pass

    Quiet.__module__ = "asyncgraph"
    monkeypatch.setattr(ag, "undocumented", undocumented, raising=False)
    monkeypatch.setattr(ag, "Quiet", Quiet, raising=False)
    monkeypatch.setattr(ag, "__all__", [*ag.__all__, "undocumented", "Quiet"])
    with caplog.at_level("WARNING"):
        conf._check_docstrings(None)
    said = caplog.text
    assert "asyncgraph.undocumented is public but has no docstring" in said
    assert "asyncgraph.Quiet.speak is public but has no docstring" in said
    assert "asyncgraph.Graph" not in said  # the real names all have one


def test_the_reference_groups_every_public_name():
    conf = _conf()
    grouped = [name for names in conf._groups().values() for name in names]
    assert sorted(grouped) == sorted(ag.__all__)
    assert "TaskFailures" in conf._groups()["Errors"]
    assert "run" in conf._groups()["Functions"]
