"""The worker times its garbage collections into learnops_gc_pause_seconds."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from agents.health import GCPauses, watch_gc_pauses


@pytest.fixture(autouse=True)
def only_explicit_collections() -> Iterator[None]:
    """No automatic collection between two readings; the watch removed afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.callbacks[:] = [c for c in gc.callbacks if not isinstance(c, GCPauses)]
        if enabled:
            gc.enable()


def _collections(generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "learnops_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


def test_a_full_collection_is_timed_once_however_often_the_watch_is_started() -> None:
    watch_gc_pauses()
    watch_gc_pauses()
    assert sum(isinstance(c, GCPauses) for c in gc.callbacks) == 1
    before = _collections(2)
    gc.collect(2)
    assert _collections(2) == before + 1


def test_each_generation_is_timed_under_its_own_label() -> None:
    watch_gc_pauses()
    young, middle = _collections(0), _collections(1)
    gc.collect(1)
    assert _collections(1) == middle + 1
    assert _collections(0) == young
