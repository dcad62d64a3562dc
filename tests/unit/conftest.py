"""Shared fixtures: a fresh store on a temporary file, with every published event recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.events import ChangeEvent, EventBus
from controller.store import Store


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def events(bus: EventBus) -> list[ChangeEvent]:
    """Every event the bus publishes, in order."""
    seen: list[ChangeEvent] = []
    bus.subscribe(seen.extend)
    return seen


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "tenantnet.db")


@pytest.fixture
def store(db_path: str, bus: EventBus, events: list[ChangeEvent]) -> Iterator[Store]:
    s = Store(db_path, bus)
    yield s
    s.close()
