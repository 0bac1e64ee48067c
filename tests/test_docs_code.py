"""The Python code blocks of README.md and docs/*.md run (issue 16).

Each page's ```` ```python ```` blocks run in order, in one namespace, as one session
in a fresh interpreter in a scratch directory, so a block may use what an earlier
block of its page defined; top-level ``await`` works, as in a notebook. A block that
cannot run standalone (it names the reader's own functions, or shows a signature)
starts with a ``# not run: <why>`` comment, and exactly those blocks are skipped. A
block that raises fails the test with the page, the block's line and the traceback.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"#\s*not run:\s*\S")


def blocks(page: Path) -> list[tuple[int, str]]:
    """(line of the block's first code line, code) for each Python block of a page."""
    text = page.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)]


def _skipped(code: str) -> bool:
    first = next((line for line in code.splitlines() if line.strip()), "")
    return bool(NOT_RUN.match(first.strip()))


def run_page(page: str) -> int:
    """Run one page's blocks (in this interpreter); 1 and a report if one raises."""
    path = Path(page)
    namespace: dict[str, object] = {"__name__": "__main__"}
    loop = asyncio.new_event_loop()
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        for line, code in blocks(path):
            if _skipped(code):
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            try:
                compiled = compile("\n" * (line - 1) + code, str(path), "exec", flags=flags)
                result = eval(compiled, namespace)  # the docs' own code
                if inspect.iscoroutine(result):
                    loop.run_until_complete(result)
            except BaseException:  # noqa: BLE001 - reported, with where it was
                print(f"the block at {where} raised:\n{traceback.format_exc()}")
                return 1
    finally:
        loop.close()
    return 0


PAGES_WITH_CODE = [p for p in PAGES if blocks(p)]
#: Pages whose blocks are not run, and why (a page no test may edit the blocks of).
NOT_RUN_PAGES: dict[str, str] = {}


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=[p.name for p in PAGES_WITH_CODE])
def test_the_pages_code_runs(page: Path, tmp_path: Path) -> None:
    if page.name in NOT_RUN_PAGES:
        pytest.skip(NOT_RUN_PAGES[page.name])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")) if p
    )
    env["MPLBACKEND"] = "Agg"
    script = f"import sys, test_docs_code as t; sys.exit(t.run_page({str(page)!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_skipped_block_says_why() -> None:
    for page in PAGES:
        for line, code in blocks(page):
            first = next((s for s in code.splitlines() if s.strip()), "")
            if "not run" in first:
                assert NOT_RUN.match(first.strip()), f"{page.name}:{line}: say why: {first}"
