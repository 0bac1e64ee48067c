"""The store file as the file system sees it: the run's lock on it, the ``-wal`` and
``-shm`` files beside it, the room on its disk, and the processes that have it open.

No SQL here (that is ``sqlite.py``): this is what keeps two runs off one store file
under every name it has, lets a forked child drop a lock it inherited, and says why a
disk cannot take the store's files.

State it keeps (per process, by nature: POSIX locks are per process)
    open_files   the store files this process has SQLite connections to, and the lock
                 descriptors waiting for the last of them to close (see ``_OpenFiles``)
    _holding     the ``FileLock`` objects that hold a store file in this process
    _fork_guard  held while a lock is taken or let go, and by a thread that forks
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from .._exceptions import StoreError, StoreLockedError

__all__ = [
    "SHM_SIZE",
    "Describe",
    "FileLock",
    "alive",
    "beside",
    "check_directory",
    "full_because",
    "has_wal",
    "identity",
    "legacy_holders",
    "lock_holders",
    "no_room",
    "not_regular",
    "open_files",
    "processes",
    "stat_of",
    "writable",
]

#: Who holds the store file ``key`` (None: not known), and what to do about it: the
#: store's words for a StoreLockedError (``SQLiteStore._holder`` reads its runs table).
Describe = Callable[[tuple[int, int] | None], tuple[str, str]]


class FileLock:
    """A run's hold on one store file: an ``flock`` on the file itself, so any name of it
    (a symlink, a hard link, ``..``, a bind mount) finds the same lock, and an older
    asyncgraph's ``STORE-lock`` too if there is one.

    State it keeps
        path    the store's path, as given
        fd      the descriptor that holds the flock (None: not held)
        key     that file's device and inode (None: not held)
        legacy  the descriptor that holds an older asyncgraph's STORE-lock, or None
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.key: tuple[int, int] | None = None
        self.legacy: int | None = None

    def take(self, describe: Describe) -> None:
        """Hold the file, or raise StoreLockedError worded by ``describe``; see the notes
        on ``_OpenFiles`` for why its descriptor is closed with care."""
        with _fork_guard:
            self._take(describe)

    def let_go(self) -> None:
        """Let go of the file (idempotent): unlocked at once, closed once it is safe."""
        with _fork_guard:
            self._let_go()

    def _take(self, describe: Describe) -> None:
        import fcntl

        if self.fd is not None:
            # This lock holds the store for a run already: one SQLiteStore given to
            # two runs (on one loop, or from two threads).
            holder, advice = describe(self.key)
            raise StoreLockedError(
                f"store {str(self.path)!r} is in use by {holder}; {advice}", holder
            )
        check_directory(self.path)
        stat_of(self.path)  # a directory, a FIFO, a socket: refused before anything is opened
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        existed = os.path.exists(self.path)
        try:
            # Owner-only from the first byte; O_NONBLOCK: a FIFO put here meanwhile
            # must not block us (it is refused just below).
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise self._cannot_open(exc, existed) from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)  # not a store file: SQLite holds no lock on it
            raise not_regular(self.path, st.st_mode)
        key = (st.st_dev, st.st_ino)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            open_files.close_later(key, fd)
            if not isinstance(exc, BlockingIOError):
                raise StoreError(
                    f"store {str(self.path)!r} cannot be locked ({exc.strerror}); is it on "
                    "a network file system? A store must be on a local disk, as SQLite's "
                    "WAL mode needs"
                ) from exc
            holder, advice = describe(key)
            raise StoreLockedError(
                f"store {str(self.path)!r} is in use by {holder}; {advice}", holder
            ) from None
        try:
            self._check_directory()
            legacy = self._legacy_lock(key, describe)
        except BaseException:
            _unlock(fd)
            open_files.close_later(key, fd)
            raise
        self.fd, self.key, self.legacy = fd, key, legacy
        with open_files.mutex:
            _holding.add(self)

    def _cannot_open(self, exc: OSError, existed: bool) -> StoreError:
        path = str(self.path)
        directory = os.path.dirname(os.path.realpath(self.path))
        if exc.errno == errno.EROFS:
            return StoreError(
                f"store {path!r} is read-only: its directory {directory!r} is on a read-only "
                "file system, and a run writes every outcome to its store; run where it is "
                "mounted read-write, or on a copy (reading it works as it is)"
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            if not existed:
                return StoreError(
                    f"store {path!r} cannot be created: the directory {directory!r} is "
                    f"read-only ({exc.strerror}); give a path in a writable directory"
                )
            return StoreError(
                f"store {path!r} is read-only ({exc.strerror}), and a run writes every "
                "outcome to its store; make it writable (chmod u+w, chattr -i) or run on a "
                "copy (reading it works as it is)"
            )
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            full = full_because(directory, size=0) or "its disk (or its quota) is full"
            return StoreError(
                f"store {path!r} cannot be {'opened' if existed else 'created'}: {full} "
                f"({exc.strerror}); free some space there (delete files) and run again, or "
                "give a path on another disk"
            )
        if exc.errno == errno.ENXIO:  # a socket
            return StoreError(
                f"store {path!r} is not a regular file (it is a socket); give the path of a "
                "file, which the first run creates"
            )
        return StoreError(f"store {path!r} cannot be opened ({exc.strerror}); check the path")

    def _check_directory(self) -> None:
        """A run needs to create ``STORE-wal`` and ``STORE-shm`` beside the store: the
        directory must be writable, with room (and inodes) for them, and any there must
        be the store's own (see ``_check_beside``). Checked before SQLite tries, so a
        store refused leaves no -wal or -shm behind."""
        directory = os.path.dirname(os.path.realpath(self.path))
        if not writable(directory):
            raise StoreError(
                f"store {str(self.path)!r} is read-only here: its directory {directory!r} "
                "is read-only, and a run needs to create the store's -wal and -shm files "
                "in it; run where the directory is writable, or on a copy (reading it "
                "works as it is)"
            )
        full = no_room(self.path)
        if full is not None:
            raise StoreError(
                f"store {str(self.path)!r} is full: {full}, and a run needs room there "
                "for the store's -wal and -shm files; free some space there (delete files) "
                "and run again: nothing was written, and what was committed before is kept"
            )
        self._check_beside()

    def _check_beside(self) -> None:
        """Refuse a ``-wal`` or ``-shm`` beside an empty store file that are not its own.

        SQLite finds them by name. A store moved or removed while a run held it (``mv
        s.db old.db``) leaves them under the old name, in use by that run, and after it
        ends still holding its last commits (SQLite does not fold a moved store's -wal
        back). A new store created under that name would take them as its own: read
        that store's commits, or share its -shm with the run. An empty -wal that no
        process has open (what reads leave beside a store, which was then removed) holds
        nothing: SQLite starts afresh over it.
        """
        try:
            if os.stat(self.path).st_size > 0:
                return
        except OSError:
            return
        found: dict[str, os.stat_result] = {}
        for name in beside(self.path):
            with contextlib.suppress(OSError):
                found[name] = os.stat(name)
        if not found:
            return
        users = _opened_by({(st.st_dev, st.st_ino) for st in found.values()})
        wal = found.get(beside(self.path)[0])
        if not users and (wal is None or wal.st_size == 0):
            return
        path = str(self.path)
        files = " and ".join(repr(name) for name in found)
        verb = "belong" if len(found) > 1 else "belongs"
        if not users:
            raise StoreError(
                f"store {path!r} cannot be used: {files} beside it {verb} to another store "
                "file, which was moved or removed without them (after a crash, or while a "
                "run held it): its last commits are in the -wal, and a new store here "
                "would take them as its own; put that store back under this name (or move "
                f"{files} beside it, renamed to match), or remove {files} if that store "
                "is gone for good"
            )
        holder = processes([(pid, cmd) for pid, cmd, _ in users])
        own = os.path.realpath(self.path)  # this process has just locked it
        stores = [name for _, _, names in users for name in names if name != own]
        match = f"move {files} beside it, renamed to match"
        if not stores:
            where, then = "has open (under another name, or removed)", f"put it back, or {match}"
        elif stores[0].endswith(" (deleted)"):
            where, then = f"has open as {stores[0]!r}", f"remove {files}: their store is gone"
        else:
            where = f"has open as {stores[0]!r}"
            then = f"put that store back under this name (mv {stores[0]!r} {path!r}), or {match}"
        raise StoreLockedError(
            f"store {path!r} cannot be used: {files} beside it {verb} to another store "
            f"file, which {holder} {where} (was the store moved or removed while a run "
            "held it?); a run here would take that store's commits as its own. Wait for "
            f"that process to end, then {then}, and try again",
            holder,
        )

    def _legacy_lock(self, key: tuple[int, int], describe: Describe) -> int | None:
        """Also take ``STORE-lock``, the lock file of older asyncgraph versions, if it is
        there: an older version still running on this store keeps this one out, and
        while this one runs, that file (if it exists) keeps an older one out. (Through
        a hard link's name an older run's lock file cannot be found.)"""
        # An older version named the lock after the path it was given: look beside
        # this spelling and beside the file's real path (a symlink's target).
        spellings = dict.fromkeys((f"{self.path}-lock", f"{os.path.realpath(self.path)}-lock"))
        found = [name for name in spellings if os.path.isfile(name)]
        if not found:
            return None  # none (or something else by that name, which no lock uses)
        legacy = found[0]
        if len(found) > 1 and not os.path.samefile(found[0], found[1]):
            # Both: take the second too, for the time this check runs.
            other = self._take_legacy(found[1], key, describe)
            if other is not None:
                os.close(other)
        return self._take_legacy(legacy, key, describe)

    def _take_legacy(self, legacy: str, key: tuple[int, int], describe: Describe) -> int | None:
        import fcntl

        try:
            fd = os.open(legacy, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None  # not ours to read: not an older asyncgraph's run of this user
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # SQLite never opens this file: closing it loses no lock
            holder, advice = describe(key)
            raise StoreLockedError(
                f"store {str(self.path)!r} is in use by {holder}, through {legacy!r}, the "
                f"lock file of an older asyncgraph; {advice}",
                holder,
            ) from None
        return fd

    def _let_go(self) -> None:
        fd, key, legacy = self.fd, self.key, self.legacy
        if fd is None or key is None:
            return
        self.fd = self.key = self.legacy = None
        with open_files.mutex:
            _holding.discard(self)
        if legacy is not None:
            os.close(legacy)
        _unlock(fd)  # the lock goes now, even if closing its descriptor has to wait
        open_files.close_later(key, fd)

    def held_here(self, key: tuple[int, int]) -> bool:
        """Whether this lock, or another of this process, holds the file ``key``."""
        if self.key == key:
            return True
        with open_files.mutex:
            locks = list(_holding)
        return any(lock.key == key for lock in locks)


class _OpenFiles:
    """The store files this process has SQLite connections to, by device and inode.

    Why it exists: SQLite holds POSIX (``fcntl``) locks on a store file (in WAL mode a
    read lock for as long as a connection is open), and POSIX drops *all* of a process's
    locks on a file as soon as the process closes *any* descriptor of that file. The
    run's lock is such a descriptor (an ``flock``, which SQLite's locks do not touch, on
    the store file itself). Closing it while a connection of this process is open would
    silently unlock that connection, and another process could then fold the WAL away
    under it. So a lock descriptor is closed only once no connection of this process
    has the file open (SQLite keeps descriptors open for the same reason); it is
    unlocked (``LOCK_UN``) at once. This state is per process by nature, as POSIX locks
    are: connections opened outside asyncgraph are not counted.
    """

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self._connections: dict[tuple[int, int], int] = {}
        self._unused: dict[tuple[int, int], list[int]] = {}

    def opened(self, key: tuple[int, int]) -> None:
        with self.mutex:
            self._connections[key] = self._connections.get(key, 0) + 1

    def closed(self, key: tuple[int, int]) -> None:
        with self.mutex:
            left = self._connections.get(key, 1) - 1
            if left > 0:
                self._connections[key] = left
                return
            self._connections.pop(key, None)
            unused = self._unused.pop(key, [])
        for fd in unused:
            os.close(fd)

    def close_later(self, key: tuple[int, int], fd: int) -> None:
        """Close ``fd``, a descriptor of the file ``key``, once it cannot unlock SQLite."""
        with self.mutex:
            if self._connections.get(key):
                self._unused.setdefault(key, []).append(fd)
                return
        os.close(fd)

    def after_fork_in_child(self) -> None:
        # The child holds no POSIX locks (they are not inherited): nothing to protect.
        for fds in self._unused.values():
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.mutex = threading.Lock()  # a thread of the parent may have held it
        self._connections = {}
        self._unused = {}


open_files = _OpenFiles()
#: The FileLocks that hold a store file in this process (for a forked child to let go
#: of), changed under ``open_files.mutex``.
_holding: weakref.WeakSet[FileLock] = weakref.WeakSet()


#: Held from opening the store file to recording it in ``_holding`` (and while letting
#: go), and by a thread that forks: a child forked in between would keep a copy of the
#: lock's descriptor that ``_after_fork_in_child`` does not know of, and hold the store
#: after its parent died. Re-entrant: a store dropped meanwhile (``__del__``, run by the
#: garbage collector at any point, in the thread that takes the guard) lets go under it.
_fork_guard = threading.RLock()


def _after_fork_in_child() -> None:
    """A forked child drops the run's lock: a process that a task forks (``os.fork``,
    multiprocessing's fork) would otherwise hold the store after its run ended or died.

    Closing the child's copy of the descriptor leaves the parent's lock in place (an
    ``flock`` belongs to the open file, which the parent still has open). A program
    started with ``subprocess`` never gets it: the descriptor is close-on-exec.
    """
    for lock in list(_holding):
        for fd in (lock.fd, lock.legacy):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        lock.fd = lock.key = lock.legacy = None
    _holding.clear()
    open_files.after_fork_in_child()


def _after_fork_in_child_guarded() -> None:
    global _fork_guard
    _after_fork_in_child()
    _fork_guard = threading.RLock()  # the parent's is held: it is released there


os.register_at_fork(
    before=lambda: _fork_guard.acquire(),
    after_in_parent=lambda: _fork_guard.release(),
    after_in_child=_after_fork_in_child_guarded,
)


def check_directory(path: Path) -> None:
    """Raise StoreError if the directory the store ``path`` would be in does not exist:
    a run cannot create the file there, and a reader would see an empty store."""
    if not path.parent.is_dir():
        raise StoreError(
            f"store {str(path)!r}: the directory {str(path.parent)!r} does not "
            "exist; create it first (a typo in the path?)"
        )


def stat_of(path: Path) -> os.stat_result | None:
    """The store file's status (None: no file yet); StoreError if it cannot be one.

    ``os.stat`` opens nothing, so a FIFO is refused here without blocking (SQLite
    would wait on it, or say "disk I/O error").
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None  # also a dangling symlink: the file it names is created on first write
    except OSError as exc:
        raise StoreError(
            f"store {str(path)!r} cannot be opened ({exc.strerror}); check the path"
        ) from exc
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"store {str(path)!r} is a directory; give a file name")
    if not stat.S_ISREG(st.st_mode):
        raise not_regular(path, st.st_mode)
    return st


def not_regular(path: Path, mode: int) -> StoreError:
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device"}
    kind = kinds.get(stat.S_IFMT(mode), "a device")
    return StoreError(
        f"store {str(path)!r} is not a regular file (it is {kind}); give the path "
        "of a file, which the first run creates"
    )


def _unlock(fd: int) -> None:
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)


def identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def writable(path: str, file: bool = False) -> bool:
    """Whether this process may write the directory (or the file) ``path``: what the
    kernel says for its user, so root may write a 0555 directory but not a read-only
    mount or a ``chattr +i`` file."""
    effective = os.access in os.supports_effective_ids
    mode = os.W_OK if file else os.W_OK | os.X_OK
    return os.access(path, mode, effective_ids=effective)


def beside(path: Path) -> tuple[str, str]:
    """The store's ``-wal`` and ``-shm`` files: SQLite puts them beside the file that
    the path names once symlinks are resolved (a store opened as link.db -> s.db has
    s.db-wal), so they are looked for there."""
    real = os.path.realpath(path)
    return f"{real}-wal", f"{real}-shm"


def has_wal(path: Path) -> bool:
    """Whether the store has a ``-wal`` file with commits in it (or may have)."""
    try:
        return os.stat(beside(path)[0]).st_size > 0
    except FileNotFoundError:
        return False
    except OSError:
        return True


#: What SQLite's -shm takes at first (its first region, for up to 4096 pages of -wal);
#: it writes to each page of it as it creates the file, so a full disk fails it.
SHM_SIZE = 32768


def full_because(directory: str, files: int = 1, size: int = SHM_SIZE) -> str | None:
    """Why the file system of ``directory`` cannot take ``files`` new files and ``size``
    more bytes, or None (it can, or it cannot tell: a file system with no inode count,
    btrfs say, reports 0 inodes of 0)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    if files and st.f_files > 0 and st.f_favail < files:
        return "its file system has no free inodes (no new file can be created on it)"
    # root may use the blocks a file system keeps back for it (ext4's 5 %)
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    if size and st.f_blocks > 0 and blocks * st.f_frsize < size:
        return f"no space is left on its disk ({blocks * st.f_frsize} bytes free)"
    return None


def no_room(path: Path) -> str | None:
    """Why SQLite cannot create (or grow) the ``-wal`` and ``-shm`` it needs beside the
    store ``path`` to read or write it, or None."""
    wal, shm = beside(path)
    files = 0 if os.path.lexists(wal) else 1
    try:
        size = max(0, SHM_SIZE - os.stat(shm).st_size)
    except FileNotFoundError:
        files, size = files + 1, SHM_SIZE
    except OSError:
        return None
    if not files and not size:
        return None
    return full_because(os.path.dirname(os.path.realpath(path)), files, size)


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def lock_holders(key: tuple[int, int]) -> tuple[list[tuple[int, str]], list[str]]:
    """The processes that hold an ``flock`` on the file ``key`` (Linux: /proc), by pid.

    Each open descriptor of the file is looked at, with the ``lock:`` lines of its
    fdinfo, so a child that inherited the lock is found (``/proc/locks`` shows the pid
    that took it, which may be long gone). Processes of other users stay unseen. Also
    returns the names the holders opened the file by.
    """
    found: dict[int, str] = {}
    names: list[str] = []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return [], []
    for pid in sorted(pids):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                if (st.st_dev, st.st_ino) != key:
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    info = f.read()
            except OSError:
                continue
            if any(line.startswith("lock:") and "FLOCK" in line for line in info.splitlines()):
                found[pid] = _command(pid)
                with contextlib.suppress(OSError):
                    names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
                break
    return list(found.items()), names


def legacy_holders(path: Path) -> list[tuple[int, str]]:
    """The processes that hold ``STORE-lock``, an older asyncgraph's lock file."""
    try:
        st = os.stat(f"{path}-lock")
    except OSError:
        return []
    if not stat.S_ISREG(st.st_mode):
        return []
    return lock_holders((st.st_dev, st.st_ino))[0]


def _opened_by(keys: set[tuple[int, int]]) -> list[tuple[int, str, list[str]]]:
    """The processes that have one of the files ``keys`` open (Linux: /proc), each with
    the names of the files it holds an ``flock`` on (a run's store, by its name now)."""
    found: list[tuple[int, str, list[str]]] = []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in sorted(pids):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        stats: dict[str, os.stat_result] = {}
        for fd in fds:
            with contextlib.suppress(OSError):
                stats[fd] = os.stat(f"/proc/{pid}/fd/{fd}")
        if not any((st.st_dev, st.st_ino) in keys for st in stats.values()):
            continue
        locked = []
        for fd, st in stats.items():
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in keys:
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    info = f.read()
                if any(ln.startswith("lock:") and "FLOCK" in ln for ln in info.splitlines()):
                    locked.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
        found.append((pid, _command(pid), locked))
    return found


def _command(pid: int) -> str:
    if pid == os.getpid():
        return "this process"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(" ".join(w.decode(errors="replace").split()) for w in words if w)
    return text if len(text) <= 60 else text[:57] + "..."


def processes(holders: Sequence[tuple[int, str]]) -> str:
    shown = ", ".join(f"process {pid} ({cmd})" for pid, cmd in holders[:3])
    return shown + (f" and {len(holders) - 3} more" if len(holders) > 3 else "")
