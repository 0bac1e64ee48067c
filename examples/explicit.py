"""Explicit style: ``g.add(name, fn, deps=...)`` with a list and with a dict.

* ``deps=["a", "b"]``: results are passed positionally, in that order;
* ``deps={"param": "task"}``: results are passed by keyword under those parameter names.

Useful when the functions already exist (library functions, lambdas, one function used
for several tasks) and their parameter names are not task names.
"""

import asyncio
import functools
import math
import operator
import statistics

import asyncgraph as ag


async def read_sensor(sensor: str) -> list[float]:
    await asyncio.sleep(0.1)  # stands in for a network read
    data = {"north": [19.5, 20.0, 21.5], "south": [24.0, 25.5, 23.0]}
    return data[sensor]


def spread(values: list[float], *, center: float) -> float:
    return max(abs(v - center) for v in values)


def label(value: float, unit: str = "C") -> str:
    return f"{value:.2f} {unit}"


g = ag.Graph()
# One coroutine function, two tasks. functools.partial keeps it a coroutine function (so
# it runs on the loop) and its bound argument means the partial names no dependency.
g.add("north", functools.partial(read_sensor, "north"))
g.add("south", functools.partial(read_sensor, "south"))
# deps list: statistics.fmean(north) -- positional
g.add("north_mean", statistics.fmean, deps=["north"])
g.add("south_mean", statistics.fmean, deps=["south"])
# deps list, order matters: operator.sub(south_mean, north_mean)
g.add("difference", operator.sub, deps=["south_mean", "north_mean"], kind="cpu")
# deps dict: spread(values=south, center=south_mean) -- keyword
g.add("south_spread", spread, deps={"values": "south", "center": "south_mean"})
# mixed with a default: label(value=difference), unit keeps its default
g.add("report", label, deps={"value": "difference"})


if __name__ == "__main__":
    done = ag.run_sync(g, cpu_workers=1)
    for name in g.topological_order():
        print(f"{name:>12}  {done.status[name]!s:<5}  {done.results.get(name)!r}")

    assert all(s is ag.State.DONE for s in done.status.values()), done.errors
    assert math.isclose(done.results["north_mean"], 61.0 / 3)
    assert math.isclose(done.results["difference"], 72.5 / 3 - 61.0 / 3)  # south - north
    assert math.isclose(done.results["south_spread"], 25.5 - 72.5 / 3)
    assert done.results["report"] == "3.83 C"
    assert done.tasks["north"].is_async  # the partial runs on the loop, not in a thread
    assert g.dependencies("difference") == ("south_mean", "north_mean")
