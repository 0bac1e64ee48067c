"""dplutils' own stream tests against ``asyncgraph.compat.dplutils.StreamExecutor``.

dplutils 0.8.2's ``PipelineExecutorTestSuite`` (its ``tests/pipeline/test_suite.py``,
72 cases) runs unmodified, with the fixtures of its own ``tests/conftest.py`` (loaded
with a stand-in for ``ray``, which only its session fixture uses). dplutils comes from
its sdist: an installed copy, ``$ASYNCGRAPH_DPLUTILS_SDIST`` (a .tar.gz or an unpacked
directory), a cached copy, or ``pip download dplutils==0.8.2 --no-deps --no-binary
:all:``; the module is skipped cleanly when none works (no network, say). networkx and
pyyaml, which dplutils imports, are in asyncgraph's ``test`` extra.

Below the suite: the equivalents of its ``test_stream_executor.py`` cases.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import types
from collections import defaultdict
from pathlib import Path

import pytest

VERSION = "0.8.2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asyncgraph-tests"


def _sdist_dir() -> Path | None:
    """An unpacked dplutils sdist (its package and its tests), or None."""
    given = os.environ.get("ASYNCGRAPH_DPLUTILS_SDIST")
    unpacked = CACHE / f"dplutils-{VERSION}"
    if given and Path(given).is_dir():
        return Path(given)
    archive = Path(given) if given else None
    if not (unpacked / "tests" / "pipeline" / "test_suite.py").exists():
        if archive is None or not archive.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            archive = CACHE / f"dplutils-{VERSION}.tar.gz"
            if not archive.exists():
                try:
                    subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "pip",
                            "download",
                            f"dplutils=={VERSION}",
                            "--no-deps",
                            "--no-binary",
                            ":all:",
                            "-q",
                            "-d",
                            str(CACHE),
                        ],
                        check=True,
                        capture_output=True,
                        timeout=120,
                    )
                except (subprocess.SubprocessError, OSError):
                    return None
            if not archive.exists():
                return None
        with tarfile.open(archive) as tar:
            tar.extractall(CACHE, filter="data")
    return unpacked if unpacked.exists() else None


pytest.importorskip("networkx")
pytest.importorskip("yaml")
SDIST = _sdist_dir()
if SDIST is None:
    pytest.skip(f"dplutils {VERSION}'s sdist cannot be found or fetched", allow_module_level=True)
try:
    import dplutils  # noqa: F401 - an installed copy wins
except ImportError:
    sys.path.insert(0, str(SDIST))

import pandas as pd  # noqa: E402
from dplutils.pipeline import PipelineTask  # noqa: E402

from asyncgraph.compat.dplutils import StreamExecutor  # noqa: E402


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# dplutils' conftest imports ray for its session fixture only: a stand-in lets the rest
# (the graphs the suite runs on) load unchanged.
sys.modules.setdefault("ray", types.ModuleType("ray"))
_conftest = _load("dplutils_conftest", SDIST / "tests" / "conftest.py")
_suite = _load("dplutils_test_suite", SDIST / "tests" / "pipeline" / "test_suite.py")
for _name in (
    "dummy_steps",
    "dummy_pipeline_graph",
    "multi_output_graph",
    "multi_source_graph",
    "blackhole_step",
    "graph_suite",
):
    globals()[_name] = getattr(_conftest, _name)


class TestAsyncgraphStreamExecutor(_suite.PipelineExecutorTestSuite):  # type: ignore[name-defined]
    executor = StreamExecutor


def test_the_suite_is_the_whole_suite(request):
    items = [i for i in request.session.items if "TestAsyncgraphStreamExecutor" in i.nodeid]
    if len(items) < 72:  # run with -k or a node id: nothing to count
        pytest.skip("only part of the module was collected")
    assert len(items) == 72


# -- the equivalents of dplutils' tests/pipeline/test_stream_executor.py ------------------


@pytest.mark.parametrize("max_batches", [1, 10, None])
def test_generator_override(max_batches):
    st = PipelineTask("task_name", lambda x: x)

    def generator():
        for i in range(12):
            yield pd.DataFrame({"customgen": [i]})

    pl = StreamExecutor([st], max_batches=max_batches, generator=generator, queue_size=1)
    res = [b.data for b in pl.run()]
    expected = max_batches if max_batches else 12
    assert len(res) == expected
    # with one call at a time per stage (queue_size=1), the generator's order is kept
    assert sorted(pd.concat(res).customgen.to_list()) == list(range(expected))


@pytest.mark.parametrize("gen_n", [0, 4])
def test_exhausts_input_when_source_batch_size_is_larger_than_the_input(gen_n):
    st = PipelineTask("task_name", lambda x: x, batch_size=10)

    def generator():
        for i in range(gen_n):
            yield pd.DataFrame({"customgen": [i]})

    res = [b.data for b in StreamExecutor([st], generator=generator).run()]
    if gen_n:
        assert len(res) == 1 and len(res[0]) == gen_n
    else:
        assert res == []  # no empty source batch is submitted


def test_input_batch_size_splits(dummy_steps):
    def generator():
        for _ in range(4):
            yield pd.DataFrame({"col": range(2)})

    assert len(list(StreamExecutor(dummy_steps, generator=generator).run())) == 4
    pl = StreamExecutor(dummy_steps, generator=generator).set_config("task1.batch_size", 1)
    assert len(list(pl.run())) == 8


def test_exhaustion_waits_for_a_pending_split():
    # dplutils checks its exhaustion flag counts split pieces; here, a merge waiting
    # downstream of a splitter must not flush early while the split's pieces still run.
    import time

    def slow(x):
        time.sleep(0.01)
        return x

    a = PipelineTask("a", slow, batch_size=1)
    b = PipelineTask("b", lambda x: x, batch_size=6)

    def generator():
        yield pd.DataFrame({"v": range(6)})

    res = [o.data for o in StreamExecutor([a, b], generator=generator).run()]
    assert [len(r) for r in res] == [6]


def test_terminals_first_and_no_upstream_work_beyond_what_is_needed():
    counts: dict[str, int] = defaultdict(int)

    def counted(name):
        def f(x):
            counts[name] += 1
            return x

        return f

    a = PipelineTask("a", counted("a"), batch_size=16)
    b = PipelineTask("b", counted("b"), batch_size=1)
    c, d, e = (b("c", func=counted("c")), b("d", func=counted("d")), b("e", func=counted("e")))
    p = StreamExecutor([(a, b), (b, c), (c, d), (c, e)], max_batches=16, max_io=4, queue_size=1)
    it = p.run()
    snapshots = []
    for _ in range(12):
        next(it)
        snapshots.append(dict(counts))
    it.close()
    for s in snapshots:
        # Terminals keep pace with each other, and the work upstream never runs more
        # than the queues and the four slots allow ahead of them.
        assert abs(s.get("d", 0) - s.get("e", 0)) <= 4
        assert s.get("b", 0) - s.get("d", 0) <= 4 + 3  # slots + the queues on the way
        assert s.get("c", 0) - min(s.get("d", 0), s.get("e", 0)) <= 4 + 2
    # The 16-row source batch is split once; its 16 pieces are not all run at once.
    assert snapshots[0].get("a", 0) == 1 and snapshots[0].get("b", 0) < 16


def test_closing_the_generator_early_stops_the_stream():
    st = PipelineTask("t", lambda x: x)
    it = StreamExecutor([st]).run()  # the default generator is endless
    assert next(it).task == "t"
    it.close()  # returns: the stream was cancelled and cleaned up


def test_a_task_error_is_raised_as_dplutils_does():
    def boom(x):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(StreamExecutor([PipelineTask("t", boom)], max_batches=2).run())
