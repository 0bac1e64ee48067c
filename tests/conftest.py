"""Shared test setup: every async test runs on the default asyncio loop and on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class Probe:
    """Records what ran, in order, and how many ran at once (an overlap probe)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.calls: dict[str, int] = {}
        self.active: set[str] = set()
        self.high_water = 0
        self.overlaps: list[frozenset[str]] = []

    def enter(self, name: str) -> None:
        self.started.append(name)
        self.calls[name] = self.calls.get(name, 0) + 1
        self.active.add(name)
        self.high_water = max(self.high_water, len(self.active))
        self.overlaps.append(frozenset(self.active))

    def leave(self, name: str) -> None:
        self.active.discard(name)


@pytest.fixture
def probe() -> Probe:
    return Probe()


def statuses(graph: Any) -> dict[str, str]:
    return {n: s.value for n, s in graph.status.items()}
