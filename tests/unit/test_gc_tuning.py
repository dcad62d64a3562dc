"""gc_tuning: start-up objects leave the collector's reach, and long pauses are reported."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator

import pytest

from controller import gc_tuning


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    if gc_tuning._on_gc in gc.callbacks:
        gc.callbacks.remove(gc_tuning._on_gc)


def test_freeze_exempts_live_objects_and_raises_young_threshold(restore_gc: None) -> None:
    assert gc.get_freeze_count() == 0
    frozen = gc_tuning.freeze_startup_objects()
    assert frozen > 1000
    assert gc.get_freeze_count() == frozen
    assert gc.get_threshold()[0] == gc_tuning.GEN0_THRESHOLD


def test_slow_collection_is_logged_once_fast_one_not(
    restore_gc: None, caplog: pytest.LogCaptureFixture
) -> None:
    gc_tuning.watch_slow_collections()
    gc_tuning.watch_slow_collections()  # idempotent: one callback, one line per pause
    assert gc.callbacks.count(gc_tuning._on_gc) == 1
    caplog.set_level(logging.WARNING, logger=gc_tuning.__name__)
    gc_tuning._on_gc("start", {"generation": 2})
    gc_tuning._on_gc("stop", {"generation": 2})
    assert not caplog.records
    gc_tuning._on_gc("start", {"generation": 2})
    time.sleep(gc_tuning.SLOW_COLLECTION_MS / 1000 * 1.5)
    gc_tuning._on_gc("stop", {"generation": 2})
    assert len(caplog.records) == 1
    assert "generation 2" in caplog.records[0].getMessage()
