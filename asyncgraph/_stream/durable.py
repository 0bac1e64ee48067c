"""A stream's output files and its record: ``out=`` (Parquet) and ``store=`` (resume).

Files. Each sink batch is written to ``out/[task=<sink>/]part-<id>.parquet`` (under a
directory per sink when there are several, dplutils' ``partition_by_task=None`` rule),
first to a hidden temporary name in the same directory, then renamed, so a reader (and
a crash) never sees half a file. Names come from the batch's lineage, not a run
counter, so a rerun that recomputes a batch replaces its file.

Record. With a store, a source batch is committed ``done`` (with its files) once every
output derived from it is in place; a crash leaves at most files no done batch lists.
At the start of the next stream they are deleted (only in a directory that carries the
stream's marker file, ``.asyncgraph-stream``), and so are the files of done batches that
are stale: done by other code (the stream's digest differs) or whose files are gone.
The remaining done batches are skipped without calling any task.

State it keeps
    ``out``, ``partition``, ``part_name``  where files go;
    ``store``  the stream tables (``StreamStore``), open from ``prepare`` to ``close``;
    ``pending``  batches that ended and wait for the next commit (``timer``);
    ``done``   the done batches still valid: sid -> rows the source gave for it;
    ``stale``  how many done batches were found stale at the start;
    ``reset``  what ``reset=`` named (``Reset``), and ``was_reset`` how many done
               batches it sent back (recorded ``reset`` in the store at the start, before
               any is computed again, and their files deleted with the leftovers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._exceptions import StoreError
from .._fingerprint import fingerprints, function_digest
from .._task import Task
from .store import BatchRow, StreamReplayError, StreamStore

__all__ = ["MARKER", "RESET", "Durable", "Reset", "classify", "stream_digest"]

#: The file that marks a directory as a stream's ``out=``: only there are files deleted.
MARKER = ".asyncgraph-stream"

#: A commit gathers the batches that ended within this many seconds (or this many
#: rows, whichever comes first): one transaction for many batches, off the hot path.
COMMIT_EVERY = 0.05
COMMIT_ROWS = 512


#: The status of a done batch that ``reset=`` sent back: sourced again, like a failed one.
RESET = "reset"


class Reset:
    """What ``reset=`` names: every done batch (``every``: a task was named, and the
    recovery unit is the source batch, which goes through every stage) or these source
    batch ids; and the plain tasks to run again (``plain``)."""

    __slots__ = ("every", "ids", "plain")

    def __init__(self, every: bool, ids: frozenset[int], plain: tuple[str, ...]) -> None:
        self.every = every
        self.ids = ids
        self.plain = plain

    def covers(self, sid: int) -> bool:
        return self.every or sid in self.ids


def classify(
    batches: Mapping[int, tuple[str, int, str, list[str]]], digest: str, reset: Reset | None
) -> tuple[set[int], set[int], set[int]]:
    """The done batches of a store split three ways: still valid (skipped), sent back by
    ``reset`` and stale (done by other code, or a file of theirs is gone).

    Batches that a merge tied together share their files, so they go back together: a
    batch is reset (or stale) when any batch it shares a file with is, or else the
    kept file of its partner would hold its rows a second time."""
    done = {sid: row for sid, row in batches.items() if row[0] == "done"}
    by_file: dict[str, list[int]] = {}
    for sid, (_, _, _, files) in done.items():
        for f in files:
            by_file.setdefault(f, []).append(sid)

    def tied(start: set[int]) -> set[int]:
        out, todo = set(start), list(start)
        while todo:
            for f in done[todo.pop()][3]:
                for other in by_file[f]:
                    if other not in out:
                        out.add(other)
                        todo.append(other)
        return out

    reset_ids = tied({sid for sid in done if reset is not None and reset.covers(sid)})
    bad = {
        sid
        for sid, (_, _, fp, files) in done.items()
        if sid not in reset_ids and (fp != digest or not all(os.path.exists(f) for f in files))
    }
    stale = tied(bad) - reset_ids
    return set(done) - reset_ids - stale, reset_ids, stale


def stream_digest(stages: Sequence[Task], plain: Any) -> str:
    """The digest of a stream's code: every stage's function and options, and the
    fingerprints of the plain tasks they use (a graph of them, or None)."""
    h = hashlib.sha256(b"asyncgraph-stream-1\0")
    memo: dict[int, Any] = {}
    plain_fps = fingerprints(plain) if plain is not None and len(plain) else {}
    for t in stages:
        spec = t.stream
        assert spec is not None
        parts = [
            t.name,
            function_digest(t.fn, memo),
            t.kind.value,
            repr(spec.inputs),
            repr(spec.batch_size),
            repr(sorted(t.kwargs)),
            *(plain_fps.get(d, "") for _, d in t.kwargs),
        ]
        h.update("\0".join(parts).encode() + b"\1")
    return h.hexdigest()[:32]


def _name(piece_id: str) -> str:
    if len(piece_id) > 80:  # a long merge: short and still unique
        piece_id = piece_id[:40] + "-" + hashlib.sha256(piece_id.encode()).hexdigest()[:16]
    return f"part-{piece_id}.parquet"


def write_parquet(frame: Any, path: str) -> str:
    """Write ``frame`` to ``path`` through a temporary name in the same directory."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp)
    os.replace(tmp, p)
    return path


class Durable:
    """``out=`` and ``store=`` of one stream (see the module docstring)."""

    def __init__(
        self,
        out: str | os.PathLike[str] | None,
        store: str | os.PathLike[str] | None,
        *,
        partition: bool | None = None,
        part_name: str = "task",
        reset: Reset | None = None,
    ) -> None:
        self.out = None if out is None else Path(out).absolute()
        self.store_path = store
        self.partition = partition
        self.part_name = part_name
        self.store: StreamStore | None = None
        self.done: dict[int, int] = {}
        self.stale = 0
        self.reset = reset  # done batches to compute again (reset=), or None
        self.was_reset = 0
        self.dirs: dict[str, Path] = {}
        self.shared = False
        self.pending: list[BatchRow] = []  # ended, not yet committed
        self.waiting: list[Callable[[], None]] = []  # told once the next commit is made
        self.timer: asyncio.TimerHandle | None = None

    # -- the start ---------------------------------------------------------------

    def prepare(self, sinks: Sequence[str], digest: str) -> None:
        """Open the store, read what is done, make and clean the output directory."""
        keep: set[str] = set()
        if self.store_path is not None:
            self.store = StreamStore(self.store_path)
            self.store.open()
            try:
                batches = self.store.batches()
                valid, reset, stale = classify(batches, digest, self.reset)
                self.stale = len(stale)
                for sid in valid:
                    _, rows, _, files = batches[sid]
                    self.done[sid] = rows
                    keep.update(files)
                undone: list[BatchRow] = [
                    (sid, RESET, batches[sid][1], [], None, None) for sid in sorted(reset)
                ]
                self.store.begin(digest, None if self.out is None else str(self.out))
                if undone:  # durable first: a crash from now on sources them again
                    self.store.commit(undone)
                    self.was_reset = len(undone)
            except BaseException:
                self.store.close()
                self.store = None
                raise
        if self.out is not None:
            self._make_out(sinks, keep)

    def _make_out(self, sinks: Sequence[str], keep: set[str]) -> None:
        out = self.out
        assert out is not None
        if out.exists() and not out.is_dir():
            raise StoreError(f"out={str(out)!r} is a file, not a directory: pass a directory")
        marked = (out / MARKER).exists()
        if self.store is not None and out.is_dir() and not marked and any(out.iterdir()):
            raise StoreError(
                f"out={str(out)!r} holds files this stream did not write (no {MARKER} "
                "marker); a durable stream deletes the files it did not commit there, so "
                "pass a new or empty directory"
            )
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).touch()
        split = self.partition if self.partition is not None else len(sinks) > 1
        self.shared = not split and len(sinks) > 1  # names then say the sink
        for sink in sinks:
            d = out / f"{self.part_name}={sink}" if split else out
            d.mkdir(exist_ok=True)
            self.dirs[sink] = d
        if self.store is not None or marked:
            self._clean(keep)

    def _clean(self, keep: set[str]) -> None:
        """Delete the files of uncommitted attempts and stale batches (only ours)."""
        if self.store is None:
            return  # without a record, nothing is known to be a leftover
        assert self.out is not None
        for path in self.out.rglob("*"):
            name = path.name
            ours = (name.startswith("part-") and name.endswith(".parquet")) or (
                name.startswith(".part-") and name.endswith(".tmp")
            )
            if ours and path.is_file() and str(path) not in keep:
                path.unlink()

    # -- during the stream -------------------------------------------------------------

    def skip(self, sid: int, rows: int) -> bool:
        """Whether source batch ``sid`` is done already; StreamReplayError if the
        source gave it another number of rows than when it was done."""
        was = self.done.get(sid)
        if was is None:
            return False
        if was != rows:
            raise StreamReplayError(
                f"the source does not replay: batch {sid} had {was} rows when the store "
                f"{str(self.store_path)!r} recorded it done, and has {rows} now; a resumed "
                "stream needs a source that gives the same batches in the same order (or "
                "pass a new store and out directory to start afresh)",
                sid,
            )
        return True

    def first_gap(self) -> int:
        """The lowest source batch number not done (where a resumed source may start)."""
        n = 0
        while n in self.done:
            n += 1
        return n

    def path_for(self, sink: str, piece_id: str) -> str:
        return str(self.dirs[sink] / _name(f"{sink}-{piece_id}" if self.shared else piece_id))

    def ended(self, rows: Iterable[BatchRow]) -> None:
        """Record how these batches ended: in the next commit, which gathers the rows
        of a short while (``COMMIT_EVERY`` seconds, or ``COMMIT_ROWS`` rows) in one
        transaction. A batch is durable once committed; one that ended but was not yet
        committed when the process died is sourced again (its files are leftovers)."""
        if self.store is None:
            return
        self.pending.extend(rows)
        if len(self.pending) >= COMMIT_ROWS:
            self.flush()
        elif self.timer is None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(COMMIT_EVERY, self.flush)

    def flush(self) -> None:
        """Commit the rows gathered so far (if any)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        rows, self.pending = self.pending, []
        if rows and self.store is not None:
            self.store.commit(rows)
        told, self.waiting = self.waiting, []
        for tell in told:  # the batches' events, now that they are durable
            tell()

    @staticmethod
    def discard(files: Iterable[str]) -> None:
        """Delete the files of a batch that did not end done."""
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)

    def close(self, result: Any) -> None:
        if self.store is None:
            return
        try:
            self.flush()
        finally:
            store, self.store = self.store, None
        try:
            store.end(result)
        finally:
            store.close()
