"""The console's share charts (learnops.console.concerns.share_series): one per bandit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from learnops.console.concerns import share_series

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _row(
    parameter: str, sequence: int, shares: dict[str, float], version: int = 1
) -> dict[str, Any]:
    return {
        "phase": "draft",
        "parameter": parameter,
        "policy_id": "p",
        "policy_version": version,
        "sequence": sequence,
        "shares": shares,
        "sent_at": T0 + timedelta(minutes=sequence),
    }


def test_each_bandit_has_a_chart_whose_options_line_up_with_its_times() -> None:
    history = [
        _row("router.model", 0, {"a": 0.5, "b": 0.5}),
        _row("rag.top_k", 0, {"4": 1 / 3, "8": 1 / 3, "16": 1 / 3}),
        _row("router.model", 1, {"a": 0.2, "b": 0.8}),
        # An option the version did not have before (not possible within one version, but a
        # chart must not shift an option's shares onto another's times).
        _row("router.model", 2, {"a": 0.1, "b": 0.7, "c": 0.2}),
        _row("router.model", 0, {"a": 0.9, "b": 0.1}, version=2),
    ]
    until = T0 + timedelta(hours=1)
    # Version 2 of router.model replaced version 1; rag.top_k of version 1 is still in force.
    in_force = [history[1], history[4]]
    charts = {c["name"]: c for c in share_series(history, until, in_force)}
    assert list(charts) == [
        "draft/router.model of p@1",
        "draft/rag.top_k of p@1",
        "draft/router.model of p@2",
    ]
    model = charts["draft/router.model of p@1"]
    # Each allocation; replaced by version 2, the series ends at its last allocation.
    assert model["times"] == [(T0 + timedelta(minutes=m)).isoformat() for m in (0, 1, 2)]
    assert model["shares"] == {
        "a": [0.5, 0.2, 0.1],
        "b": [0.5, 0.8, 0.7],
        "c": [None, None, 0.2],
    }
    # In force: the last allocation again at the page's time.
    rag = charts["draft/rag.top_k of p@1"]
    assert rag["shares"]["8"] == [1 / 3, 1 / 3] and rag["times"][-1] == until.isoformat()
    assert charts["draft/router.model of p@2"]["shares"] == {"a": [0.9, 0.9], "b": [0.1, 0.1]}


def test_a_chart_ends_at_its_last_allocation_when_that_is_later_than_the_page() -> None:
    # A console whose clock is behind the worker's: no point goes back in time.
    row = _row("router.model", 5, {"a": 0.5, "b": 0.5})
    (chart,) = share_series([row], T0, [row])
    assert chart["times"] == [(T0 + timedelta(minutes=5)).isoformat()] * 2
