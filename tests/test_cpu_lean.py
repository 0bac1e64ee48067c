"""CPU tasks, second pass (issue 15): a worker loads a by-value function without
importing cloudpickle, the check pickles each function once, plain arguments are
pickled by the C pickler (that a run loads no anyio it does not use:
``tests/test_anyio_only_when_used.py``).

    parent: cloudpickle.dumps(fn), once per function object   (check)
            args: pickle.dumps if they name no global, else cloudpickle
    worker: _worker.lean_loads(fn_bytes): cloudpickle's helpers from _worker.LEAN,
            anything else of cloudpickle's (a class by value) from cloudpickle itself

No test here measures time.
"""

from __future__ import annotations

import asyncio
import functools
import pickle
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import asyncgraph as ag
from asyncgraph._executors import _worker
from asyncgraph._executors import process as P  # noqa: N812
from asyncgraph._executors.process import ProcessExecutor, ProcessPool, pickled_args

GUARD = 60  # seconds: a guard against a hang, not a bound

# A module no other process can import: cloudpickle sends its functions by value, as it
# does a script's or a notebook's.
_SOURCE = '''
import math
import os.path as osp

LIMIT = 10

def plain(x=1, y=2, *, z=3) -> int:
    """Adds."""
    return x + y + z + LIMIT

def uses_modules(p):
    return osp.basename(p), math.floor(2.5)

def closure(k):
    def inner(v=1):
        return v * k + LIMIT
    return inner

def recursive(n):
    return 0 if n == 0 else 1 + recursive(n - 1)

def gen(n):
    yield from range(n)

async def coro(x):
    return x * 2

lam = lambda a=1: a + LIMIT

class Point:
    def __init__(self, x):
        self.x = x
    def norm(self):
        return abs(self.x)

def make_point(x=-3):
    return Point(x).norm()

def empty_cell():
    def inner():
        return late  # noqa: F821 - a cell that is empty until assigned below
    got = []
    try:
        inner()
    except NameError:
        got.append("empty")
    late = 5
    got.append(inner())
    return got

def loaded(*_):
    import sys
    return sorted(sys.modules)

def where(*_):
    import sys
    return sorted(m for m in ("cloudpickle", "inspect", "dataclasses") if m in sys.modules)
'''


def _by_value_module() -> types.ModuleType:
    module = types.ModuleType("ag_lean_probe_not_importable")
    exec(compile(_SOURCE, "<ag_lean_probe>", "exec"), module.__dict__)
    module.plain.attr = {"tag": 1}  # a function's own __dict__ travels too
    return module


MOD = _by_value_module()


def _helpers(data: bytes) -> set[str]:
    names: set[tuple[str, str]] = set()
    P._modules_named(data, names)
    return {n for m, n in names if m.startswith("cloudpickle")}


def test_the_lean_loader_has_the_cloudpickle_version_it_copies() -> None:
    # The copied helpers are those of cloudpickle 3.0/3.1: another version is loaded by
    # cloudpickle itself (the worker imports it), and this test says which one is here.
    assert P.LEAN is (cloudpickle.__version__.split(".")[:2] in (["3", "0"], ["3", "1"]))
    assert P.LEAN, f"cloudpickle {cloudpickle.__version__}: check _worker.LEAN against it"


@pytest.mark.parametrize(
    "name", ["plain", "uses_modules", "closure", "recursive", "gen", "coro", "lam", "empty_cell"]
)
def test_a_by_value_function_loads_the_same_without_cloudpickle(name: str) -> None:
    fn = getattr(MOD, name)
    if name == "closure":
        fn = fn(7)
    data = cloudpickle.dumps(fn)
    assert _helpers(data), "not sent by value: the test would prove nothing"
    assert _helpers(data) <= set(_worker.LEAN)  # no fallback to cloudpickle needed
    lean, real = _worker.lean_loads(data), cloudpickle.loads(data)
    for attr in (
        "__name__", "__qualname__", "__module__", "__doc__", "__defaults__",
        "__kwdefaults__", "__annotations__", "__dict__",
    ):  # fmt: skip
        assert getattr(lean, attr) == getattr(real, attr), attr
    assert lean.__code__ == real.__code__
    assert lean.__globals__["__builtins__"] is real.__globals__["__builtins__"]
    assert set(lean.__globals__) == set(real.__globals__)
    args: dict[str, tuple[Any, ...]] = {
        "plain": (1,), "uses_modules": ("/a/b.txt",), "closure": (3,), "recursive": (5,),
        "gen": (3,), "coro": (4,), "lam": (1,), "empty_cell": (),
    }  # fmt: skip
    got, want = lean(*args[name]), real(*args[name])
    if name == "gen":
        got, want = list(got), list(want)
    elif name == "coro":
        got, want = asyncio.run(got), asyncio.run(want)
    assert got == want


def test_a_class_by_value_falls_back_to_cloudpickles_own_helpers() -> None:
    data = cloudpickle.dumps(MOD.make_point)
    assert not _helpers(data) <= set(_worker.LEAN)  # _make_skeleton_class, ...
    fn = _worker.lean_loads(data)
    assert fn(-3) == 3
    assert "cloudpickle.cloudpickle" in P._preloads([data], lean=True)  # its workers need it


def test_a_partial_and_a_by_reference_function_load_as_before() -> None:
    partial = _worker.lean_loads(cloudpickle.dumps(functools.partial(MOD.plain, 5)))
    assert partial() == cloudpickle.loads(cloudpickle.dumps(functools.partial(MOD.plain, 5)))()
    for fn in (pickle.dumps, len, P.inband):
        assert _worker.lean_loads(cloudpickle.dumps(fn)) is fn


def test_the_preload_leaves_cloudpickle_out_when_the_lean_loader_suffices() -> None:
    plain = [cloudpickle.dumps(MOD.uses_modules), cloudpickle.dumps(MOD.closure(2))]
    assert "cloudpickle" not in P._preloads(plain, lean=True)
    rest = [m for m in P._preloads(plain, lean=False) if not m.startswith("cloudpickle")]
    assert rest and P._preloads(plain, lean=True) == rest  # the function's own modules
    assert "cloudpickle.cloudpickle" in P._preloads(plain, lean=False)


async def test_a_worker_runs_a_by_value_function_without_importing_cloudpickle() -> None:
    g = ag.Graph()
    g.add("w", MOD.where, kind="cpu")
    g.add("p", MOD.plain, kind="cpu", deps=[])
    done = await asyncio.wait_for(ag.run(g, cpu_workers=1), GUARD)
    assert done.errors == {}
    assert done.results["w"] == []  # neither cloudpickle nor what it imports
    assert done.results["p"] == 1 + 2 + 3 + 10


async def test_a_worker_that_needs_cloudpickle_imports_it() -> None:
    g = ag.Graph()
    g.add("point", MOD.make_point, kind="cpu", deps=[])
    g.add("w", MOD.where, kind="cpu", deps=["point"])
    done = await asyncio.wait_for(ag.run(g, cpu_workers=1), GUARD)
    assert done.errors == {}
    assert "cloudpickle" in done.results["w"]


async def test_a_pool_told_not_to_load_lean_imports_cloudpickle() -> None:
    pool = ProcessPool(1)
    pool.lean = False
    try:
        data = await pool.call("w", cloudpickle.dumps(MOD.where), ((), {}))
        assert isinstance(data, bytes)
        assert "cloudpickle" in pickle.loads(data)
    finally:
        await pool.aclose()


def test_the_check_pickles_a_shared_function_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = cloudpickle.dumps

    def counting(obj: Any, *a: Any, **k: Any) -> bytes:
        calls.append(obj)
        return bytes(real(obj, *a, **k))

    monkeypatch.setattr(P.cloudpickle, "dumps", counting)
    g = ag.Graph()
    for i in range(50):
        g.add(f"t{i}", MOD.plain, kind="cpu", deps=[])
    g.add("other", MOD.lam, kind="cpu", deps=[])
    ex = ProcessExecutor(2)
    ex.check(g._dag.tasks, list(g._dag.tasks))
    assert calls.count(MOD.plain) == 1 and calls.count(MOD.lam) == 1
    assert len(ex.fn_bytes) == 51
    assert ex.fn_bytes["t0"] is ex.fn_bytes["t49"]


def test_the_check_still_names_every_task_whose_function_cannot_travel() -> None:
    import threading

    lock = threading.Lock()

    def holds() -> Any:
        return lock

    g = ag.Graph()
    g.add("a", holds, kind="cpu")
    g.add("b", holds, kind="cpu", deps=[])
    with pytest.raises(ag.PicklingError) as info:
        ProcessExecutor(2).check(g._dag.tasks, list(g._dag.tasks))
    assert set(info.value.problems) == {"a", "b"}


@pytest.mark.parametrize(
    "args",
    [
        ((), {}),
        ((1, 2.5, "s", b"b", None, True, 1 << 80), {"k": [1, {"x": (2,)}]}),
        (("c" * 100, "i"), {}),  # the opcodes' bytes in a string: cloudpickle, same bytes
    ],
)
def test_plain_arguments_are_pickled_as_cloudpickle_would(args: Any) -> None:
    assert pickled_args("t", args) == cloudpickle.dumps(args)


def test_arguments_that_name_code_go_to_cloudpickle() -> None:
    import threading

    data = pickled_args("t", ((MOD.lam,), {}))  # a by-value function as an argument
    assert cloudpickle.loads(data)[0][0](1) == 11
    with pytest.raises(TypeError, match="the arguments of task 't' cannot be pickled"):
        pickled_args("t", ((threading.Lock(),), {}))


def test_a_by_value_argument_of_a_main_class_travels(tmp_path: Path) -> None:
    # pickle.dumps would pickle a __main__ class by name (which a worker cannot load):
    # it names a global, so cloudpickle takes it, by value.
    script = tmp_path / "main_arg.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncgraph as ag

            class Box:
                def __init__(self, v):
                    self.v = v

            def make():
                return Box(4)

            def unbox(b):
                return b.v * 2

            if __name__ == "__main__":
                g = ag.Graph()
                g.add("make", make)
                g.add("unbox", unbox, deps=["make"], kind="cpu")
                done = ag.run_sync(g)
                print(done.results["unbox"], done.errors)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=GUARD
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["8", "{}"]


def _pdeathsig(*_: Any) -> int:
    import ctypes

    value = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    return value.value


async def test_a_worker_starts_on_the_c_halves_of_pickle_signal_and_ctypes() -> None:
    pool = ProcessPool(1)
    try:
        loaded = pickle.loads(await pool.call("t", cloudpickle.dumps(MOD.loaded), ((), {})))  # type: ignore[arg-type]
        assert {"_pickle", "_signal"} <= set(loaded)
        assert not {"pickle", "signal", "enum", "re", "ctypes", "cloudpickle"} & set(loaded)
    finally:
        await pool.aclose()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl")
async def test_a_worker_still_arms_the_parent_death_signal() -> None:
    pool = ProcessPool(1)
    try:
        data = await pool.call("t", cloudpickle.dumps(_pdeathsig), ((), {}))
        assert pickle.loads(data) == _worker._PARENT_DIED  # type: ignore[arg-type]
    finally:
        await pool.aclose()
