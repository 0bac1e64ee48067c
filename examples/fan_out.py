"""Fan-out: map a task over its parent's output, element by element.

``score`` runs once per user the query returned, as real tasks named ``score[ann]``,
``score[bob]``, ...; ``report`` gets the collected list; ``publish`` is element-wise
(``publish[ann]`` waits only for ``score[ann]``). One element fails; after the fix,
only that element and what depends on it run again, on the store, in a new graph
object as a recovery script would have.

Run it: python examples/fan_out.py
"""

from __future__ import annotations

import os
import tempfile

import asyncgraph as ag

HERE = tempfile.mkdtemp(prefix="asyncgraph-fan-out-")
STORE = os.path.join(HERE, "scores.db")
BROKEN = os.path.join(HERE, "broken")  # a side file, not a global: see docs/guide.md
LOG = os.path.join(HERE, "calls.log")


def called(name: str) -> None:
    with open(LOG, "a") as f:
        f.write(name + "\n")


def calls() -> list[str]:
    """What ran since the last call."""
    if not os.path.exists(LOG):
        return []
    with open(LOG) as f:
        names = f.read().split()
    os.remove(LOG)
    return sorted(names)


def build() -> ag.Graph:
    g = ag.Graph()

    @g.task
    async def users() -> list[dict]:
        called("users")
        return [{"id": "ann", "visits": 3}, {"id": "bob", "visits": 5}, {"id": "cy", "visits": 1}]

    @g.task
    def weight() -> int:
        return 10

    @g.task(over="users", key=lambda u: u["id"], retries=1, retry_delay=0)
    def score(users: dict, weight: int) -> int:  # `users` is ONE user here
        called(f"score[{users['id']}]")
        if os.path.exists(BROKEN) and users["id"] == "bob":
            raise ValueError("bob's record is broken")
        return users["visits"] * weight

    @g.task
    def report(score: list[int]) -> str:  # a plain dependent: the collected list
        called("report")
        return f"{len(score)} users, total {sum(score)}"

    @g.task(over="score")  # over a mapped task: element-wise
    async def publish(score: int) -> str:
        called("publish")
        return f"published {score}"

    return g


def main() -> None:
    open(BROKEN, "w").close()
    first = ag.run_sync(build(), store=STORE)
    print(first.to_frame()[["name", "family", "status", "attempts"]].to_string(index=False))
    assert first.status["score[bob]"] is ag.State.FAILED
    assert first.records["score[bob]"].attempts == 2  # its own retries
    assert first.status["score[ann]"] is ag.State.DONE
    assert first.status["publish[ann]"] is ag.State.DONE  # siblings went on
    assert first.status["report"] is ag.State.SKIPPED  # the reducer waits for all
    assert first.status["score"] is ag.State.FAILED  # the family: the aggregate
    print()
    print(first.to_mermaid())
    calls()

    os.remove(BROKEN)  # the fix
    plan = ag.plan(build(), STORE)
    print(plan[["name", "action", "reason"]].to_string(index=False))
    again = ag.run_sync(build(), store=STORE)  # reset_failed(load(...)) on the store
    ran = calls()
    print()
    print("ran after the fix:", ran)
    assert ran == ["publish", "report", "score[bob]"]  # never a sibling
    assert again.results["report"] == "3 users, total 90"
    assert again.results["score"] == [30, 50, 10]
    print(again.results["report"])


if __name__ == "__main__":
    main()
