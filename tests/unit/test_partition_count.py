"""A partition count changed under table state: refused, with where to read what to do."""

from __future__ import annotations

from typing import Any

import pytest
from faust.types import TP

import agents.app
from agents.app import create_app
from agents.settings import Settings
from agents.topics import partition_problem


def test_inputs_and_changelogs_of_one_count_are_fine() -> None:
    inputs = {"runs": 4, "routed": 4}
    assert partition_problem(inputs, {"app-crl-changelog": 4}, 4) is None
    assert partition_problem(inputs, {}) is None  # a new app id: no state yet


def test_changelogs_of_another_count_are_named() -> None:
    found = partition_problem({"runs": 8}, {"a": 4, "b": 8}, 8)
    assert found is not None
    assert "have 8 partitions" in found and "(a 4)" in found and "b 8" not in found
    assert "Changing the partition count" in found


def test_inputs_of_several_counts_are_named() -> None:
    found = partition_problem({"runs": 8, "routed": 4}, {})
    assert found == "the learning topics must share one partition count, found: routed 4, runs 8"


def test_a_file_that_asks_for_another_count_than_the_cluster_has_is_named() -> None:
    """A review found a worker starting on 4 partitions with topics.yaml at 8: tables it
    made then had 8, and the next start refused."""
    found = partition_problem({"runs": 4}, {}, 8)
    assert found is not None and found.startswith("topics.yaml gives 8 partitions")


def test_a_partition_past_the_count_the_worker_started_with_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Raised while the worker runs, a new partition reaches it at a metadata refresh; a
    table write there went to a changelog partition that did not exist (a crash loop)."""
    app = create_app(Settings(learnops_app_id="count-test", learnops_web_enabled=False), stages=[])
    said: list[str] = []

    def leave(message: str) -> Any:
        said.append(message)

    monkeypatch.setattr(agents.app, "exit_now", leave)
    app._partitions = 4
    app._partitions_unchanged(app, {TP("learning.run-completed", 3), TP("other", 9)})
    assert said == []
    app._partitions_unchanged(app, {TP("learning.run-completed", 6), TP("learning.dlq", 4)})
    assert len(said) == 1 and "assigned=[4, 6] started_with=4" in said[0]
