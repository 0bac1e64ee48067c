"""Fan-out: what a mapped task (a *template*) expands into, as pure functions.

A task added with ``over="users"`` is a template: when ``users`` is done, its result
is split into items and the template becomes a *family* of elements, real tasks named
``score[0]``, ``score[1]``, ... by position or ``score[alice]`` with ``key=``. A
template ``over=`` another template is element-wise: ``publish[k]`` depends on
``score[k]`` only. The template itself stands for the family: its status is the
aggregate of its elements' and its result their collected results.

What can be mapped: a ``Sequence`` (not ``str``/``bytes``) by position, a ``Mapping``
by key (the collected result is then a dict). Anything else, a key that is not a
non-empty ``str``/``int`` free of ``[`` and ``]``, or two elements with one key fail the
template (not its parent) with an error saying what to pass.

Nothing here runs or keeps state: the run (``_runner``) calls :func:`items`,
:func:`elements` and :func:`elementwise` when a template is ready, and
:func:`collected` and :func:`aggregate` when its family ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from ._state import State
from ._task import Element, Task, new_element

__all__ = [
    "Items",
    "aggregate",
    "collected",
    "element_name",
    "element_like",
    "prototype",
    "elements",
    "elementwise",
    "family_of",
    "positions",
    "items",
]


class Items:
    """A template's items: their keys (as in the names), values, and the result's shape."""

    __slots__ = ("keys", "mapping", "originals", "values")

    def __init__(
        self, keys: list[str], values: list[Any], mapping: bool, originals: list[Any]
    ) -> None:
        self.keys = keys
        self.values = values
        self.mapping = mapping  # a Mapping was mapped: the collected result is a dict
        self.originals = originals  # the Mapping's own keys (for the collected dict)


def element_name(template: str, key: str) -> str:
    return f"{template}[{key}]"


def positions(keys: Sequence[str]) -> list[int] | None:
    """The positions ``keys`` (element keys, as in their names) stand for, or None if
    one of them is not a position (a ``key=`` family's, or ``"²"``, which ``isdigit``
    takes and ``int`` refuses): how a list of a family's elements is put in order."""
    if all(k.isdecimal() for k in keys):
        return [int(k) for k in keys]
    return None


def family_of(name: str) -> tuple[str, str] | None:
    """``("score", "alice")`` for ``"score[alice]"``; None for a name without brackets."""
    if not name.endswith("]"):
        return None
    i = name.find("[")
    if i <= 0:
        return None
    return name[:i], name[i + 1 : -1]


def _key_text(template: Task, key: Any, where: str) -> str:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise TypeError(
            f"mapped task {template.name!r}: the key of {where} is {type(key).__name__} "
            f"{key!r}; a key must be a str or an int (it names the element "
            f"{template.name}[<key>]): make key= return one"
        )
    text = str(key)
    if not text or "[" in text or "]" in text:
        raise ValueError(
            f"mapped task {template.name!r}: the key of {where} is {key!r}; a key must be "
            "non-empty and free of '[' and ']' (it names the element "
            f"{template.name}[<key>]): make key= return one"
        )
    return text


def items(template: Task, value: Any) -> Items:
    """Split the result of the template's ``over`` dependency into its items.

    Raises TypeError (an unmappable result, a key of the wrong type) or ValueError (a
    repeated or malformed key), each naming the template, the parent and what to pass.
    """
    over = template.over
    if isinstance(value, Mapping):
        originals = list(value.keys())
        values = [value[k] for k in originals]
        keys = [_key_text(template, k, f"the item at key {k!r}") for k in originals]
        mapping = True
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        values = list(value)
        originals = []
        mapping = False
        fn = template.key
        if fn is None:
            keys = [str(i) for i in range(len(values))]
        else:
            keys = []
            for i, v in enumerate(values):
                try:
                    k = fn(v)
                except Exception as exc:
                    raise ValueError(
                        f"mapped task {template.name!r}: key= raised {type(exc).__name__}: "
                        f"{exc} on the item at position {i} of {over!r}'s result ({v!r:.80})"
                    ) from exc
                keys.append(_key_text(template, k, f"the item at position {i}"))
    else:
        what = type(value).__name__
        hint = (
            "a DataFrame is not mapped row by row: return df.to_dict('records') or a list"
            if what == "DataFrame"
            else "return a list (list(...)), a tuple or a dict from it"
        )
        raise TypeError(
            f"mapped task {template.name!r} maps over {over!r}, whose result is a "
            f"{what} ({value!r:.80}); only a Sequence (not str or bytes), mapped by "
            f"position, or a Mapping, mapped by key, can be mapped: {hint}"
        )
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        j = seen.setdefault(k, i)
        if j != i:
            where = (
                f"keys {originals[j]!r} and {originals[i]!r}"
                if mapping
                else f"positions {j} and {i}"
            )
            raise ValueError(
                f"mapped task {template.name!r}: the items at {where} of {over!r}'s "
                f"result have the same key {k!r}, and each element needs its own name "
                f"({template.name}[{k}]): make key= return a unique key per item"
            )
    return Items(keys, values, mapping, originals)


#: Element's fields in order, and where its per-element ones are: elements are built
#: positionally from a copy of their template's fields, so a field Task gains later is
#: copied too, and a 100k family costs a third less than with keywords.
_FIELDS = tuple(f.name for f in fields(Element))
_AT = {name: i for i, name in enumerate(_FIELDS)}


def prototype(template: Task) -> list[Any]:
    """The fields of an element of ``template``, in order, before its own are set."""
    args: list[Any] = [getattr(template, f, None) for f in _FIELDS]
    args[_AT["over"]] = None  # an element is not a template
    args[_AT["key"]] = None
    args[_AT["family"]] = template.name
    return args


def element_like(template: Task | list[Any], **own: Any) -> Element:
    """An element of ``template`` (or of its :func:`prototype`, made once for many):
    its fields, with ``own`` (name, deps, value, ...) set."""
    args = prototype(template) if isinstance(template, Task) else template.copy()
    for k, v in own.items():
        args[_AT[k]] = v
    return new_element(*args)


def elements(template: Task, found: Items) -> list[Element]:
    """The elements of ``template`` for its items: each binds its one item where the
    template's ``over`` dependency's result would go."""
    proto = prototype(template)
    proto[_AT["input"]] = template.over
    i_name, i_value, i_index, i_at = _AT["name"], _AT["value"], _AT["index"], _AT["at"]
    prefix = template.name + "["
    out: list[Element] = []
    append = out.append
    for i, (k, v) in enumerate(zip(found.keys, found.values, strict=True)):
        args = proto.copy()
        args[i_name] = prefix + k + "]"
        args[i_value] = v
        args[i_index] = i
        args[i_at] = k
        append(new_element(*args))
    return out


def elementwise(template: Task, keys: Sequence[str]) -> list[Element]:
    """The elements of a template ``over=`` another template: ``publish[k]`` takes the
    whole result of ``score[k]`` where ``score``'s would go."""
    name = template.name
    over = template.over
    assert over is not None
    proto = prototype(template)
    out = []
    for i, k in enumerate(keys):
        mine = element_name(over, k)

        def swap(d: str, mine: str = mine) -> str:
            return mine if d == over else d

        out.append(
            element_like(
                proto,
                name=element_name(name, k),
                args=tuple(swap(d) for d in template.args),
                kwargs=tuple((p, swap(t)) for p, t in template.kwargs),
                deps=tuple(swap(d) for d in template.deps),
                index=i,
                at=k,
            )
        )
    return out


def collected(results: Iterable[Any], mapping: bool, originals: Sequence[Any]) -> Any:
    """A done family's result: its elements' results in order (a dict for a Mapping)."""
    values = list(results)
    if mapping:
        return dict(zip(originals, values, strict=True))
    return values


def aggregate(statuses: Iterable[State]) -> State:
    """A family's status from its elements': failed if any failed, else cancelled if
    any was, else skipped if any was, else pending/running while any is, else done."""
    seen = set(statuses)
    for st in (State.FAILED, State.CANCELLED, State.SKIPPED, State.RUNNING, State.PENDING):
        if st in seen:
            return st
    return State.DONE
