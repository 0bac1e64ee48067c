"""What a type checker sees through asyncgraph's public API (checked by tests/test_types.py).

This file is never run by pytest (it is not named ``test_*``): ``mypy --strict`` reads
it, and every ``assert_type`` must hold. It is also valid Python, so a typo here fails
``python -m py_compile`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, assert_type

import asyncgraph as ag

g = ag.Graph()


# -- the decorator keeps the function's type ------------------------------------------


@g.task
def users() -> list[str]:
    return ["ada", "grace"]


@g.task(kind="cpu", retries=2)
def scores(users: list[str], scale: float = 1.0) -> dict[str, float]:
    return {u: len(u) * scale for u in users}


@g.task(name="publish", timeout=30)
async def publish_scores(scores: dict[str, float]) -> int:
    return len(scores)


assert_type(users, Callable[[], list[str]])
assert_type(users(), list[str])
assert_type(scores(["x"]), dict[str, float])
assert_type(scores(["x"], scale=2.0), dict[str, float])


class Scaler:
    """A callable object is a task too, and stays itself."""

    def __call__(self, value: int) -> int:
        return value * 2


scaler = g.task(name="scaled")(Scaler())
assert_type(scaler, Scaler)


# -- add returns the definition -------------------------------------------------------

task = g.add("total", lambda scores: sum(scores.values()), deps=["scores"])
assert_type(task, ag.Task)
assert_type(task.name, str)
assert_type(task.deps, tuple[str, ...])


# -- running returns a Graph ----------------------------------------------------------


async def in_async_code() -> None:
    done = await ag.run(g)
    assert_type(done, ag.Graph)
    assert_type(await g.run(max_io=4), ag.Graph)
    assert_type(await publish_scores({}), int)  # an async task stays a coroutine function


done = ag.run_sync(g, cpu_workers=2)
assert_type(done, ag.Graph)
assert_type(g.run_sync(), ag.Graph)


# -- reading a run's outcome ----------------------------------------------------------

assert_type(done.status, dict[str, ag.State])
assert_type(done.status["users"], ag.State)
assert_type(done.results, Mapping[str, Any])
assert_type(done.errors, dict[str, BaseException])
assert_type(done.records["users"], ag.TaskRecord)
assert_type(done.records["users"].status, ag.State)
assert_type(done.records["users"].attempts, int)
assert_type(done.summary(), ag.Summary)
assert_type(done.raise_for_failures(), ag.Graph)
assert_type(done.topological_order(), tuple[str, ...])


# -- rewrites, as functions and as methods, return a Graph ----------------------------

assert_type(ag.reset_failed(done), ag.Graph)
assert_type(ag.reset(done, ["users"]), ag.Graph)
assert_type(ag.mark_done(done, "users", {"users": []}), ag.Graph)
assert_type(ag.mark_done_except(done, "publish"), ag.Graph)
assert_type(ag.subgraph(done, "publish"), ag.Graph)
assert_type(done.reset_failed(), ag.Graph)
assert_type(done.reset("users"), ag.Graph)
assert_type(done.mark_done("users"), ag.Graph)
assert_type(done.mark_done_except(["publish"]), ag.Graph)
assert_type(done.subgraph(["publish"]), ag.Graph)
# A Task stands for its name wherever a rewrite takes names (issue 16).
users_task = done.tasks["users"]
assert_type(ag.reset(done, users_task), ag.Graph)
assert_type(ag.subgraph(done, [users_task, "publish"]), ag.Graph)
assert_type(done.mark_done_except(users_task), ag.Graph)
assert_type(done.descendants(users_task), set[str])


# -- the taskmap-style constructor and the store's readers ----------------------------

assert_type(ag.create_graph(funcs={"a": users}, dependencies={}), ag.Graph)
assert_type(ag.load(g, "nightly.db"), ag.Graph)


# -- fan-out: over= and key= keep the decorated function's type ------------------------


@g.task(over="users", key=lambda user: user)
def greet(users: str) -> str:
    return f"hello {users}"


@g.task(over="greet", kind="cpu", after="users", priority=2)
async def shout(greet: str) -> str:
    return greet.upper()


assert_type(greet("ada"), str)
mapped = g.add("lengths", len, deps=["users"], over="users", key=str)
assert_type(mapped, ag.Task)
assert_type(mapped.over, str | None)
assert_type(mapped.key, Callable[[Any], Any] | None)
assert_type(mapped.family, str | None)
assert_type(g.add("again", len, deps=["users"], over=g.tasks["users"]), ag.Task)


async def fan_out_in_async_code() -> None:
    assert_type(await shout("hi"), str)
