"""The worker process of the CPU pool. Standard library and cloudpickle only.

Started by :mod:`asyncgraph._executors.process` as ``python -c <boot> THIS_FILE OUT_FD PARENT_PID
WATCH_FD`` in a session (and process group) of its own; it does not import asyncgraph,
so a worker starts fast and never re-runs the user's ``__main__``.

Start-up. A worker imports only what its loop needs (``os``, ``_pickle`` and
``_signal``, the C halves of ``pickle`` and ``signal``, ``struct``, ``sys``, ``time``;
``_ctypes`` for the parent-death signal); the boot loads
this file from its cached bytecode. asyncio (an ``async def`` task), inspect,
traceback (an error) and cloudpickle load when a call needs them: a function sent by
value names cloudpickle's helpers, which :func:`lean_loads` provides itself for the
usual ones (a plain function, a closure, a lambda) and imports cloudpickle for the rest
(a class defined in ``__main__``); a result is pickled with
:mod:`pickle` (protocol 5) and only one that pickle cannot pickle by name (a lambda, a
class of the user's ``__main__``) goes to cloudpickle. asyncio and cloudpickle were
two thirds of a worker's start (100 ms and 70 ms of CPU time on the measuring machine,
under load; the bare interpreter is 17 ms).

Protocol: frames of an 8-byte big-endian length and a pickle, over the worker's stdin
(requests) and the stdout it had at start (replies). The worker then points fd 1 at the
parent's stdout (``OUT_FD``), so ``print`` in a task goes where the user looks.

    request  ("init", sys_path, oob, modules, lean)   once, first: ``oob`` says whether
                 the parent can map a memfd of ours; ``modules`` are imported at once;
                 ``lean``: load by-value functions with :func:`lean_loads` (no
                 cloudpickle import; the parent's cloudpickle is a version it knows)
             ("call", fn_pickle, args_pickle)    then one per task; the parent may send
                 the next call before this one's reply (two calls in flight: the
                 worker's own queue), calls counted 1, 2, ... on this worker
             ("skip", n)      call ``n`` is not wanted (cancelled while queued here):
                 if it has not started when its turn comes, the worker replies
                 ("skipped",) instead of running it; a skip that comes later is ignored
             ("release", fd)  the parent has mapped the memfd of an "oob" reply
    reply    ("started", time)                   when a call's turn comes, before it
             loads the task; then one of:
             ("ok", result_pickle)
             ("oob", head_pickle, fd, sizes)   a result whose out-of-band buffers (pickle
                 protocol 5: numpy's, pandas', Arrow's data) come to 1 MiB or more: they
                 are in a memfd of this worker, at ``fd``, one after another, ``sizes``
                 long; the parent maps ``/proc/<pid>/fd/<fd>`` (no copy) when the reply
                 arrives, then sends ("release", fd), and the worker closes its fd
                 (not at the next call: with two in flight, that is in the pipe already)
             ("bad_result", result_type_name, reason)    the result would not pickle
             ("unloadable", what, type_name, message, traceback_text)
                 the function or the arguments ("function" / "arguments") could not be
                 unpickled here (a module this process cannot import, say)
             ("err", type_name, message, traceback_text, exc_pickle_or_None)

A worker runs one call at a time, in the order they came. Before it starts a call it
reads what else is in its requests pipe without waiting (``select``), so a "skip" sent
while the call ahead ran is seen before the skipped call starts. SIGINT is ignored:
Ctrl-C is the parent's to handle (it kills the workers it no longer needs).
``serve_call`` is the same service for a worker of another executor (``ExecutorBackend``
sends it there by value, with cloudpickle).

A worker never outlives its driver (the parent that started it). Three ways to learn of
its death, any one enough, each ending in ``_die``, which kills the worker's whole process
group (what its task started, too):

* ``PR_SET_PDEATHSIG`` (Linux): the kernel sends ``_PARENT_DIED`` when the parent
  thread that started us exits (the driver starts workers from its event loop's
  thread, which lives as long as the pool). The signal is the process's: the kernel
  may hand it to any of our threads, and a thread other than the main one that takes
  it does not wake the main thread out of its ``time.sleep``, so the Python handler
  (which runs only in the main thread) may wait for an hour. So the signal also
  writes its number to a wakeup pipe (``signal.set_wakeup_fd``, done by the C handler
  in whichever thread took it) that the watchdog thread waits on; either runs
  ``_die``. (A driver killed while its many threads exit one by one reparents us once
  per thread, so two signals come; one thread may take both.)
* the watchdog pipe (everywhere): the same daemon thread waits for ``WATCH_FD``, whose
  write end only the driver holds; end-of-file means the driver is gone (also when a
  task is busy in C code that lets go of the GIL, where a signal handler would wait).
* the requests pipe: end-of-file there, when idle, means the same.

And one race: the driver may have died before we asked for the signal, so we compare
our parent with ``PARENT_PID`` once the signal is set up.
"""

from __future__ import annotations

# Only what a worker needs before its first call, for a fast start (see "Start-up" in
# the module's docstring): asyncio, inspect, traceback and cloudpickle load on demand.
import os
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import pickle
    import signal
    from typing import Any, NoReturn
else:
    # The C modules themselves: ``pickle`` is ``_pickle``'s functions plus imports of
    # re, functools and a failed search of sys.path for Jython's org.python.core, and
    # ``signal`` is ``_signal`` plus enum (10-20 ms of a worker's start in all, under
    # load); the functions and constants are the same objects.
    try:
        import _pickle as pickle
    except ImportError:  # pragma: no cover - an interpreter without the C pickler
        import pickle
    try:
        import _signal as signal
    except ImportError:  # pragma: no cover
        import signal

_HEADER = struct.Struct(">Q")
_SMALL = 1 << 16  # a reply at least this long is written without a copy for its header
#: Out-of-band buffers of at least this many bytes in all go through a memfd.
_SHARE_AT = 1 << 20
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: The parent-death signal: a real-time one, which no task is likely to use for itself
#: (SIGTERM stays the plain "terminate" a task or an operator may send).
_PARENT_DIED = getattr(signal, "SIGRTMIN", 34) + 3


def _die() -> NoReturn:
    """The driver is gone: stop now, with everything this worker's task started."""
    try:
        if os.getpgid(0) == os.getpid():  # we lead our own group: never the driver's
            os.killpg(0, signal.SIGKILL)  # ourselves included
    finally:
        os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")  # pragma: no cover


def _on_parent_died(signum: int, frame: Any) -> None:
    _die()


def _watch_parent(fd: int, wakeup: int) -> None:
    """Wait for end-of-file on ``fd`` (the watchdog pipe) or ``_PARENT_DIED``'s number
    on ``wakeup`` (the signal's wakeup pipe); -1 for either one that is not there."""
    import select  # in this thread, after the worker's start

    fds = [f for f in (fd, wakeup) if f >= 0]
    try:
        while fds:
            for ready in select.select(fds, [], [], None)[0]:
                data = os.read(ready, 64)
                if ready == fd and not data:
                    _die()  # nobody writes the watchdog pipe: this is its end-of-file
                if ready == wakeup and _PARENT_DIED in data:
                    _die()  # (other signals a task handles write here too)
    except OSError:
        return  # the task closed a descriptor: the other ways remain


def _prctl(option: int, arg: int) -> int:
    """``prctl(option, arg, 0, 0, 0)`` of libc, through ``_ctypes`` (2 ms to import,
    where ``ctypes`` builds its classes in 10-20 ms of a worker's start), or ctypes if
    that fails."""
    try:
        import _ctypes

        address = _ctypes.dlsym(_ctypes.dlopen(None, os.RTLD_NOW), "prctl")  # type: ignore[arg-type]
        return int(_ctypes.call_function(address, (option, arg, 0, 0, 0)))
    except (ImportError, AttributeError, OSError, TypeError):
        import ctypes

        return int(ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0))


def _guard(parent: int | None, watch: int) -> int:
    """Arrange to die with the driver (see the module's docstring); the write end of the
    signal's wakeup pipe (-1: none), for :func:`_rearm` after each call."""
    wakeup = write_end = -1
    if sys.platform.startswith("linux"):
        try:
            signal.signal(_PARENT_DIED, _on_parent_died)
            wakeup, write_end = os.pipe()  # not inherited by what a task starts
            os.set_blocking(write_end, False)
            signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            _prctl(_PR_SET_PDEATHSIG, _PARENT_DIED)
        except (OSError, AttributeError, ValueError):
            pass  # no prctl here: the watchdog pipe still tells
    if parent is not None and os.getppid() != parent:
        _die()  # the driver died before the signal was armed: nothing else would tell
    if watch >= 0 or wakeup >= 0:
        # ``_thread``, not ``threading``: the same daemon thread, without the import.
        import _thread

        _thread.start_new_thread(_watch_parent, (watch, wakeup))
    return write_end


def _rearm(write_end: int) -> None:
    """Put back our wakeup pipe and handler after a call: a task may have set its own
    (an asyncio loop with signal handlers sets its wakeup fd, and none when it closes)."""
    if write_end < 0:
        return
    try:
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        if signal.getsignal(_PARENT_DIED) is not _on_parent_died:
            signal.signal(_PARENT_DIED, _on_parent_died)
    except (OSError, ValueError):
        pass  # the task closed our pipe (its reply still goes): the other ways remain


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write(fd: int, payload: bytes) -> None:
    header = _HEADER.pack(len(payload))
    if len(payload) < _SMALL:
        _write_all(fd, memoryview(header + payload))
    else:  # a big reply is not copied to put its header in front
        _write_all(fd, memoryview(header))
        _write_all(fd, memoryview(payload))


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _text(exc: BaseException) -> tuple[str, bool]:
    """``str(exc)``, or a placeholder naming what went wrong (and False) if that
    raises, as ``__str__`` may in an exception class of the user's."""
    try:
        return str(exc), True
    except BaseException as inner:  # noqa: BLE001 - any failure gets the placeholder
        return f"<str() raised {type(inner).__qualname__}>", False


def _traceback(exc: BaseException) -> str:
    try:
        import traceback

        return "".join(traceback.format_exception(exc))
    except BaseException:  # noqa: BLE001 - a traceback must not take the worker down
        return f"{_type_name(exc)}: (the traceback could not be formatted)\n"


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def _cloudpickle() -> Any:
    import cloudpickle

    return cloudpickle


def _dumps(value: Any, buffer_callback: Any = None) -> bytes:
    """``value`` pickled (protocol 5): with :mod:`pickle` when it can (it needs no
    import of cloudpickle, and is the same pickle for every value pickle can reach by
    name), else with cloudpickle (a lambda, a class from the user's ``__main__``)."""
    if buffer_callback is None:
        try:
            return pickle.dumps(value, protocol=5)
        except Exception:  # noqa: BLE001 - cloudpickle decides, and reports
            data: bytes = _cloudpickle().dumps(value, protocol=5)
            return data
    buffers: list[Any] = []
    try:
        head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001 - cloudpickle decides, and reports
        buffers.clear()
        head = _cloudpickle().dumps(value, protocol=5, buffer_callback=buffers.append)
    for b in buffers:
        buffer_callback(b)
    return head


# -- a by-value function, loaded without cloudpickle -------------------------------------
#
# A function of a script or a notebook travels by value: its pickle calls a handful of
# cloudpickle's helpers, and unpickling it the usual way imports cloudpickle (and with it
# dataclasses, inspect, typing, logging: 70 ms of a worker's start on the measuring
# machine, the largest part of its first call). These are those helpers, as cloudpickle
# 3.0 and 3.1 define them (cloudpickle/cloudpickle.py), for the loader below; the parent
# allows them only for those versions ("init"), and tests/test_cpu_lean.py loads the same
# pickles both ways and compares. Any other name of cloudpickle's (a class by value, say)
# is cloudpickle's own: the loader imports it then, as pickle would.


def _lean_builtin_type(name: str) -> Any:
    if name == "ClassType":  # cloudpickle < 1.3's name, which cloudpickle still loads
        return type
    import types

    return getattr(types, name)


def _lean_make_function(
    code: Any, globals: dict[str, Any], name: str, argdefs: Any, closure: Any
) -> Any:
    import builtins
    import types

    globals["__builtins__"] = builtins.__dict__
    return types.FunctionType(code, globals, name, argdefs, closure)


def _lean_function_setstate(obj: Any, state: Any) -> None:
    import builtins

    state, slotstate = state
    obj.__dict__.update(state)
    obj_globals = slotstate.pop("__globals__")
    obj_closure = slotstate.pop("__closure__")
    slotstate.pop("_cloudpickle_submodules")  # imported already, as the pickle loaded
    obj.__globals__.update(obj_globals)
    obj.__globals__["__builtins__"] = builtins.__dict__
    if obj_closure is not None:
        for i, cell in enumerate(obj_closure):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            obj.__closure__[i].cell_contents = value
    for k, v in slotstate.items():
        setattr(obj, k, v)


def _lean_subimport(name: str) -> Any:
    __import__(name)
    return sys.modules[name]


def _lean_make_empty_cell() -> Any:
    import types

    return types.CellType()  # empty (cloudpickle makes one with a lambda's closure)


class _LeanEmpty:
    """cloudpickle's ``_empty_cell_value``: the default of ``_make_cell`` (no contents)."""


def _lean_make_cell(value: Any = _LeanEmpty) -> Any:
    cell = _lean_make_empty_cell()
    if value is not _LeanEmpty:
        cell.cell_contents = value
    return cell


#: cloudpickle's helpers (by their names in ``cloudpickle.cloudpickle``) that the lean
#: loader provides itself; the parent reads the same names (see process._preloads).
LEAN: dict[str, Any] = {
    "_builtin_type": _lean_builtin_type,
    "_make_function": _lean_make_function,
    "_function_setstate": _lean_function_setstate,
    "subimport": _lean_subimport,
    "_make_empty_cell": _lean_make_empty_cell,
    "_make_cell": _lean_make_cell,
    "_empty_cell_value": _LeanEmpty,
}
_CLOUDPICKLE_MODULES = ("cloudpickle", "cloudpickle.cloudpickle")


class _LeanUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _CLOUDPICKLE_MODULES:
            found = LEAN.get(name)
            if found is not None:
                return found
        return super().find_class(module, name)


def lean_loads(data: bytes) -> Any:
    """``pickle.loads(data)``, with cloudpickle's helpers in :data:`LEAN` taken from
    here: a by-value function loads without importing cloudpickle."""
    import io

    return _LeanUnpickler(io.BytesIO(data)).load()


def _error_reply(exc: BaseException) -> tuple[Any, ...]:
    tb = _traceback(exc)
    message, ok = _text(exc)
    exc_bytes: bytes | None = None
    if ok:  # an exception whose str() raises would break whoever shows it: send text
        try:
            exc_bytes = _dumps(exc)
            back = pickle.loads(exc_bytes)  # an exception may pickle yet fail to unpickle
            # ... or unpickle as something else: pickle calls ``cls(*exc.args)``, so a
            # one-argument __init__ that builds its message gets the message back:
            #     class Counted(Exception):
            #         def __init__(self, n): super().__init__(f"{n} rows were bad")
            # Counted(5) would arrive as "5 rows were bad rows were bad". Then the
            # parent gets the text (a RemoteError naming the type), not the copy.
            if type(back) is not type(exc) or str(back) != message:
                exc_bytes = None
        except Exception:  # noqa: BLE001 - any failure means "send the text instead"
            exc_bytes = None
    return ("err", _type_name(exc), message, tb, exc_bytes)


def _call(fn: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    result = fn(*args, **kwargs)
    if hasattr(result, "__await__") or type(result).__name__ == "generator":
        import inspect

        if inspect.isawaitable(result):  # an async function runs under its own loop here
            import asyncio

            async def wait() -> Any:
                return await result

            result = asyncio.run(wait())
    return result


class _Shared:
    """Where a big result's out-of-band buffers go: memfds of this worker's (Linux).

    The parent maps one by ``/proc/<our pid>/fd/<fd>`` as soon as the reply arrives and
    then says so (``("release", fd)``): this worker closes the fd then, so the memory
    belongs to the parent's mapping alone. Nothing is named in ``/dev/shm``: the kernel
    frees the memory when the last fd and mapping go, however the processes end.
    """

    def __init__(self) -> None:
        self.fds: set[int] = set()
        self.ok = False  # until the parent says it can map our memfds ("init")

    def release(self, fd: int) -> None:
        if fd in self.fds:
            self.fds.discard(fd)
            os.close(fd)

    def put(self, views: list[memoryview]) -> int | None:
        """The buffers, written one after another into a new memfd; its fd (or None)."""
        if not self.ok:
            return None
        try:
            fd = os.memfd_create("asyncgraph-result", os.MFD_CLOEXEC)
        except OSError:
            self.ok = False
            return None
        try:
            for view in views:
                while view:
                    view = view[os.write(fd, view) :]
        except OSError:  # out of memory for it, say: the pipe takes it
            os.close(fd)
            return None
        self.fds.add(fd)
        return fd


def _result_reply(result: Any, shared: _Shared | None) -> tuple[Any, ...]:
    """The reply for a result: ``("ok", pickle)``, or ``("oob", head, fd, sizes)``
    when its out-of-band buffers (numpy's, pandas', Arrow's data) are big and went to
    a memfd (``shared``); then the parent loads them from there, with no copy."""
    if shared is None or not shared.ok:
        return ("ok", _dumps(result))
    buffers: list[Any] = []
    head = _dumps(result, buffers.append)
    if not buffers:
        return ("ok", head)
    try:
        views = [b.raw() for b in buffers]
    except BufferError:  # not contiguous: in the pickle, then
        return ("ok", _dumps(result))
    sizes = [v.nbytes for v in views]
    if sum(sizes) < _SHARE_AT:
        return ("ok", _dumps(result))  # small: one pickle, as for any value
    fd = shared.put(views)
    if fd is None:
        return ("ok", _dumps(result))
    return ("oob", head, fd, sizes)


def _serve(
    fn_bytes: bytes,
    args_bytes: bytes,
    functions: dict[bytes, Any],
    shared: _Shared | None = None,
    load: Any = pickle.loads,
) -> tuple[Any, ...]:
    """Run one call; the reply to send (never raises). ``load`` loads the function
    (:func:`lean_loads` when the parent allows it)."""
    what = "function"
    try:
        fn = functions.get(fn_bytes)
        if fn is None:
            if len(functions) > 256:
                functions.clear()
            fn = load(fn_bytes)  # cloudpickle's loads is pickle's
            functions[fn_bytes] = fn
        what = "arguments"
        args, kwargs = pickle.loads(args_bytes)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, never retried
        return ("unloadable", what, _type_name(exc), _text(exc)[0], _traceback(exc))
    try:
        result = _call(fn, args, kwargs)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        return _error_reply(exc)
    try:
        return _result_reply(result, shared)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        return ("bad_result", type(result).__qualname__, f"{type(exc).__name__}: {_text(exc)[0]}")


def serve_call(fn_bytes: bytes, args_bytes: bytes) -> tuple[float, tuple[Any, ...]]:
    """One call in a worker of another executor (``ExecutorBackend``, which sends this
    function by value): when it began, and the reply :func:`_serve` makes."""
    return time.time(), _serve(fn_bytes, args_bytes, {})


def _preload(modules: list[str]) -> None:
    """Import what the run's functions name, while no call waits (errors are left to
    the call that needs the module, which reports them)."""
    for name in modules:
        try:
            __import__(name)
        except BaseException:  # noqa: BLE001 - the call will say what is wrong
            continue  # (not contextlib.suppress: a worker does not import contextlib)


def _batch() -> None:
    """Run as a batch job (Linux ``SCHED_BATCH``; a no-op elsewhere): a worker woken by a
    request then does not preempt the driver on the driver's core in the middle of its
    ``write`` (the driver would wait for the call it is still sending); it runs on a free
    core, or as soon as the driver's loop waits. Same priority and share of CPU."""
    setter = getattr(os, "sched_setscheduler", None)
    if setter is not None and hasattr(os, "SCHED_BATCH"):
        try:  # noqa: SIM105 - a worker does not import contextlib
            setter(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError:
            pass


class _Requests:
    """The requests pipe, read into whole frames. A "skip" or "release" is acted on as
    it is read (see the protocol); calls and "init" wait in ``queue``, in order."""

    def __init__(self, fd: int, shared: _Shared) -> None:
        self.fd = fd
        self.shared = shared
        self.buffer = bytearray()
        self.queue: list[Any] = []
        self.skipped: set[int] = set()
        self.begun = 0  # calls taken from the queue (started or skipped)
        self.eof = False

    def _frames(self) -> None:
        buffer = self.buffer
        while len(buffer) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(buffer)
            end = _HEADER.size + n
            if len(buffer) < end:
                return
            with memoryview(buffer) as view:
                message = pickle.loads(view[_HEADER.size : end])
            del buffer[:end]
            kind = message[0]
            if kind == "skip":
                if message[1] > self.begun:  # not begun yet: skipped when its turn comes
                    self.skipped.add(message[1])
            elif kind == "release":
                self.shared.release(message[1])
            else:
                self.queue.append(message)

    def _read(self, n: int) -> None:
        chunk = os.read(self.fd, n)
        if not chunk:
            self.eof = True
        else:
            self.buffer += chunk
            self._frames()

    def next(self) -> Any:
        """The next call or "init", waiting for it; None once the pipe closed."""
        while not self.queue:
            if self.eof:
                return None
            missing = 1 << 16
            if len(self.buffer) >= _HEADER.size:  # a frame's start: read the rest at once
                missing = max(missing, _HEADER.size + _HEADER.unpack_from(self.buffer)[0])
                missing -= len(self.buffer)
            self._read(min(missing, 1 << 24))
        return self.queue.pop(0)

    def poll(self) -> None:
        """Read what the pipe holds now, without waiting (a skip sent meanwhile)."""
        import select

        while not self.eof and select.select([self.fd], [], [], 0)[0]:
            self._read(1 << 20)

    def wanted(self) -> bool:
        """Take the next call's turn: whether it is to run (False: it was skipped)."""
        self.begun += 1
        if self.begun in self.skipped:
            self.skipped.discard(self.begun)
            return False
        return True


def main() -> None:
    requests = os.dup(0)
    replies = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    out = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    os.dup2(out, 1)
    if out > 2:
        os.close(out)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _batch()
    wakeup_write = _guard(
        int(sys.argv[3]) if len(sys.argv) > 3 else None,
        int(sys.argv[4]) if len(sys.argv) > 4 else -1,
    )
    functions: dict[bytes, Any] = {}
    shared = _Shared()
    inbox = _Requests(requests, shared)
    load: Any = pickle.loads
    while True:
        message = inbox.next()
        if message is None:
            _die()  # the requests pipe closed: the driver is gone (or done with us)
        if message[0] == "init":
            _, sys.path[:], shared.ok, preload, lean = message
            shared.ok = shared.ok and hasattr(os, "memfd_create")
            load = lean_loads if lean else pickle.loads
            _preload(preload)
            continue
        _, fn_bytes, args_bytes = message
        try:
            inbox.poll()  # a skip sent while the call ahead ran is read before this starts
            if not inbox.wanted():
                _write(replies, pickle.dumps(("skipped",)))
                continue
            _write(replies, pickle.dumps(("started", time.time())))
            reply = _serve(fn_bytes, args_bytes, functions, shared, load)
            _rearm(wakeup_write)
            sys.stdout.flush()
            sys.stderr.flush()
            _write(replies, pickle.dumps(reply, protocol=5))
        except BrokenPipeError:
            # The parent is gone (killed, say): nobody wants the reply. Leave quietly
            # instead of printing a traceback into the parent's terminal.
            _die()


if __name__ == "__asyncgraph_worker__":
    main()
