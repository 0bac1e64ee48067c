"""A rewrite naming an element of a family that has not expanded says where it is.

``score[ann]`` exists once ``score``'s family has expanded: in the graph a run returns,
or in one loaded from its store. Named on the definitions alone, the rewrite still raises
``UnknownTaskError`` listing it, and now says why and where to find it.
"""

from __future__ import annotations

import pytest

import asyncgraph as ag


def build() -> ag.Graph:
    g = ag.Graph()
    g.add("users", lambda: ["ann", "bob"], deps=[])
    g.add("score", lambda u: len(u), deps=["users"], over="users", key=lambda u: u)
    return g


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda g: ag.reset(g, "score[ann]"),
        lambda g: ag.mark_done(g, "score[ann]", {"score[ann]": 1}),
        lambda g: ag.mark_done_except(g, ["score[ann]"]),
        lambda g: ag.subgraph(g, "score[ann]"),
    ],
)
def test_an_element_before_its_family_expanded(rewrite):
    with pytest.raises(ag.UnknownTaskError) as info:
        rewrite(build())
    assert info.value.names == ["score[ann]"]
    message = str(info.value)
    assert "unknown task name(s): 'score[ann]'" in message
    assert "'score' maps over its parent's result and has no elements" in message
    assert "ag.load(graph, store)" in message


def test_an_element_the_family_does_not_have_is_only_unknown():
    out = ag.run_sync(build())
    with pytest.raises(ag.UnknownTaskError) as info:
        ag.reset(out, "score[zed]")
    assert str(info.value) == "reset: unknown task name(s): 'score[zed]'"
    assert ag.reset(out, "score[ann]").status["score[ann]"] is ag.State.PENDING
