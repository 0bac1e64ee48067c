"""The types a user's checker sees: ``mypy --strict`` on tests/typing/check_types.py, and
snippets that must fail it (a wrong call to a decorated task, a wrong type read back).

``@g.task`` and ``@g.task(...)`` return the function they were given, with its type, so
a call with the wrong arguments is caught where it is written (issue 16).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ROOT / "tests" / "typing" / "check_types.py"

# The project's own config (strict, python 3.11), but only the files named here: one mypy
# run checks them all, with a cache of its own (mypy's cache, shared with other runs,
# can report a cached error under the path another run's snippet had).
ARGS = ["--config-file", str(ROOT / "pyproject.toml")]


HEADER = """
import asyncgraph as ag
g = ag.Graph()

@g.task
def load() -> list[int]:
    return [1, 2]

@g.task(kind="cpu", retries=1)
def total(load: list[int]) -> int:
    return sum(load)

@g.task(name="report")
async def render(total: int) -> str:
    return str(total)
"""

MUST_FAIL = {
    "a plain decorated function called with a wrong argument": (
        'total("not a list")',
        'Argument 1 to "total" has incompatible type "str"',
    ),
    "a decorator with options keeps the parameters": (
        "total([1], [2])",
        'Too many arguments for "total"',
    ),
    "an async task's result is awaited to its own type": (
        "async def use() -> int:\n    return await render(1)",
        'Incompatible return value type (got "str", expected "int")',
    ),
    "a decorated function's return type is kept": (
        "n: str = load()",
        'Incompatible types in assignment (expression has type "list[int]"',
    ),
    "run_sync returns a Graph, not Any": (
        "n: int = ag.run_sync(g)",
        'Incompatible types in assignment (expression has type "Graph"',
    ),
    "status maps to State": (
        'n: int = ag.run_sync(g).status["load"]',
        'Incompatible types in assignment (expression has type "State"',
    ),
    "a rewrite returns a Graph": (
        "n: int = ag.reset_failed(g)",
        'Incompatible types in assignment (expression has type "Graph"',
    ),
}


CASES = list(MUST_FAIL)


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> dict[str, str]:
    """Runs mypy once over check_types.py, the header alone, and one file per case;
    returns each file's lines of output by its stem."""
    where = tmp_path_factory.mktemp("typing")
    files = {"check_types": CHECKS, "header": where / "header.py"}
    files["header"].write_text(textwrap.dedent(HEADER))
    for i, case in enumerate(CASES):
        path = files[f"case_{i}"] = where / f"case_{i}.py"
        path.write_text(textwrap.dedent(HEADER) + "\n" + MUST_FAIL[case][0] + "\n")
    cache = ["--cache-dir", str(where / "cache")]
    out, err, status = mypy_api.run([*ARGS, *cache, *map(str, files.values())])
    assert status in (0, 1), out + err  # 2: mypy itself could not run
    by_file = dict.fromkeys(files, "")
    stems = {path.resolve(): stem for stem, path in files.items()}
    for line in out.splitlines():
        if line.startswith(("Found ", "Success")):
            continue
        stem = stems.get(Path(line.split(":", 1)[0]).resolve())
        assert stem is not None, f"mypy spoke of another file: {line}"
        by_file[stem] += line + "\n"
    return by_file


def test_the_typing_checks_hold(checked):
    assert checked["check_types"] == ""


def test_the_snippets_header_is_clean(checked):
    assert checked["header"] == ""  # so each failure below is its case's own line


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_a_wrong_use_fails_the_check(case, checked):
    out = checked[f"case_{CASES.index(case)}"]
    assert MUST_FAIL[case][1] in out, out
