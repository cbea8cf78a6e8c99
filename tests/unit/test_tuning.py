"""The experiment the bandit files: a candidate policy that fixes the best option."""

import copy
import uuid

import numpy as np
import pytest

from learning.bandit import Allocation, BanditConfig, BanditState, allocate
from learning.tuning import experiment_type, fixing_artifact, tuning_proposal
from models.ids import BANDIT_NAMESPACE, tuning_experiment_id
from models.tunables import tunables_of
from tests.unit.sample_policies import ARTIFACT


def test_fixing_an_option_moves_it_from_tunables_to_fixed_and_keeps_the_rest() -> None:
    before = copy.deepcopy(ARTIFACT)
    candidate = fixing_artifact(ARTIFACT, "draft", "router.model", "model-c-small")
    assert before == ARTIFACT  # the active policy's artifact is not touched
    assert candidate["fixed"] == {"draft": {"router.model": "model-c-small"}}
    assert candidate["tunables"] == {
        "draft": {"rag.top_k": ["4", "8", "16"]},
        "review": {"router.model": ["model-a-large", "model-c-small"]},
    }
    assert candidate["prompt"] == "Write the PRD."
    tunables_of(candidate)  # still a valid declaration


def test_fixing_the_last_open_parameter_drops_tunables_and_keeps_earlier_fixes() -> None:
    artifact = {
        "tunables": {"draft": {"rag.top_k": ["4", "8"]}},
        "fixed": {"draft": {"router.model": "model-c-small"}},
    }
    candidate = fixing_artifact(artifact, "draft", "rag.top_k", "8")
    assert "tunables" not in candidate
    assert candidate["fixed"] == {"draft": {"router.model": "model-c-small", "rag.top_k": "8"}}


def test_an_option_the_policy_does_not_declare_cannot_be_fixed() -> None:
    with pytest.raises(ValueError, match="does not declare option 'model-z'"):
        fixing_artifact(ARTIFACT, "draft", "router.model", "model-z")


@pytest.mark.parametrize(
    ("parameter", "kind"),
    [
        ("router.model", "tool_tuning"),
        ("tools.search", "tool_tuning"),
        ("rag.top_k", "rag_optimization"),
    ],
)
def test_retrieval_parameters_are_rag_optimization_the_rest_tool_tuning(
    parameter: str, kind: str
) -> None:
    assert experiment_type(parameter) == kind


def test_the_experiment_id_is_a_function_of_what_it_fixes() -> None:
    one = tuning_experiment_id("PRDWriter", "prd", 3, "draft", "router.model", "model-c-small")
    assert one == tuning_experiment_id(
        "PRDWriter", "prd", 3, "draft", "router.model", "model-c-small"
    )
    assert one != tuning_experiment_id(
        "PRDWriter", "prd", 4, "draft", "router.model", "model-c-small"
    )
    assert uuid.UUID(one).version == 5
    assert uuid.UUID("3bd4b58f-3d54-5555-a3ca-823359ef54ac") == BANDIT_NAMESPACE


def _learned(small_factor: float, seed: int = 4) -> tuple[Allocation, dict[str, int]]:
    rng = np.random.default_rng(seed)
    options = ["model-a-large", "model-b-medium", "model-c-small"]
    state = BanditState.for_options(options)
    factors = {"model-a-large": 1.0, "model-b-medium": 1.3, "model-c-small": small_factor}
    for _ in range(400):
        for option in options:
            loss = float(rng.lognormal(0, 0.5)) * factors[option]
            state.observe(option, loss, dict.fromkeys(options, 1 / 3))
    allocation = allocate(state, BanditConfig(), np.random.default_rng(0))
    return allocation, {o: s.runs for o, s in state.options.items()}


def test_a_confident_allocation_proposes_the_experiment_that_fixes_the_best_option() -> None:
    allocation, runs = _learned(small_factor=0.7)
    proposal = tuning_proposal(
        doer="PRDWriter", policy_id="prd", version=3, artifact=ARTIFACT, phase="draft",
        parameter="router.model", allocation=allocation, runs=runs,
    )  # fmt: skip
    assert proposal is not None
    assert proposal.option == "model-c-small"
    assert proposal.experiment_type == "tool_tuning"
    assert proposal.artifact["fixed"] == {"draft": {"router.model": "model-c-small"}}
    assert "posterior probability" in proposal.hypothesis and "400 runs" in proposal.hypothesis
    assert proposal.evidence["parent"] == "prd@3"


def test_no_proposal_while_no_option_is_clearly_best() -> None:
    # Two equal options: at level 0.95 a confident verdict is a rare false positive.
    verdicts = [_learned(small_factor=1.0, seed=seed)[0].confident for seed in range(10)]
    assert sum(verdicts) <= 3, verdicts  # about 1 in 10 expected
    allocation, runs = _learned(small_factor=1.0, seed=verdicts.index(False))
    assert not allocation.confident
    proposal = tuning_proposal(
        doer="PRDWriter", policy_id="prd", version=3, artifact=ARTIFACT, phase="draft",
        parameter="router.model", allocation=allocation, runs=runs,
    )  # fmt: skip
    assert proposal is None
