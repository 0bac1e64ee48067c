"""asyncgraph on a Dask cluster against plain Dask on the same cluster.

    python benchmarks/dask.py [--wide 500] [--chain 100] [--layers 5x100] [--big 20x80]
                              [--pairs 3] [--eager | --no-eager] [--only chain,keep_remote]
                              [--json PATH] [--tiny]

One Dask cluster with its scheduler and two one-thread workers in processes of their
own (``SubprocessCluster``), so the driver's CPU time is the client's and asyncgraph's
only. Each shape runs A/B side by side, alternating, ``--pairs`` times; the table gives
the median per task of each and the median of the per-pair ratios:

- wide N      N independent no-op CPU tasks: plain ``client.map`` + gather, against an
              asyncgraph run of N ``kind="cpu"`` tasks on ``DaskBackend(client)``;
- chain N     a chain of N increments: plain Dask passes futures on and awaits the
              last; asyncgraph runs a chain of CPU tasks (each result goes on to the
              next task as a future, and is also fetched to the driver);
- chain N, plain keeps every future: the same run against a plain chain that keeps
              each link's future and gathers every value at the end, so the scheduler
              reports each link's end to the client, as to a run that records each task;
- layered     L layers of W tasks, each reading two of the layer above;
- big         a chain of K tasks passing an M MB array: plain Dask passes futures on
              (no data through the driver); asyncgraph passes them on too, and also
              fetches every result to the driver (its result graph holds values);
- big, plain gathers all: the same, plain Dask also gathering every result (the
              same data moved as asyncgraph's run moves);
- big, keep_remote: plain Dask fetches the last array; asyncgraph runs on
              ``DaskBackend(client, keep_remote=True)`` (every result left on the
              cluster) and fetches the last handle (``await RemoteResult.fetch()``).

The default (no ``keep_remote``) leaves on the cluster a result that only CPU tasks
take, and fetches every one still there in one gather at the end of the run.

``--eager`` / ``--no-eager`` run asyncgraph with ``DaskBackend(client, eager=True)`` /
``eager=False`` (default: the library's default, True since session 19): a CPU task whose
inputs are CPU tasks goes to the cluster with their futures before they finish.

``driver CPU/task`` is the driver process's CPU time (``time.process_time``) per task.

``--profile`` then runs plain Dask and asyncgraph once more on wide, chain and layered
under cProfile (CPU time) and splits the driver's CPU by where the code is: asyncgraph's
own, Dask's client (dask, distributed, tornado, msgpack, cloudpickle), the event loop
(asyncio), C calls (built-ins, whoever called them), the rest; side by side, with
asyncgraph's top functions by own time. cProfile slows every call, so its figures are
shares, not times; the table's ``driver CPU`` difference is the cost.

Figures on a shared 2-core machine are upper bounds; say "measured under load".

This file is named ``dask.py`` as the issue asks: it takes its own directory off
``sys.path`` after loading ``_common``, or ``import dask`` would find this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, table  # noqa: E402

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import distributed  # noqa: E402
import numpy as np  # noqa: E402
from distributed.deploy.subprocess import SubprocessCluster  # noqa: E402

import asyncgraph as ag  # noqa: E402


def noop(*args: Any) -> None:
    return None


def inc(x: int) -> int:
    return x + 1


def pick(*xs: Any) -> int:
    return len(xs)


def big_first(mb: int) -> Any:
    return np.ones(mb * (1 << 20) // 8)


def big_next(a: Any) -> Any:
    return a + 1


# -- plain Dask --------------------------------------------------------------------------


async def plain_wide(client: Any, n: int) -> None:
    futures = client.map(noop, range(n), pure=False)
    await client.gather(futures)


async def plain_chain(client: Any, n: int) -> None:
    f = client.submit(inc, 0, pure=False)
    for _ in range(n - 1):
        f = client.submit(inc, f, pure=False)
    assert await f == n


async def plain_chain_kept(client: Any, n: int) -> None:
    """A chain whose every link the driver keeps and hears of, as a run records each
    task: the scheduler reports each link's end to the client, then all values come
    back in one gather (the run's values)."""
    futures = [client.submit(inc, 0, pure=False)]
    for _ in range(n - 1):
        futures.append(client.submit(inc, futures[-1], pure=False))
    assert (await client.gather(futures))[-1] == n


async def plain_layered(client: Any, layers: int, width: int) -> None:
    above = [client.submit(noop, pure=False) for _ in range(width)]
    for _ in range(layers - 1):
        above = [
            client.submit(pick, above[i], above[(i + 1) % width], pure=False) for i in range(width)
        ]
    await client.gather(above)


async def plain_big(client: Any, k: int, mb: int) -> None:
    f = client.submit(big_first, mb, pure=False)
    for _ in range(k - 1):
        f = client.submit(big_next, f, pure=False)
    # The last array stays on the cluster: only its length comes back.
    assert await client.submit(len, f, pure=False) == mb * (1 << 20) // 8


async def plain_big_last(client: Any, k: int, mb: int) -> None:
    f = client.submit(big_first, mb, pure=False)
    for _ in range(k - 1):
        f = client.submit(big_next, f, pure=False)
    assert len(await f) == mb * (1 << 20) // 8  # the last array, fetched


async def plain_big_gathered(client: Any, k: int, mb: int) -> None:
    # What an asyncgraph run also does: every result ends up on the driver.
    futures = [client.submit(big_first, mb, pure=False)]
    for _ in range(k - 1):
        futures.append(client.submit(big_next, futures[-1], pure=False))
    values = await client.gather(futures)
    assert len(values[-1]) == mb * (1 << 20) // 8


# -- asyncgraph ----------------------------------------------------------------------------


def graph_wide(n: int) -> ag.Graph:
    g = ag.Graph()
    for i in range(n):
        g.add(f"t{i}", noop, kind="cpu")
    return g


def graph_chain(n: int) -> ag.Graph:
    g = ag.Graph()
    g.add("c0", lambda: 1, kind="cpu")
    for i in range(1, n):
        g.add(f"c{i}", inc, deps=[f"c{i - 1}"], kind="cpu")
    return g


def graph_layered(layers: int, width: int) -> ag.Graph:
    g = ag.Graph()
    for i in range(width):
        g.add(f"l0_{i}", noop, kind="cpu")
    for layer in range(1, layers):
        for i in range(width):
            deps = [f"l{layer - 1}_{i}", f"l{layer - 1}_{(i + 1) % width}"]
            g.add(f"l{layer}_{i}", pick, deps=deps, kind="cpu")
    return g


def graph_big(k: int, mb: int) -> ag.Graph:
    import functools

    g = ag.Graph()
    g.add("b0", functools.partial(big_first, mb), kind="cpu")
    for i in range(1, k):
        g.add(f"b{i}", big_next, deps=[f"b{i - 1}"], kind="cpu")
    return g


async def run_graph(g: ag.Graph, backend: ag.DaskBackend) -> None:
    done = await ag.run(g, backend=backend)
    bad = [n for n, s in done.status.items() if s is not ag.State.DONE]
    assert not bad, {n: done.records[n].error for n in bad[:3]}


async def run_kept(g: ag.Graph, backend: ag.DaskBackend, last: str) -> int:
    """Run with ``keep_remote``, fetch the last result's handle, release them all."""
    done = await ag.run(g, backend=backend)
    handle = done.results[last]
    assert isinstance(handle, ag.RemoteResult), handle
    n = len(await handle.fetch())
    for value in done.results.values():
        if isinstance(value, ag.RemoteResult):
            value.release()
    return n


Step = Callable[[], Awaitable[None]]


async def measure(fn: Step) -> tuple[float, float]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    await fn()
    return time.perf_counter() - t0, time.process_time() - cpu0


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    layers, width = (int(x) for x in args.layers.split("x"))
    big_k, big_mb = (int(x) for x in args.big.split("x"))
    cluster = SubprocessCluster(
        n_workers=2,
        threads_per_worker=1,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
        asynchronous=True,
    )
    client = distributed.Client(cluster, asynchronous=True, set_as_default=False)
    async with cluster, client:
        capacity = None if args.capacity == 0 else args.capacity
        eager = {} if args.eager is None else {"eager": args.eager}
        backend = ag.DaskBackend(client, capacity=capacity, **eager)
        try:
            kept = ag.DaskBackend(client, capacity=capacity, keep_remote=True, **eager)
        except TypeError:  # a tree from before keep_remote: that row is left out
            kept = None

        async def ours_kept() -> None:
            got = await run_kept(graph_big(big_k, big_mb), kept, f"b{big_k - 1}")
            assert got == big_mb * (1 << 20) // 8

        shapes: list[tuple[str, int, Step, Step]] = [
                (f"wide {args.wide}", args.wide,
                 lambda: plain_wide(client, args.wide),
                 lambda: run_graph(graph_wide(args.wide), backend)),
                (f"chain {args.chain}", args.chain,
                 lambda: plain_chain(client, args.chain),
                 lambda: run_graph(graph_chain(args.chain), backend)),
                (f"chain {args.chain}, plain keeps every future", args.chain,
                 lambda: plain_chain_kept(client, args.chain),
                 lambda: run_graph(graph_chain(args.chain), backend)),
                (f"layered {layers}x{width}", layers * width,
                 lambda: plain_layered(client, layers, width),
                 lambda: run_graph(graph_layered(layers, width), backend)),
                (f"big {big_k}x{big_mb}MB", big_k,
                 lambda: plain_big(client, big_k, big_mb),
                 lambda: run_graph(graph_big(big_k, big_mb), backend)),
                (f"big {big_k}x{big_mb}MB, plain gathers all", big_k,
                 lambda: plain_big_gathered(client, big_k, big_mb),
                 lambda: run_graph(graph_big(big_k, big_mb), backend)),
                (f"big {big_k}x{big_mb}MB, keep_remote, both fetch the last", big_k,
                 lambda: plain_big_last(client, big_k, big_mb),
                 ours_kept),
            ]  # fmt: skip
        if kept is None:
            shapes = [shape for shape in shapes if "keep_remote" not in shape[0]]
        if args.only:
            wanted = args.only.split(",")
            shapes = [shape for shape in shapes if any(w in shape[0] for w in wanted)]
        rows = []
        results: dict[str, Any] = {}
        for name, n, plain, ours in shapes:
            await plain()  # warm-up: functions cached on the workers
            await ours()
            pairs = []
            for i in range(args.pairs):
                order = [("plain", plain), ("asyncgraph", ours)]
                if i % 2:
                    order.reverse()
                got = {}
                for label, fn in order:
                    got[label] = await measure(fn)
                pairs.append(got)
            plain_t = statistics.median(p["plain"][0] for p in pairs)
            ours_t = statistics.median(p["asyncgraph"][0] for p in pairs)
            ratio = statistics.median(p["asyncgraph"][0] / p["plain"][0] for p in pairs)
            plain_cpu = statistics.median(p["plain"][1] for p in pairs)
            ours_cpu = statistics.median(p["asyncgraph"][1] for p in pairs)
            unit = "s" if name.startswith("big") else "ms"
            scale = 1.0 if unit == "s" else 1000.0 / n
            rows.append([
                    name,
                    f"{plain_t * scale:.3f} {unit}",
                    f"{ours_t * scale:.3f} {unit}",
                    f"{ratio:.2f}x",
                    f"{plain_cpu / n * 1e6:.0f} us",
                    f"{ours_cpu / n * 1e6:.0f} us",
                ])  # fmt: skip
            results[name] = {
                "tasks": n,
                "plain_s": plain_t,
                "asyncgraph_s": ours_t,
                "ratio_median": ratio,
                "plain_cpu_s": plain_cpu,
                "asyncgraph_cpu_s": ours_cpu,
                "pairs": pairs,
            }
        if args.profile:
            for name, n, plain, ours in [s for s in shapes if not s[0].startswith("big")]:
                results[name]["profile"] = await profile_ours(name, n, plain, ours)
    headers = ["shape", "plain Dask", "asyncgraph", "ratio", "driver CPU/task plain",
               "driver CPU/task asyncgraph"]  # fmt: skip
    mode = f"eager={backend.eager}"
    print(
        f"Dask SubprocessCluster 2x1; asyncgraph {mode}; per task (big: whole run); "
        f"median of {args.pairs} pairs"
    )
    print(table(headers, rows))
    return results


PARTS = {
    "asyncgraph": ("asyncgraph",),
    "Dask client": ("distributed", "dask", "tornado", "msgpack", "cloudpickle", "toolz"),
    "event loop": ("asyncio", "uvloop", "selectors"),
}


C_CALLS = "C calls (pickle, sockets, ...)"


def _part(filename: str) -> str:
    if filename == "~":
        return C_CALLS  # built-ins: no file to tell whose
    parts = Path(filename).parts
    for label, packages in PARTS.items():
        if any(pkg in parts for pkg in packages):
            return label
    return "other"


def _profiled_parts(stats: dict[Any, Any]) -> tuple[dict[str, float], list[Any]]:
    parts: dict[str, float] = dict.fromkeys([*PARTS, C_CALLS, "other"], 0.0)
    ours_by_fn = []
    for (filename, line, fn), (_, calls, own, _, _) in stats.items():
        part = _part(filename)
        parts[part] += own
        if part == "asyncgraph":
            where = filename.split("asyncgraph/", 1)[-1]
            ours_by_fn.append((own, f"{where}:{line} {fn}", calls))
    ours_by_fn.sort(reverse=True)
    return parts, ours_by_fn


def _dask_calls(stats: dict[Any, Any]) -> dict[str, tuple[int, float]]:
    """Dask client functions: (calls, cumulative time) by name."""
    out: dict[str, tuple[int, float]] = {}
    for (filename, line, fn), (_, calls, _, cum, _) in stats.items():
        if _part(filename) == "Dask client":
            where = filename.split("site-packages/", 1)[-1]
            out[f"{where}:{line} {fn}"] = (calls, cum)
    return out


async def _profile(fn: Step) -> dict[Any, Any]:
    import cProfile
    import pstats

    prof = cProfile.Profile(time.process_time)  # CPU, not the loop's idle waits
    prof.enable()
    await fn()
    prof.disable()
    return pstats.Stats(prof).stats  # type: ignore[attr-defined, no-any-return]


async def profile_ours(name: str, n: int, plain: Step, ours: Step) -> dict[str, Any]:
    """Plain Dask and one asyncgraph run under cProfile: the driver's CPU by part, side
    by side, and asyncgraph's top functions."""
    plain_stats, ours_stats = await _profile(plain), await _profile(ours)
    plain_parts, _ = _profiled_parts(plain_stats)
    parts, ours_by_fn = _profiled_parts(ours_stats)
    print(f"\n{name}: driver CPU under cProfile by part, us per task ({n} tasks)")
    rows = [
        [label, f"{plain_parts[label] / n * 1e6:.0f}", f"{own / n * 1e6:.0f}",
         f"{(own - plain_parts[label]) / n * 1e6:+.0f}"]
        for label, own in parts.items()
    ]  # fmt: skip
    total, plain_total = sum(parts.values()), sum(plain_parts.values())
    rows.append(["all", f"{plain_total / n * 1e6:.0f}", f"{total / n * 1e6:.0f}",
                 f"{(total - plain_total) / n * 1e6:+.0f}"])  # fmt: skip
    print(table(["part", "plain Dask", "asyncgraph", "difference"], rows))
    print(table(["asyncgraph function (own time)", "share of ours", "calls/task"], [
        [where, f"{own / parts['asyncgraph']:.0%}", f"{calls / n:.1f}"]
        for own, where, calls in ours_by_fn[:12]
    ]))  # fmt: skip
    plain_calls, ours_calls = _dask_calls(plain_stats), _dask_calls(ours_stats)
    extra = sorted(
        ((calls - plain_calls.get(where, (0, 0.0))[0]) / n, where, calls, cum)
        for where, (calls, cum) in ours_calls.items()
    )[::-1]
    headers = ["Dask client function", "calls/task plain", "calls/task ours", "cum us/task ours"]
    print(table(headers, [
        [where, f"{plain_calls.get(where, (0, 0.0))[0] / n:.1f}", f"{calls / n:.1f}",
         f"{cum / n * 1e6:.0f}"]
        for _, where, calls, cum in extra[:25]
    ]))  # fmt: skip
    return {
        "plain_parts_s": plain_parts,
        "parts_s": parts,
        "asyncgraph_top": [[where, own, calls] for own, where, calls in ours_by_fn[:25]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wide", type=int, default=500)
    p.add_argument("--chain", type=int, default=100)
    p.add_argument("--layers", default="5x100", help="LAYERSxWIDTH")
    p.add_argument("--big", default="20x80", help="TASKSxMB")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument(
        "--capacity",
        type=int,
        default=0,
        help="DaskBackend(capacity=): tasks in flight (0: the backend's default)",
    )
    p.add_argument(
        "--eager", action="store_const", const=True, default=None,
        help="asyncgraph with DaskBackend(eager=True) (the default since session 19)",
    )  # fmt: skip
    p.add_argument(
        "--no-eager", dest="eager", action="store_const", const=False,
        help="asyncgraph with DaskBackend(eager=False): each task sent when the run starts it",
    )  # fmt: skip
    p.add_argument(
        "--only", default="", help="comma-separated parts of shape names: run only those"
    )
    p.add_argument("--tiny", action="store_true", help="a smoke run: tiny shapes, one pair")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile asyncgraph's driver CPU on wide, chain and layered (cProfile)",
    )
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    if args.tiny:
        args.wide, args.chain, args.layers, args.big, args.pairs = 20, 5, "2x5", "3x1", 1
    results = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
