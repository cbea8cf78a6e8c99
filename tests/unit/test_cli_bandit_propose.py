"""`learnops bandit propose` takes only an open request the bandit raised, with its proposal."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from learnops.cli.bandit import proposal_of
from learnops.cli.main import CliError

EVIDENCE = {
    "experiment_id": "exp-tune-1",
    "experiment_type": "tool_tuning",
    "phase": "draft",
    "parent": "prdwriter@1",
    "candidate_artifact": {"fixed": {"draft": {"router.model": "model-c-small"}}},
}


def request(**update: Any) -> dict[str, Any]:
    return {
        "request_id": uuid.uuid4(),
        "reason": "bandit:prdwriter@1:draft/router.model=model-c-small",
        "status": "open",
        "experiment_id": None,
        "closed_reason": None,
        "evidence": dict(EVIDENCE),
        **update,
    }


def test_an_open_bandit_request_gives_its_proposal() -> None:
    assert proposal_of(request()) == EVIDENCE


@pytest.mark.parametrize(
    ("update", "said"),
    [
        ({"reason": "crl_regression"}, "not by the bandit"),
        ({"evidence": {"experiment_id": "exp-tune-1"}}, "carries no experiment_type"),
        ({"status": "closed", "experiment_id": "exp-tune-1"}, "answered already by experiment"),
        ({"status": "closed", "closed_reason": "dismissed"}, "is closed \\(dismissed\\)"),
    ],
)
def test_a_request_that_is_not_an_open_bandit_proposal_is_refused_with_its_reason(
    update: dict[str, Any], said: str
) -> None:
    with pytest.raises(CliError, match=said):
        proposal_of(request(**update))
