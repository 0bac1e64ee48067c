"""The synchronous scheduling core, driven by hand: no event loop anywhere."""

from __future__ import annotations

import pytest

import asyncgraph as ag
from asyncgraph._scheduler import Scheduler


def make(spec, *, status=None, **options):
    """spec: name -> (kind, deps, priority?)"""
    g = ag.Graph()
    for name, (kind, deps, *rest) in spec.items():
        resources = rest[1] if len(rest) > 1 else ()
        g.add(name, lambda *a: None, deps=deps, kind=kind,
              priority=rest[0] if rest else 0, resources=resources)
    st = dict.fromkeys(g, ag.State.PENDING)
    st.update(status or {})
    return Scheduler(g.tasks, g.topological_order(), st, **options)


def names(tasks):
    return [t.name for t in tasks]


def drain_one_at_a_time(s):
    """Run a max_io=1 scheduler to the end, each task done at once; the start order."""
    order = []
    while s.is_active():
        (t,) = s.get_ready()
        order.append(t.name)
        s.done(t.name)
    return order


def test_io_first():
    r"""
      io_a   cpu_b
        \     /
         join
    io_a must be handed out before cpu_b although both are ready (and cpu_b was
    defined first, and has the same path length).
    """
    s = make({
        "cpu_b": ("cpu", []),
        "io_a": ("io", []),
        "join": ("io", ["io_a", "cpu_b"]),
    }, cpu_slots=2)
    assert names(s.get_ready()) == ["io_a", "cpu_b"]


def test_longest_remaining_path_first_then_priority():
    r"""
      leaf(prio 5)   head -> mid -> tail      short(prio 1)   short2(prio 9)
    With max_io=1 only one task starts at a time: the higher priorities first, then,
    among equal priorities, head, which has the longest path behind it.
    """
    s = make({
        "leaf": ("io", [], 5),
        "head": ("io", []),
        "mid": ("io", ["head"]),
        "tail": ("io", ["mid"]),
        "short": ("io", [], 1),
        "short2": ("io", [], 9),
    }, max_io=1)
    order = drain_one_at_a_time(s)
    # issue 16: priority outranks the path (Dask's rule): short2 (9), leaf (5), short
    # (1), then among priority 0 the longest path: head (3), mid (2), tail (1)
    assert order == ["short2", "leaf", "short", "head", "mid", "tail"]


def test_critical_path_exact_order():
    r"""
      a -> b -> c        x   y
    max_io=1: a (path 3) first; after a, b (path 2) before x/y (path 1); then ties
    among path-1 tasks (c, x, y) by definition order.
    """
    s = make({
        "x": ("io", []),
        "a": ("io", []),
        "b": ("io", ["a"]),
        "c": ("io", ["b"]),
        "y": ("io", []),
    }, max_io=1)
    order = drain_one_at_a_time(s)
    assert order == ["a", "b", "x", "c", "y"]


def test_priority_breaks_ties():
    s = make({"low": ("io", [], 0), "high": ("io", [], 10), "mid": ("io", [], 5)},
             max_io=1)
    order = drain_one_at_a_time(s)
    assert order == ["high", "mid", "low"]


def test_capacity_per_kind():
    s = make({f"io{i}": ("io", []) for i in range(5)} | {
        f"cpu{i}": ("cpu", []) for i in range(5)}, max_io=2, cpu_slots=3)
    ready = names(s.get_ready())
    assert sum(n.startswith("io") for n in ready) == 2
    assert sum(n.startswith("cpu") for n in ready) == 3
    assert s.get_ready() == []
    s.done("io0")
    assert names(s.get_ready()) == ["io2"]


def test_named_limit_parks_without_blocking_others():
    r"""
    db1 db2 db3 (resources=db, limit 1, long paths so they come first)   free
    Only one db task at a time; free still starts although db tasks are ahead of it.
    """
    spec = {f"db{i}": ("io", [], 10, ("db",)) for i in range(3)}
    spec["free"] = ("io", [])
    s = make(spec, limits={"db": 1})
    first = names(s.get_ready())
    assert sorted(first) == ["db0", "free"]
    s.done("db0")
    assert names(s.get_ready()) == ["db1"]
    s.done("free")
    assert s.get_ready() == []
    s.done("db1")
    assert names(s.get_ready()) == ["db2"]


def test_resource_without_limit_is_an_error():
    with pytest.raises(ag.GraphError, match=r"resource 'db'.*limits=\{'db': N\}"):
        make({"t": ("io", [], 0, ("db",))})


def test_failure_skips_exactly_the_pending_descendants():
    r"""
      a -> b -> c
      a -> d        e (independent)
    """
    s = make({
        "a": ("io", []), "b": ("io", ["a"]), "c": ("io", ["b"]),
        "d": ("io", ["a"]), "e": ("io", []),
    })
    assert sorted(names(s.get_ready())) == ["a", "e"]
    assert sorted(s.failed("a")) == ["b", "c", "d"]
    assert s.is_active()
    s.done("e")
    assert not s.is_active()


def test_initial_states_done_failed_and_running():
    r"""
      done_a -> b         failed_c -> d -> e        running_f -> g
    b runs with done_a's result, d and e are skipped at once, running_f runs again.
    """
    s = make({
        "done_a": ("io", []), "b": ("io", ["done_a"]),
        "failed_c": ("io", []), "d": ("io", ["failed_c"]), "e": ("io", ["d"]),
        "running_f": ("io", []), "g": ("io", ["running_f"]),
    }, status={
        "done_a": ag.State.DONE,
        "failed_c": ag.State.FAILED,
        "running_f": ag.State.RUNNING,
    })
    assert s.initially_skipped == ("d", "e")
    assert sorted(names(s.get_ready())) == ["b", "running_f"]


def test_skip_with_a_second_pending_parent():
    r"""
      ok -> child <- failed_x
    child waits on ok (pending) but failed_x already failed: child is skipped at once and
    ok's completion must not touch it.
    """
    s = make({"ok": ("io", []), "failed_x": ("io", []), "child": ("io", ["ok", "failed_x"])},
             status={"failed_x": ag.State.FAILED})
    assert s.initially_skipped == ("child",)
    assert names(s.get_ready()) == ["ok"]
    s.done("ok")
    assert not s.is_active()


def test_retry_frees_capacity_until_requeued():
    s = make({"a": ("io", []), "b": ("io", [])}, max_io=1)
    (first,) = s.get_ready()
    s.retry(first.name)
    (second,) = s.get_ready()
    assert second.name != first.name
    s.done(second.name)
    assert s.get_ready() == []  # first is waiting out its backoff
    s.requeue(first.name)
    assert names(s.get_ready()) == [first.name]
    s.done(first.name)
    assert not s.is_active()


def test_cancel_reports_running_and_unstarted():
    s = make({"a": ("io", []), "b": ("io", ["a"]), "c": ("io", [])}, max_io=1)
    (t,) = s.get_ready()
    running, rest = s.cancel()
    assert running == [t.name]
    assert sorted(rest) == sorted({"a", "b", "c"} - {t.name})
    assert not s.is_active()
    assert s.get_ready() == []


# -- the protocol is guarded, as graphlib's is -----------------------------------------


def test_get_ready_before_prepare_says_so():
    g = ag.Graph()
    g.add("a", lambda: None)
    s = Scheduler(g.tasks, g.topological_order())
    assert not s.is_active()
    with pytest.raises(ValueError, match=r"prepare\(\) must be called first"):
        s.get_ready()
    s.prepare({"a": ag.State.PENDING})
    assert names(s.get_ready()) == ["a"]


def test_prepare_twice_is_refused():
    s = make({"a": ("io", [])})
    with pytest.raises(ValueError, match=r"prepare\(\) was called already"):
        s.prepare({"a": ag.State.PENDING})


@pytest.mark.parametrize("verb", ["done", "failed", "retry"])
def test_a_report_about_a_task_not_running_is_a_value_error(verb):
    s = make({"a": ("io", []), "b": ("io", ["a"])}, limits={})
    with pytest.raises(ValueError, match=rf"{verb}\('b'\): the task is not running"):
        getattr(s, verb)("b")  # not handed out yet
    (_a,) = s.get_ready()
    s.done("a")
    with pytest.raises(ValueError, match=rf"{verb}\('a'\): the task is not running"):
        getattr(s, verb)("a")  # reported already
    with pytest.raises(ValueError, match=rf"{verb}\('nope'\): the task is not running"):
        getattr(s, verb)("nope")  # no such task


def test_requeue_of_a_task_not_waiting_to_retry_is_a_value_error():
    s = make({"a": ("io", [])})
    s.get_ready()
    with pytest.raises(ValueError, match=r"requeue\('a'\): the task is not waiting to retry"):
        s.requeue("a")
    s.retry("a")
    s.requeue("a")
    assert names(s.get_ready()) == ["a"]


def test_lanes_come_in_order_and_kinds_may_share_one():
    r"""
      cpu_a   io_b   io_c     one lane "all" of capacity 2 for both kinds
    With one shared lane, the best two by path/priority/order start, whatever the kind.
    """
    from asyncgraph._scheduler import Lane

    g = ag.Graph()
    g.add("cpu_a", lambda: None, kind="cpu")
    g.add("io_b", lambda: None)
    g.add("io_c", lambda: None)
    lanes = [Lane("all", 2, (ag.Kind.IO, ag.Kind.CPU))]
    s = Scheduler(g.tasks, g.topological_order(), lanes=lanes)
    s.prepare(dict.fromkeys(g, ag.State.PENDING))
    assert names(s.get_ready()) == ["cpu_a", "io_b"]
    s.done("cpu_a")
    assert names(s.get_ready()) == ["io_c"]
    # CPU first, when the lanes say so.
    s2 = Scheduler(
        g.tasks,
        g.topological_order(),
        lanes=[Lane("cpu", 1, (ag.Kind.CPU,)), Lane("io", 1, (ag.Kind.IO,))],
    )
    s2.prepare(dict.fromkeys(g, ag.State.PENDING))
    assert names(s2.get_ready()) == ["cpu_a", "io_b"]


def test_a_kind_without_a_lane_is_refused():
    from asyncgraph._scheduler import Lane

    g = ag.Graph()
    g.add("c", lambda: None, kind="cpu")
    with pytest.raises(ValueError, match="of kind 'cpu', which no lane takes"):
        Scheduler(g.tasks, g.topological_order(), lanes=[Lane("io", None, (ag.Kind.IO,))])
    with pytest.raises(ValueError, match="kind 'io' is given two lanes"):
        Scheduler(
            g.tasks,
            g.topological_order(),
            lanes=[Lane("a", None, (ag.Kind.IO,)), Lane("b", None, (ag.Kind.IO, ag.Kind.CPU))],
        )
