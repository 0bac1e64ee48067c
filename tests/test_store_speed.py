"""The store's faster paths (issue 15) give what the slower ones gave: the same element
fingerprints (stores written before keep being reused), the same results read back in
chunks, the same rows written many per statement, in order."""

from __future__ import annotations

import pytest

import asyncgraph as ag
from asyncgraph._fingerprint import element_fingerprint, element_fingerprints
from asyncgraph._store.protocol import Batch, TaskRow, new_result_id


def test_a_family_s_fingerprints_in_one_batch_are_each_element_s_own():
    template = ("c0ffee", b"(('users',), (), False)")
    others = ["aa", "bb"]
    rows = [("alice", "d1", 0), ("bob", None, 1), ("0", "d3", 2), ("k", None, 3)]
    batch = element_fingerprints(template, others, "parentfp", rows)
    one_by_one = [
        element_fingerprint(template, others, key, item, "parentfp", position)
        for key, item, position in rows
    ]
    assert batch == one_by_one
    assert len(set(batch)) == len(batch)


def row(name: str, run_id: int, status: str, value: bytes | None) -> TaskRow:
    return TaskRow(name, run_id, status, 1, 1.0, 2.0, None, None, None, "fp", "code",
                   None if value is None else new_result_id(),
                   None if value is None else "pickle", value)


@pytest.mark.parametrize("n", [1, 3, 299, 300, 1000])
def test_rows_are_written_many_per_statement_in_order(tmp_path, n):
    import pickle

    store = ag.SQLiteStore(tmp_path / "s.db")
    store.acquire()
    try:
        run_id = store.begin_run()
        rows = [row(f"t{i % 150}", run_id, "done", pickle.dumps(i)) for i in range(n)]
        rows.append(row("t0", run_id, "failed", None))  # a later row replaces an earlier
        store.write(run_id, Batch(rows, {"done": n}))
        last = {r.name: r for r in rows}
        got = store.tasks()
        assert set(got) == set(last)
        for name, r in last.items():
            assert got[name].status.value == r.status
            assert got[name].result_id == r.result_id
        # Every row reached the history too, in the order written.
        assert [t.name for t in store.run_tasks(run_id)] == [r.name for r in rows]
        done = {n: r.result_id for n, r in last.items() if r.result_id is not None}
        values = store.load_results(done)
        assert values == {n: pickle.loads(last[n].result) for n in done}
    finally:
        store.release()
        store.close()


def test_results_read_in_chunks_are_each_task_s_and_a_replaced_one_is_named(tmp_path):
    store = ag.SQLiteStore(tmp_path / "s.db")
    store.acquire()
    try:
        run_id = store.begin_run()
        rows = [row(f"t{i}", run_id, "done", b"\x80\x05K%c." % (i % 200)) for i in range(1234)]
        store.write(run_id, Batch(rows))
    finally:
        store.release()
    wanted = {r.name: r.result_id for r in rows}
    values = store.load_results(wanted)
    assert values == {f"t{i}": i % 200 for i in range(1234)}
    wanted["t777"] += 1  # a result id no row has: a later run replaced it
    with pytest.raises(ag.StoreError, match="t777.*no longer in store"):
        store.load_results(wanted)
