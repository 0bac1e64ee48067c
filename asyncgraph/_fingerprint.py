"""Task fingerprints: a short digest of everything a task's result depends on.

A store reuses a task's saved result when its fingerprint is unchanged, so a fingerprint
that stays the same across a real change returns a stale result, while one that changes
needlessly only costs a rerun. Hence the rules: cover anything that can change the result,
ignore what cannot (comments, line numbers, file names, docstrings), and never depend on
the process (no ``id()`` or ``hash()`` in the output, no memory addresses, no set
iteration order), because fingerprints are compared across interpreter restarts.

What a task's fingerprint covers (``fingerprints``):

* the digest of its function (``function_digest``, below);
* how its dependencies' results are passed (positional order, parameter names,
  ``skip_none``) and the fingerprints of those dependencies, so an edit reruns the
  edited task and every descendant, and nothing else.

Options that only decide *how* the task runs (``kind``, ``retries``, ``retry_delay``,
``timeout``, ``priority``, ``resources``) are left out: a result computed on a thread or
in a worker, on the first attempt or the third, is the same result. The task's name is
left out too; the store keys records by name.

A function digest is taken from the code object, not the source text, and it covers:

* the bytecode, the exception table, constants (nested code objects, lambdas and
  comprehensions recursively), names, local variable names and the argument layout,
  but not the file name, the line numbers or the function's own name (so a comment, a
  moved function or a renamed task function reuses the result);
* not the docstring: a string that is ``co_consts[0]`` and that no instruction loads is
  the docstring, and editing it is like editing a comment;
* defaults, keyword-only defaults and the contents of closure cells;
* every global the code (or any code nested in it) names: a user function or class by
  its own digest, recursively; a module by the attributes the code names on it (user
  modules) or by name and ``__version__`` (libraries); builtins by name; other values by
  their contents (see ``_Digester._value``), except those that cannot be read: a proxy
  whose lookups raise, an object whose reduction raises, a ``unittest.mock`` object
  (its state is its calls), a random generator (its state moves with every draw, and
  differs in every process when seeded from the OS) count by their type's name, and a
  lazy module whose loading fails by its name (see ``_Digester._reduced``).

"User code" is any file outside the standard library and the site-packages directories
(``sysconfig`` and ``site``), plus ``__main__`` and code without a real file (notebooks,
``exec``). Library code is identified by its qualified name and the ``__version__`` of
its top-level package: editing an installed library is not seen.

Functions that reference each other (mutual recursion, a class whose method calls the
function that uses the class) form cycles. They are digested as strongly connected
components (Tarjan): every member of a cycle gets a digest derived from the whole cycle
and its own position in it, the same whichever member is reached first, so a task's
fingerprint does not depend on which other tasks are in the graph.
"""

from __future__ import annotations

import builtins as _builtins
import dis
import functools
import hashlib
import importlib
import importlib.util
import marshal
import operator
import os
import site
import struct
import sys
import sysconfig
import types
from array import array
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from ._dag import Dag
    from ._exceptions import InvalidTaskError
    from ._graph import BaseGraph

__all__ = [
    "Known",
    "binding_bytes",
    "digests",
    "element_fingerprint",
    "element_fingerprints",
    "elementwise_fingerprint",
    "fingerprints",
    "function_digest",
    "input_digest",
    "input_digests",
    "known_of",
]

#: Bumped whenever the digest of anything changes meaning, so old stores rerun everything.
_TAG = b"asyncgraph-fingerprint-3"
#: Hex characters kept (128 bits): plenty against accidental collisions.
_HEX = 32
#: Nesting depth after which a value is treated as opaque (a guard, not a limit in use).
_MAX_DEPTH = 60

_CONST_OPS = frozenset(dis.hasconst)
_EXTENDED_ARG = dis.opmap["EXTENDED_ARG"]
# Class attributes that carry no behaviour, or that are caches filled at run time.
_CLASS_SKIP = frozenset(
    {
        "__dict__",
        "__doc__",
        "__module__",
        "__qualname__",
        "__weakref__",
        "__firstlineno__",
        "__static_attributes__",
        "_abc_impl",
    }
)
_ATOMS = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
_DESCRIPTORS = (
    types.BuiltinFunctionType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
)

#: ``id(obj) -> (obj, digest)`` of finished user functions and classes; holding ``obj``
#: keeps its id from being reused by another object while the memo lives.
Memo = dict[int, tuple[Any, bytes]]


def fingerprints(graph: BaseGraph) -> dict[str, str]:
    """Each task's fingerprint (hex string), in one pass in topological order.

    Function digests are memoized for the call, so many tasks sharing a function cost one
    digest and a hash of their bindings each.
    """
    return {name: full for name, (_, full) in digests(graph).items()}


def digests(
    graph: BaseGraph, known: Callable[[], Known | None] | None = None
) -> dict[str, tuple[str, str]]:
    """Each task's ``(code, fingerprint)``.

    ``code`` is the digest of the task's function (its code, helpers, constants); the
    fingerprint adds how the task binds its dependencies and their fingerprints. The
    store keeps both, so a plan can tell "code changed" from "upstream changed".

    One hash per task over one joined string: this runs at the start of every run on a
    store, and each Python call here is a share of a no-op task's cost.

    ``known``: what a store kept of the digests of a graph (:class:`Known`, read when
    this process has none of this Dag's): taken instead of hashing every task when its
    graph digest is this graph's (see :func:`known_of`).
    """
    dag = graph._dag
    order = dag.topological_order()  # raises CycleError / MissingDependencyError first
    if dag.fans:  # an element's fingerprint is taken when its family expands
        dag = dag.static()
        order = dag.topological_order()
    tasks = dag.tasks
    before = _LAST.get(dag)
    if before is not None:
        again = before.again(order)
        if again is not None:
            return again
    elif known is not None:
        taken = _from_known(dag, order, known)
        if taken is not None:
            return taken
    digest = _Digester({}).digest
    bindings = binding_bytes(dag)
    sha = hashlib.sha256
    raw: dict[str, bytes] = {}
    hexes: dict[bytes, str] = {}
    out: dict[str, tuple[str, str]] = {}
    # Each function's (function, digest, hex digest, prefix), by id, met once: many
    # tasks share one (holding it keeps its id from being reused meanwhile); kept for
    # _Last too.
    fns: dict[int, tuple[Any, bytes, str, bytes]] = {}
    # A task with no dependencies hashes its code and binding only: tasks of one
    # function bound alike hash the same bytes, so they share one hash (issue 15).
    alone: dict[tuple[bytes, bytes], tuple[bytes, tuple[str, str]]] = {}
    last_fn: Any = _NOTHING  # the previous task's function, and its digests
    code, own, head = b"", "", b""
    for name in order:
        task = tasks[name]
        fn = task.fn
        if fn is not last_fn:  # tasks of one function often come one after another
            hit = fns.get(id(fn))
            if hit is None:
                try:
                    code = digest(fn)
                except Exception as exc:  # named for the user, with its task
                    raise _unfingerprintable(name, exc) from exc
                own_hex = hexes.get(code)
                if own_hex is None:
                    own_hex = hexes[code] = code.hex()[:_HEX]
                hit = fns[id(fn)] = (fn, code, own_hex, _TAG + code)
            _, code, own, head = hit
            last_fn = fn
        # Upstream fingerprints are 32 bytes each, in binding order; the binding fixes
        # how many there are, so the joined string is unambiguous.
        deps = task.deps
        if deps:
            f = sha(head + bindings[name] + b"".join(map(raw.__getitem__, deps))).digest()
            raw[name] = f
            out[name] = (own, f[:_BYTES].hex())
            continue
        key = (code, bindings[name])
        same = alone.get(key)
        if same is None:
            f = sha(head + key[1]).digest()
            same = alone[key] = (f, (own, f[:_BYTES].hex()))
        raw[name] = same[0]
        out[name] = same[1]
    if dag.frozen:
        _LAST[dag] = _Last(tuple((fn, code) for fn, code, _, _ in fns.values()), out)
    return out


_NOTHING = object()  # no function yet (see digests)
_BYTES = _HEX // 2  # a digest's first bytes, whose hex is the fingerprint


class _Last:
    """The last :func:`digests` of one (frozen) Dag, kept to answer the next call for it
    (``load`` then ``run``; a notebook's runs of one graph) without hashing every task
    again, compactly: a function's digest is taken again every time, since its globals
    can change between calls (a constant edited in a notebook), and only if every
    function's digest is what it was is the answer the same. A fingerprint is a pure
    function of the Dag's tasks (frozen: their bindings and dependencies cannot change)
    and of their functions' digests, so this is exact, never a stale fingerprint.

    State it keeps
        ``fns``    each distinct function and its digest then (they are the Dag's own
                   tasks' functions, which it keeps alive anyway);
        ``owns``   each task's code digest (hex, shared between tasks of one function),
                   in topological order;
        ``fps``    each task's fingerprint, 16 bytes a task, in the same order.
    """

    __slots__ = ("fns", "fps", "known", "owns")

    def __init__(self, fns: tuple[tuple[Any, bytes], ...], out: Mapping[str, tuple[str, str]]):
        self.fns = fns
        self.owns = [own for own, _ in out.values()]
        self.fps = bytes.fromhex("".join(fp for _, fp in out.values()))
        self.known: Known | None = None  # what a store keeps of them (known_of), once asked

    def again(self, order: tuple[str, ...]) -> dict[str, tuple[str, str]] | None:
        """The same answer, or None if a function's digest changed (or fails now)."""
        digest = _Digester({}).digest
        try:
            for fn, code in self.fns:
                if digest(fn) != code:
                    return None
        except Exception:  # noqa: BLE001 - the full pass raises it, naming the task
            return None
        # 32 hex digits a task, split in C (an empty graph's hex has nothing to split)
        fps = self.fps.hex(" ", _BYTES).split(" ") if order else []
        return dict(zip(order, zip(self.owns, fps, strict=True), strict=True))


# -- a graph's digests, kept by its store ---------------------------------------------

#: Bumped whenever what the graph digest covers changes (with ``_TAG`` inside it).
_GRAPH_TAG = b"asyncgraph-graph-1"
#: What a task's fingerprint takes from its Task beside its function: its name, its
#: dependencies (the fingerprints it hashes, in order) and its binding (``binding_bytes``).
_SHAPE = operator.attrgetter("name", "deps", "args", "kwargs", "skip_none", "after", "over")
_FN = operator.attrgetter("fn")
#: The Python version and marshal's format version, for ``_graph_digest``.
_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}/{marshal.version}".encode()


class Known(NamedTuple):
    """The digests of one graph, as a store keeps them (plain values only).

    ``graph``  the graph digest (hex): one SHA-256 over everything the fingerprints of
               its tasks are a function of (see :func:`_graph_digest`);
    ``codes``  the code digest (hex) of each distinct function, in order of first use;
    ``uses``   each task's function, as a position in ``codes`` (``array('I')`` bytes),
               in topological order;
    ``fps``    each task's fingerprint, 16 bytes a task, in the same order.
    """

    graph: str
    codes: list[str]
    uses: bytes
    fps: bytes


def _graph_digest(dag: Dag, order: tuple[str, ...], codes: Iterable[bytes], index: bytes) -> str:
    """One digest of what every task's fingerprint in ``dag`` is a function of: the
    fingerprint version, each task's name, dependencies and binding in topological
    order, each distinct function's digest, and which task has which function. Two
    graphs with the same graph digest have the same fingerprints, task by task.

    The tasks' fields are tuples of str, bools and None, written by ``marshal`` at
    version 2 (no references between objects, so the bytes are the values' alone, the
    same whichever objects are shared; three times faster than their repr); marshal's
    format may change with Python's version, which the digest covers too."""
    tasks = dag.tasks
    shape = marshal.dumps(list(map(_SHAPE, map(tasks.__getitem__, order))), 2)
    h = hashlib.sha256(_GRAPH_TAG + _TAG + _PYTHON)
    h.update(_LENGTH.pack(len(shape)))
    h.update(shape)
    for code in codes:  # each a SHA-256: 32 bytes
        h.update(code)
    h.update(b"|")
    h.update(index)
    return h.hexdigest()


def _functions(dag: Dag, order: tuple[str, ...]) -> tuple[dict[int, Any], bytes]:
    """Each distinct function of ``dag``'s tasks by id, in order of first use, and each
    task's function as a position in that order (``array('I')`` bytes), in ``order``."""
    fns = list(map(_FN, map(dag.tasks.__getitem__, order)))
    ids = list(map(id, fns))
    distinct = dict(zip(ids, fns, strict=True))  # first use's place, one object per id
    at = {k: i for i, k in enumerate(distinct)}
    return distinct, array("I", map(at.__getitem__, ids)).tobytes()


def _from_known(
    dag: Dag, order: tuple[str, ...], known: Callable[[], Known | None]
) -> dict[str, tuple[str, str]] | None:
    """``digests`` from what a store kept, if its graph digest is this graph's (each
    function digested again, as always); else None (hash every task)."""
    distinct, index = _functions(dag, order)
    digest = _Digester({}).digest
    try:
        codes = [digest(fn) for fn in distinct.values()]
    except Exception:  # noqa: BLE001 - the full pass raises it, naming the task
        return None
    kept = known()
    if kept is None or kept.uses != index or len(kept.fps) != _BYTES * len(order):
        return None
    if len(kept.codes) != len(codes) or kept.graph != _graph_digest(dag, order, codes, index):
        return None
    # The fingerprints as the hashing pass would give them (the same pure function of
    # the same inputs): 32 hex digits a task, split in C. The code digests are this
    # process's own, not the store's.
    fps = kept.fps.hex(" ", _BYTES).split(" ") if order else []
    hexes = [code.hex()[:_HEX] for code in codes]
    owns = list(map(hexes.__getitem__, array("I", index)))
    out = dict(zip(order, zip(owns, fps, strict=True), strict=True))
    # Kept for this Dag's next call, as the hashing pass keeps its answer (which
    # freezes the Dag through binding_bytes: a frozen Dag's tasks never change).
    last = _LAST[dag.freeze()] = _Last(tuple(zip(distinct.values(), codes, strict=True)), out)
    last.known = kept
    return out


def known_of(graph: BaseGraph) -> Known | None:
    """What a store keeps of ``graph``'s digests (see :class:`Known`), from the last
    :func:`digests` of its Dag in this process; None if there was none."""
    dag = graph._dag.static() if graph._dag.fans else graph._dag
    last = _LAST.get(dag)
    if last is None:
        return None
    if last.known is None:
        order = dag.topological_order()
        distinct, index = _functions(dag, order)
        if len(distinct) != len(last.fns):
            return None  # (the pass was of other functions: cannot be, as a Dag is frozen)
        codes = [code for _, code in last.fns]  # by function, in order of first use
        whole = _graph_digest(dag, order, codes, index)
        last.known = Known(whole, [code.hex()[:_HEX] for code in codes], index, last.fps)
    return last.known


#: The last ``digests`` of each frozen Dag still alive (see :class:`_Last`).
_LAST: WeakKeyDictionary[Dag, _Last] = WeakKeyDictionary()


#: ``binding_bytes`` of each Dag still alive: the same for every graph derived from it.
_BINDINGS: WeakKeyDictionary[Dag, Mapping[str, bytes]] = WeakKeyDictionary()


def binding_bytes(dag: Dag) -> Mapping[str, bytes]:
    """How each task binds its dependencies, as bytes for its fingerprint (cached per Dag).

    The repr of tuples of str and a bool: the same in every process, and it tells every
    binding apart. Freezes the Dag, so the cached bytes can never go stale.
    """
    out = _BINDINGS.get(dag)
    if out is None:
        out = _BINDINGS[dag.freeze()] = {
            # Order-only deps (``after``) only when there are some, and the mapped
            # dependency (``over``) only for a mapped task: every other task's
            # fingerprint stays what it was before they existed.
            n: (
                repr((t.args, t.kwargs, t.skip_none))
                if not t.after and not t.over
                else repr(
                    (
                        t.args,
                        t.kwargs,
                        t.skip_none,
                        *((t.after,) if t.after else ()),
                        *((("over", t.over),) if t.over else ()),
                    )
                )
            ).encode()
            for n, t in dag.tasks.items()
        }
    return out


# -- fan-out ---------------------------------------------------------------------------

_ELEMENT_TAG = b"asyncgraph-element-1"


def input_digest(value: Any) -> str | None:
    """The digest of one element's item, by content (hex), or None when the digest met
    something it can only count by its type's name (a lock, a socket, an open file):
    such an item is not known by its content."""
    return input_digests([value])[0]


def input_digests(values: Iterable[Any]) -> list[str | None]:
    """:func:`input_digest` of each item, sharing one digester (a family's items)."""
    digester = _Digester({})
    out: list[str | None] = []
    append = out.append
    sha = hashlib.sha256
    pack = _LENGTH.pack
    for value in values:
        t = type(value)
        # the common cases, ints and strs: _atom's bytes, written out here (no call)
        if t is int:
            data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
            append(sha(b"topi" + pack(len(data)) + data).hexdigest()[:_HEX])
            continue
        if t is str:
            data = value.encode("utf-8", "surrogatepass")
            append(sha(b"tops" + pack(len(data)) + data).hexdigest()[:_HEX])
            continue
        if t in _ATOMS:  # the other atoms: names, numbers
            append(sha(b"top" + _atom(value)).hexdigest()[:_HEX])
            continue
        digester.opaque = False
        try:
            d = digester.digest(value)
        except Exception:  # noqa: BLE001 - not digestible: the fallback (position) applies
            out.append(None)
            continue
        out.append(None if digester.opaque else d.hex()[:_HEX])
    return out


def element_fingerprint(
    template: tuple[str, bytes],
    others: Iterable[str],
    key: str,
    item: str | None,
    parent: str,
    position: int,
) -> str:
    """An element's fingerprint: its template's code and binding (``template``: its own
    digest and binding bytes), the fingerprints of its other dependencies, its key and
    its item's digest. The parent's fingerprint is left out on purpose (the item is
    hashed by value), except for an item that cannot be digested (``item`` None): then
    its position and the parent's fingerprint stand for it."""
    own, binding = template
    parts = [_ELEMENT_TAG, own.encode(), binding, *(o.encode() for o in others), _str(key)]
    if item is None:
        parts += [b"?position", _int(position), parent.encode()]
    else:
        parts += [b"=", item.encode()]
    return hashlib.sha256(b"".join(parts)).hexdigest()[:_HEX]


def element_fingerprints(
    template: tuple[str, bytes],
    others: Iterable[str],
    parent: str,
    elements: Iterable[tuple[str, str | None, int]],
) -> list[str]:
    """:func:`element_fingerprint` of each ``(key, item, position)`` of one family, the
    same bytes hashed: the part every element shares (template, binding, other
    dependencies) is hashed once and copied, so an element costs one short update."""
    own, binding = template
    base = hashlib.sha256(
        b"".join([_ELEMENT_TAG, own.encode(), binding, *(o.encode() for o in others)])
    )
    tail = parent.encode()
    out: list[str] = []
    append = out.append
    pack = _LENGTH.pack
    for key, item, position in elements:
        h = base.copy()
        k = key.encode("utf-8", "surrogatepass")  # _str(key), written out here
        if item is None:
            h.update(b"".join([b"s", pack(len(k)), k, b"?position", _int(position), tail]))
        else:
            h.update(b"".join([b"s", pack(len(k)), k, b"=", item.encode()]))
        append(h.hexdigest()[:_HEX])
    return out


def elementwise_fingerprint(template: tuple[str, bytes], deps: Iterable[str]) -> str:
    """An element-wise element's fingerprint: its template's code and binding and the
    fingerprints of its dependencies (its counterpart element's among them)."""
    own, binding = template
    parts = [_ELEMENT_TAG, b"w", own.encode(), binding, *(d.encode() for d in deps)]
    return hashlib.sha256(b"".join(parts)).hexdigest()[:_HEX]


def _unfingerprintable(task: str, exc: Exception) -> InvalidTaskError:
    from ._exceptions import InvalidTaskError

    if isinstance(exc, _Unreadable):
        what = f"reading the global {exc.name!r} of {exc.where} raised {_error_text(exc.error)}"
    else:
        what = _error_text(exc)
    return InvalidTaskError(
        task,
        f"its fingerprint (for the store) cannot be taken: {what}. asyncgraph reads an "
        "object it cannot inspect by its type only, so this is a bug: please report it. "
        "Meanwhile, import the object inside the task function instead of using a "
        "module-level global (an import inside is fingerprinted by the module's name)",
    )


def function_digest(fn: Callable[..., Any], memo: Memo | None = None) -> str:
    """The digest (hex string) of a function or any callable, as a task would use it.

    Pass the same ``memo`` dict to several calls to share the work; it keeps the objects
    it has digested alive, so an id in it is never reused by another object.
    """
    return _Digester({} if memo is None else memo).digest(fn).hex()[:_HEX]


# -- encoding -------------------------------------------------------------------------
# Every atom is written with a type tag and a length, so no two different values can
# produce the same byte stream by concatenation.


#: A frame's length field (``_frame``), for the loops that write frames out inline.
_LENGTH = struct.Struct("<Q")


def _frame(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<Q", len(data)) + data


def _str(s: str) -> bytes:
    return _frame(b"s", s.encode("utf-8", "surrogatepass"))


def _int(n: int) -> bytes:
    return _frame(b"i", n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True))


def _atom(obj: Any) -> bytes:
    t = type(obj)
    if t is str:
        return _str(obj)
    if t is int:
        return _int(obj)
    if t is bool or obj is None or obj is Ellipsis:
        return _frame(b"c", repr(obj).encode())
    if t is float or t is complex:
        return _frame(b"f", repr(obj).encode())  # repr round-trips; -0.0 != 0.0
    if t is bytes:
        if len(obj) > 65536:  # array data: hash once rather than copy it into frames
            return _frame(b"h", hashlib.sha256(obj).digest())
        return _frame(b"b", obj)
    raise TypeError(t)


_TYPE_MODULE = type.__dict__["__module__"]
_TYPE_QUALNAME = type.__dict__["__qualname__"]


def _type_module(t: type) -> str | None:
    """A class's ``__module__``, read with ``type``'s own descriptor (no metaclass tricks)."""
    try:
        module = _TYPE_MODULE.__get__(t)
    except Exception:  # noqa: BLE001 - a class that cannot say where it is from
        return None
    return module if type(module) is str else None


def _type_name(t: type) -> str:
    """``module.qualname`` of a class, safely: what identifies an object we cannot read."""
    module = _type_module(t)
    try:
        qualname = _TYPE_QUALNAME.__get__(t)
    except Exception:  # noqa: BLE001
        qualname = "?"
    if type(qualname) is not str:
        qualname = "?"
    return f"{module}.{qualname}" if module else qualname


def _name_of(obj: Any) -> str:
    if issubclass(type(obj), type):
        return _type_name(obj)
    try:
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
        if module is None and (owner := getattr(obj, "__objclass__", None)) is not None:
            module = getattr(owner, "__module__", None)
        return f"{module}.{qualname}" if module else str(qualname)
    except Exception:  # noqa: BLE001 - an object that cannot be asked: its type's name
        return "?" + _type_name(type(obj))


def _module_name(module: types.ModuleType) -> str:
    """A module's name, even for a lazy module whose loading fails on first access."""
    try:
        name = module.__name__
    except Exception:  # noqa: BLE001 - e.g. importlib.util.LazyLoader: the load raised
        name = None
    if type(name) is not str:
        try:
            name = object.__getattribute__(module, "__dict__").get("__name__")
        except Exception:  # noqa: BLE001
            name = None
    return name if type(name) is str else "?"


def _error_text(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises
        return type(exc).__name__


class _Unreadable(Exception):  # noqa: N818 - internal, never escapes digests()
    """Reading a global failed in a way the digester did not foresee (a bug of ours)."""

    def __init__(self, name: str, where: str, error: BaseException) -> None:
        super().__init__(name, where)
        self.name = name
        self.where = where
        self.error = error


def _first_line(obj: Any) -> str:
    co = getattr(obj, "__code__", None)
    return str(co.co_firstlineno) if isinstance(co, types.CodeType) else "?"


# -- what is user code ------------------------------------------------------------------


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    """Directories whose code is "library": stdlib and every site-packages directory.

    The bare ``sys.prefix``/``sys.base_prefix`` are not used: on a system Python (prefix
    ``/usr``) that would call a project in ``/usr/src/app`` library code and miss edits.
    """
    dirs = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:  # pragma: no cover - some embedded interpreters lack these
        pass
    out = set()
    for d in dirs:
        if d:
            out.add(os.path.join(os.path.realpath(d), ""))
            out.add(os.path.join(os.path.abspath(d), ""))
    return tuple(sorted(out))


@functools.lru_cache(maxsize=4096)
def _is_user_file(filename: str | None) -> bool:
    if not filename:
        return True  # exec'd or interactive code: the user's
    if filename.startswith("<"):
        return not filename.startswith("<frozen")  # frozen modules are the stdlib's
    paths = (os.path.abspath(filename), os.path.realpath(filename))
    return not any(p.startswith(d) for d in _library_dirs() for p in paths)


def _is_user_module(module: types.ModuleType | None) -> bool:
    if module is None:
        return True  # not registered (e.g. built by hand): digest it rather than trust it
    name = _module_name(module)
    if name == "__main__":
        return True
    if name.partition(".")[0] in sys.stdlib_module_names:
        return False
    try:
        file = getattr(module, "__file__", None)
    except Exception:  # noqa: BLE001 - a module that cannot be read: known by name
        return False
    return type(file) is str and _is_user_file(file)


def _is_user_function(fn: types.FunctionType) -> bool:
    return fn.__module__ == "__main__" or _is_user_file(fn.__code__.co_filename)


def _is_user_class(cls: type) -> bool:
    module = _type_module(cls)
    return _is_user_module(sys.modules.get(module) if module else None)


def _version(name: str | None) -> bytes:
    """``__version__`` of the object's top-level package, if it has a cheap one."""
    top = sys.modules.get((name or "").partition(".")[0])
    try:
        v = getattr(top, "__version__", None)
    except Exception:  # noqa: BLE001 - a lazy package whose loading fails
        return b""
    return _str(v) if type(v) is str else b""


# -- code objects -------------------------------------------------------------------------


def _loads_const_zero(co: types.CodeType) -> bool:
    code = co.co_code
    ext = 0
    for i in range(0, len(code), 2):
        op, arg = code[i], code[i + 1] | ext
        if op == _EXTENDED_ARG:
            ext = arg << 8
            continue
        ext = 0
        if op in _CONST_OPS and arg == 0:
            return True
    return False


def _all_names(co: types.CodeType) -> tuple[str, ...]:
    """Names used by the code and all code nested in it (lambdas, comprehensions, ...)."""
    names = set(co.co_names)
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            names.update(_all_names(c))
    return tuple(sorted(names))


@functools.lru_cache(maxsize=4096)
def _imports(co: types.CodeType) -> tuple[tuple[int, str], ...]:
    """``(level, module)`` of every ``import`` inside the code and the code nested in it."""
    found: set[tuple[int, str]] = set()
    consts: list[Any] = []
    for ins in dis.get_instructions(co):
        if ins.opname == "LOAD_CONST":
            consts.append(ins.argval)
        elif ins.opname == "IMPORT_NAME":
            level = consts[-2] if len(consts) >= 2 and isinstance(consts[-2], int) else 0
            found.add((level, ins.argval))
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            found.update(_imports(c))
    return tuple(sorted(found))


def _imported_user_module(name: str) -> types.ModuleType | None:
    """The module a function imports inside its body, if it is user code; else None.

    Decided from the module's file, never from whether something imported it already:
    the fingerprint must not depend on what a process happened to import. A user module
    that is not imported yet is imported here, as the task itself would.
    """
    module = sys.modules.get(name)
    if module is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        if spec is None or spec.origin is None or not _is_user_file(spec.origin):
            return None
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - it fails when the task runs, too: name only
            return None
    return module if _is_user_module(module) else None


@functools.cache
def _opaque_types() -> tuple[type, ...]:
    """Types counted by name only, never by their state (see _Digester._reduced)."""
    import asyncio
    import concurrent.futures
    import io
    import random
    import selectors
    import socket
    import threading

    lock_types = (type(threading.Lock()), type(threading.RLock()))
    return (
        asyncio.AbstractEventLoop,
        asyncio.Future,  # tasks too
        asyncio.Handle,
        threading.Thread,
        threading.Condition,
        threading.Event,
        threading.Semaphore,
        *lock_types,
        socket.socket,
        selectors.BaseSelector,
        io.IOBase,
        concurrent.futures.Executor,
        random.Random,  # SystemRandom too
    )


class _Node:
    """A user function or class being digested: a vertex of Tarjan's algorithm."""

    __slots__ = ("index", "key", "low", "obj", "on_stack", "parts")

    def __init__(self, obj: Any, index: int) -> None:
        self.obj = obj
        self.index = index
        self.low = index
        self.on_stack = True
        self.parts: list[bytes | _Node] = []
        self.key = b""


class _CodeParts:
    """The digest parts of code: functions, their closures, the modules they name, and
    classes. A base of :class:`_Digester`, which walks the references (``_ref``) and
    values (``_value``) these parts lead to; apart so neither class is one long room.
    """

    _codes: dict[int, tuple[types.CodeType, bytes, tuple[str, ...]]]

    if TYPE_CHECKING:  # given by _Digester

        def _ref(self, obj: Any, out: list[bytes | _Node]) -> None: ...

        def _value(self, obj: Any, out: list[bytes | _Node], depth: int) -> None: ...

    def _code(self, co: types.CodeType) -> tuple[bytes, tuple[str, ...]]:
        hit = self._codes.get(id(co))
        if hit is not None and hit[0] is co:
            return hit[1], hit[2]
        h = hashlib.sha256(b"code")
        h.update(
            struct.pack(
                "<4q", co.co_argcount, co.co_posonlyargcount, co.co_kwonlyargcount, co.co_flags
            )
        )
        h.update(_frame(b"b", co.co_code))
        h.update(_frame(b"x", co.co_exceptiontable))
        for names in (co.co_names, co.co_varnames, co.co_freevars, co.co_cellvars):
            h.update(b"n%d" % len(names))
            for n in names:
                h.update(_str(n))
        consts = co.co_consts
        if consts and type(consts[0]) is str and not _loads_const_zero(co):
            consts = consts[1:]  # the docstring: no instruction can see it
            h.update(b"D")
        h.update(b"c%d" % len(consts))
        for c in consts:
            h.update(self._const(c))
        d = h.digest()
        names = _all_names(co)
        self._codes[id(co)] = (co, d, names)
        return d, names

    def _const(self, c: Any) -> bytes:
        if isinstance(c, types.CodeType):
            return b"C" + self._code(c)[0]
        if type(c) is tuple:
            return b"(%d" % len(c) + b"".join(self._const(x) for x in c) + b")"
        if type(c) is frozenset:
            return b"{%d" % len(c) + b"".join(sorted(self._const(x) for x in c)) + b"}"
        return _atom(c)

    def _function_parts(self, fn: types.FunctionType, out: list[bytes | _Node]) -> None:
        code_digest, names = self._code(fn.__code__)
        out.append(b"F" + code_digest)
        self._value(fn.__defaults__, out, 0)
        self._value(fn.__kwdefaults__, out, 0)
        self._closure(fn, out)
        wrapped = fn.__dict__.get("__wrapped__")
        if wrapped is not None:
            out.append(b"W")
            self._value(wrapped, out, 0)
        g = fn.__globals__
        builtins = getattr(fn, "__builtins__", None) or vars(_builtins)  # not in typeshed
        package = g.get("__package__") or ""
        for name in names:
            if name in g:
                value = g[name]
                out.append(b"g" + _str(name))
                try:
                    if issubclass(type(value), types.ModuleType):
                        self._module(value, names, out, set())
                    else:
                        self._value(value, out, 0)
                except _Unreadable:
                    raise
                except Exception as exc:  # not foreseen: name the global
                    raise _Unreadable(name, _name_of(fn), exc) from exc
            elif name in builtins:
                out.append(b"B" + _str(name))
            # Any other name is an attribute name: it counts through the code alone.
        for level, name in _imports(fn.__code__):
            # A module imported inside the function: user modules by the attributes the
            # code names on them, libraries by name (like a global module reference).
            try:
                full = importlib.util.resolve_name("." * level + name, package) if level else name
            except (ImportError, ValueError):
                full = name
            out.append(b"I" + _str(full))
            module = _imported_user_module(full)
            if module is not None:
                self._module(module, names, out, set())

    def _closure(self, fn: types.FunctionType, out: list[bytes | _Node]) -> None:
        cells = fn.__closure__ or ()
        out.append(b"z%d" % len(cells))
        for cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell: the variable is not assigned yet
                out.append(b"e")
            else:
                self._value(value, out, 0)

    def _module(
        self,
        module: types.ModuleType,
        names: Iterable[str],
        out: list[bytes | _Node],
        seen: set[int],
    ) -> None:
        """A module global: user modules by the attributes the code names on them.

        A module that cannot be read (a lazy module whose loading fails) counts by name.
        """
        name = _module_name(module)
        out.append(b"M" + _str(name))
        if not _is_user_module(module) or id(module) in seen:
            out.append(_version(name))
            return
        seen.add(id(module))
        try:
            attrs = object.__getattribute__(module, "__dict__")
        except Exception:  # noqa: BLE001
            attrs = None
        if type(attrs) is not dict:
            out.append(b"?unreadable")
            return
        for name in names:
            if name in attrs and not name.startswith("__"):
                value = attrs[name]
                out.append(b"a" + _str(name))
                if issubclass(type(value), types.ModuleType):
                    self._module(value, names, out, seen)
                else:
                    self._value(value, out, 0)

    def _class_parts(self, cls: type, out: list[bytes | _Node]) -> None:
        out.append(b"T" + _str(cls.__name__))
        out.append(b"b%d" % len(cls.__bases__))
        for base in cls.__bases__:
            self._value(base, out, 0)
        attrs = vars(cls)
        for name in sorted(attrs):
            if name not in _CLASS_SKIP:
                out.append(b"a" + _str(name))
                self._value(attrs[name], out, 0)


class _Digester(_CodeParts):
    """Digests callables and values; one per ``fingerprints`` call (or a shared memo).

    ``memo`` holds the finished user functions and classes (see ``Memo``); ``_top`` the
    digests of the callables asked for, which for a user function is a hash of its node
    digest (kept apart so that a reference to the function always sees the node digest).
    """

    def __init__(self, memo: Memo) -> None:
        self._memo = memo
        self._top: Memo = {}
        self._codes: dict[int, tuple[types.CodeType, bytes, tuple[str, ...]]] = {}
        self._nodes: dict[int, _Node] = {}
        self._stack: list[_Node] = []
        self._building: list[_Node] = []
        self._counter = 0
        self._active: set[int] = set()  # values being digested: cycle guard (never output)
        self.opaque = False  # set once something was counted by its type's name only

    def digest(self, obj: Any) -> bytes:
        hit = self._top.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        parts: list[bytes | _Node] = []
        self._value(obj, parts, 0)
        h = hashlib.sha256(b"top")
        for p in parts:
            assert isinstance(p, bytes), "every node is finished once the stack is empty"
            h.update(p)
        d = h.digest()
        self._top[id(obj)] = (obj, d)
        return d

    # -- the Tarjan part ------------------------------------------------------------------

    def _ref(self, obj: Any, out: list[bytes | _Node]) -> None:
        """Append a user function's or class's digest, or a placeholder inside a cycle."""
        hit = self._memo.get(id(obj))
        if hit is not None and hit[0] is obj:
            out.append(hit[1])
            return
        parent = self._building[-1] if self._building else None
        node = self._nodes.get(id(obj))
        if node is None:
            node = self._visit(obj)
            if parent is not None and node.on_stack:
                parent.low = min(parent.low, node.low)
        elif node.on_stack and parent is not None:
            parent.low = min(parent.low, node.index)
        hit = self._memo.get(id(obj))
        out.append(hit[1] if hit is not None else node)

    def _visit(self, obj: Any) -> _Node:
        node = _Node(obj, self._counter)
        self._counter += 1
        self._nodes[id(obj)] = node
        self._stack.append(node)
        self._building.append(node)
        # The node's parts must not depend on the path that reached it, so the values
        # being digested outside it do not count as cycles inside it (Tarjan handles the
        # cycles through nodes). Else an Enum reached through a member, say from a
        # frozenset of members iterated in address order, marked that member "?cycle"
        # in its class digest, a different member in each process.
        active, self._active = self._active, set()
        try:
            if isinstance(obj, type):
                self._class_parts(obj, node.parts)
            else:
                self._function_parts(obj, node.parts)
        finally:
            self._building.pop()
            self._active = active
        if node.low == node.index:
            members = []
            while True:
                m = self._stack.pop()
                m.on_stack = False
                members.append(m)
                if m is node:
                    break
            self._finish(members)
        return node

    def _finish(self, members: list[_Node]) -> None:
        """Give each member of a strongly connected component its final digest.

        A lone member refers to itself (if at all) as ``self``. In a cycle each member
        refers to the others by qualified name (made unique), and the component's digest is
        taken over the members sorted by name, and each member's digest is the
        component's plus its own name: the same whichever member was reached first.
        """
        if len(members) == 1:
            members[0].key = b"self"
        else:
            # The qualified name alone, so that moving a cycle to another module keeps its
            # digest; the module, then the line, only to tell apart members that share it
            # (two lambdas, or two modules' ``helper``), and only then.
            keys = [str(getattr(m.obj, "__qualname__", "?")) for m in members]
            for refine in (_name_of, _first_line):
                keys = [
                    k if keys.count(k) == 1 else f"{k}@{refine(m.obj)}"
                    for m, k in zip(members, keys, strict=True)
                ]
            for m, k in zip(members, keys, strict=True):
                m.key = k.encode()
        in_scc = {id(m) for m in members}
        partial = []
        for m in members:
            assert all(isinstance(p, bytes) or id(p) in in_scc for p in m.parts), (
                "a pending node is always in the current cycle"
            )
            stream = b"".join(p if isinstance(p, bytes) else _frame(b"r", p.key) for p in m.parts)
            partial.append((m.key, hashlib.sha256(b"node" + stream).digest()))
        if len(members) == 1:
            finals = [partial[0][1]]
        else:
            scc = hashlib.sha256(b"scc")
            for key, d in sorted(partial):
                scc.update(_frame(b"k", key) + d)
            s = scc.digest()
            finals = [hashlib.sha256(s + _frame(b"k", m.key)).digest() for m in members]
        for m, d in zip(members, finals, strict=True):
            self._memo[id(m.obj)] = (m.obj, d)
            del self._nodes[id(m.obj)]
            m.parts = []

    # -- values ---------------------------------------------------------------------------------

    def _value(self, obj: Any, out: list[bytes | _Node], depth: int) -> None:
        """Append the digest parts of any value; see the module docstring for the rules.

        Anything not handled by type falls back to its pickle reduction
        (``__reduce_ex__(4)``) digested by these same rules, so sets inside objects are
        still sorted; an object that cannot be reduced counts by its type name only.
        """
        t = type(obj)
        if t in _ATOMS:
            out.append(_atom(obj))
            return
        if depth > _MAX_DEPTH:
            self.opaque = True
            out.append(b"?deep" + _str(_name_of(t)))
            return
        if t is types.FunctionType:
            if _is_user_function(obj):
                self._ref(obj, out)
            else:  # a library function; a decorator's closure may still hold user code
                out.append(b"L" + _str(_name_of(obj)) + _version(obj.__module__))
                self._closure(obj, out)
                wrapped = obj.__dict__.get("__wrapped__")
                if wrapped is not None:
                    self._value(wrapped, out, depth + 1)
            return
        if issubclass(t, type):  # a class (not isinstance: that reads obj.__class__)
            if _is_user_class(obj):
                self._ref(obj, out)
            else:
                out.append(b"L" + _str(_type_name(obj)) + _version(_type_module(obj)))
            return
        if t is types.ModuleType:
            name = _module_name(obj)
            out.append(b"M" + _str(name) + _version(name))
            return
        if id(obj) in self._active:
            out.append(b"?cycle")
            return
        self._active.add(id(obj))
        try:
            self._composite(obj, t, out, depth + 1)
        finally:
            self._active.discard(id(obj))

    def _composite(self, obj: Any, t: type, out: list[bytes | _Node], depth: int) -> None:
        if t is tuple or t is list:
            out.append(b"(%d" % len(obj) if t is tuple else b"[%d" % len(obj))
            for x in obj:
                self._value(x, out, depth)
            return
        if t is dict:  # insertion order: iterating a dict in a task sees it
            out.append(b"{%d" % len(obj))
            for k, v in obj.items():
                self._value(k, out, depth)
                self._value(v, out, depth)
            return
        if t is set or t is frozenset:
            out.append((b"<%d" if t is set else b">%d") % len(obj))
            out.extend(self._sorted_elements(obj, depth))
            return
        if t is types.CodeType:
            out.append(b"C" + self._code(obj)[0])
            return
        if t is types.MethodType:
            out.append(b"m")
            self._value(obj.__func__, out, depth)
            self._value(obj.__self__, out, depth)
            return
        if t is functools.partial:
            out.append(b"p")
            self._value(obj.func, out, depth)
            self._value(obj.args, out, depth)
            self._value(obj.keywords, out, depth)
            return
        if t is staticmethod or t is classmethod:
            out.append(b"S" + _str(t.__name__))
            self._value(obj.__func__, out, depth)
            return
        if t is property:
            out.append(b"P")
            for f in (obj.fget, obj.fset, obj.fdel):
                self._value(f, out, depth)
            return
        if issubclass(t, _DESCRIPTORS):
            out.append(b"L" + _str(_name_of(obj)))
            owner = getattr(obj, "__self__", None)
            if owner is not None and not issubclass(type(owner), types.ModuleType):
                self._value(owner, out, depth)  # a bound builtin method: SEEN.add
            return
        self._reduced(obj, t, out, depth)

    def _sorted_elements(self, items: Iterable[Any], depth: int) -> list[bytes]:
        """Set elements in an order that does not depend on the process (hash seed)."""
        encoded = []
        for x in items:
            parts: list[bytes | _Node] = []
            self._value(x, parts, depth)
            if all(isinstance(p, bytes) for p in parts):
                encoded.append(hashlib.sha256(b"".join(parts)).digest())  # type: ignore[arg-type]
            else:  # a function inside a cycle in progress: name it, stably
                key = b"".join(p if isinstance(p, bytes) else _str(_name_of(p.obj)) for p in parts)
                encoded.append(b"?pending" + hashlib.sha256(key).digest())
        return sorted(encoded)

    def _reduced(self, obj: Any, t: type, out: list[bytes | _Node], depth: int) -> None:
        """An object of any other type, by its pickle reduction.

        The object itself is asked nothing that could raise, lie or change it: the test
        is on its type (``isinstance`` would read ``obj.__class__``, which a proxy
        forwards), ``__wrapped__`` is looked up in its instance dict only, and the
        reduction is called through its type. Whatever fails or returns something that is
        not a reduction counts the object by its type's name (``?opaque``): a proxy like
        ``flask.current_app`` outside its context, an object whose ``__reduce__`` raises.
        """
        if issubclass(t, _opaque_types()) or _is_mock_type(t) or _is_numpy_rng_type(t):
            # Run-time machinery, not data: an event loop (its ready queue and timers
            # change by the moment), a thread, a lock, a socket, an open file. Its state
            # says nothing about a task's result, and digesting it made a done task
            # rerun (and took seconds for a client holding a loop). A unittest.mock
            # object too: its state is the calls made on it, which change as it is used.
            # A random number generator too (``random.Random``, numpy's): its state moves
            # with every draw and, seeded from the OS, differs in every process, so
            # ``random.uniform`` (a method of ``random``'s hidden instance) or a module's
            # ``random.Random()`` made every task reaching it rerun in every process.
            self.opaque = True
            out.append(b"?opaque" + _str(_type_name(t)))
            return
        wrapped = _instance_attr(obj, "__wrapped__")  # functools.cache and friends
        if wrapped is not None and callable(obj):
            out.append(b"w" + _str(_type_name(t)))
            self._value(wrapped, out, depth)
            return
        items = _reduction(obj, t)
        if type(items) is str:  # a global singleton, pickled by name
            out.append(b"R" + _str(_type_name(t)) + _str(items))
            return
        if items is None:
            self.opaque = True
            out.append(b"?opaque" + _str(_type_name(t)))
            return
        out.append(b"R%d" % len(items))
        self._value(t, out, depth)
        for item in items:
            self._value(item, out, depth)


def _is_mock_type(t: type) -> bool:
    mock = sys.modules.get("unittest.mock")  # not imported: nothing can be a Mock
    return mock is not None and issubclass(t, mock.NonCallableMock)


#: numpy's generator types, once ``numpy.random`` is imported (see _is_numpy_rng_type).
_NUMPY_RNG: list[tuple[type, ...]] = []


def _is_numpy_rng_type(t: type) -> bool:
    """A numpy random generator, its bit generator or its seed sequence (see _reduced)."""
    if _NUMPY_RNG:
        return issubclass(t, _NUMPY_RNG[0])
    nprandom = sys.modules.get("numpy.random")  # not imported: no numpy generator
    if nprandom is None:
        return False
    names = ("Generator", "RandomState", "BitGenerator", "SeedSequence")
    found = tuple(c for n in names if isinstance(c := getattr(nprandom, n, None), type))
    if len(found) == len(names):  # kept once numpy.random is fully imported
        _NUMPY_RNG.append(found)
    return issubclass(t, found)


def _instance_attr(obj: Any, name: str) -> Any:
    """``obj.__dict__[name]`` or None, without calling any of the object's own code."""
    try:
        d = object.__getattribute__(obj, "__dict__")
    except Exception:  # noqa: BLE001 - no instance dict, or a __dict__ that raises
        return None
    return d.get(name) if type(d) is dict else None


def _reduction(obj: Any, t: type) -> str | list[Any] | None:
    """``obj``'s ``__reduce_ex__(4)`` with its iterators listed; None if it cannot be had.

    All of the object's code that this calls runs here, under one ``try``, before
    anything is digested: nothing of it is left half-written if it raises.
    """
    try:
        reduce_ex: Any = t.__reduce_ex__  # through the type: unbound, given obj
        reduced = reduce_ex(obj, 4)
        if type(reduced) is str:
            return reduced
        if type(reduced) is not tuple or not 2 <= len(reduced) <= 6:
            return None
        items = list(reduced)
        for i in range(3, len(items)):  # listitems / dictitems iterators
            if items[i] is not None:
                items[i] = list(items[i])
        return items
    except Exception:  # noqa: BLE001 - any failure means "cannot look inside"
        return None
