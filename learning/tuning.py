"""The experiment the bandit files when one option is best: a candidate policy that fixes it.

When :func:`learning.bandit.allocate` finds one option of a parameter best
with posterior probability at or above the configured level and enough runs
(``Allocation.confident``), the bandit proposes a policy of its own: the
active policy's artifact with that parameter moved from ``"tunables"`` to
``"fixed"`` (``models.tunables``). The proposal goes through the same path as
any candidate (replay → shadow → canary → promotion); its id is derived from
what it fixes, so proposing it again is the same experiment.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from learning.bandit import Allocation
from models.commands import ExperimentType
from models.ids import tuning_experiment_id
from models.tunables import FIXED_KEY, TUNABLES_KEY, tunables_of

# Parameters of retrieval are tuned by "rag_optimization"; tools and routing by "tool_tuning".
RAG_PREFIXES = ("rag.", "retrieval.")


def experiment_type(parameter: str) -> ExperimentType:
    """The experiment type that tunes ``parameter``: retrieval or tools and routing."""
    return "rag_optimization" if parameter.startswith(RAG_PREFIXES) else "tool_tuning"


def fixing_artifact(
    artifact: Mapping[str, Any], phase: str, parameter: str, option: str
) -> dict[str, Any]:
    """A copy of ``artifact`` in which ``parameter`` of ``phase`` is fixed to ``option``.

    The parameter leaves ``"tunables"`` (a phase with nothing left open, and an
    empty ``"tunables"``, are dropped) and is set under ``"fixed"``. Raises
    ``ValueError`` when the artifact does not declare that option.
    """
    tunables = tunables_of(artifact)
    declared = tunables.options(phase, parameter)
    if declared is None or option not in declared:
        raise ValueError(
            f"the policy does not declare option {option!r} of {parameter!r} in phase {phase!r}"
        )
    fixed_before = artifact.get(FIXED_KEY, {})
    if not isinstance(fixed_before, Mapping):
        raise ValueError(f"policy {FIXED_KEY} is not an object")
    candidate = copy.deepcopy(dict(artifact))
    left = {
        p: {
            name: list(options)
            for name, options in params.items()
            if (p, name) != (phase, parameter)
        }
        for p, params in tunables.root.items()
    }
    left = {p: params for p, params in left.items() if params}
    if left:
        candidate[TUNABLES_KEY] = left
    else:
        candidate.pop(TUNABLES_KEY, None)
    fixed = {p: dict(v) for p, v in copy.deepcopy(dict(fixed_before)).items()}
    fixed.setdefault(phase, {})[parameter] = option
    candidate[FIXED_KEY] = fixed
    return candidate


@dataclass(frozen=True)
class TuningProposal:
    """What the bandit files: the experiment id, type and hypothesis, and the candidate."""

    experiment_id: str
    experiment_type: ExperimentType
    phase: str
    parameter: str
    option: str
    hypothesis: str
    evidence: dict[str, Any]
    artifact: dict[str, Any]


def tuning_proposal(
    *,
    doer: str,
    policy_id: str,
    version: int,
    artifact: Mapping[str, Any],
    phase: str,
    parameter: str,
    allocation: Allocation,
    runs: Mapping[str, int],
) -> TuningProposal | None:
    """The experiment fixing the best option, when the allocation is confident; else None."""
    if not allocation.confident or allocation.best is None:
        return None
    option = allocation.best
    p_best = allocation.p_best[option]
    return TuningProposal(
        experiment_id=tuning_experiment_id(doer, policy_id, version, phase, parameter, option),
        experiment_type=experiment_type(parameter),
        phase=phase,
        parameter=parameter,
        option=option,
        hypothesis=(
            f"{parameter} = {option} in phase {phase} lowers {doer}'s CRL: it is the best of "
            f"{len(allocation.p_best)} options with posterior probability {p_best:.3f} after "
            f"{runs.get(option, 0)} runs"
        ),
        evidence={
            "p_best": dict(allocation.p_best),
            "runs": dict(runs),
            "excluded": dict(allocation.excluded),
            "parent": f"{policy_id}@{version}",
        },
        artifact=fixing_artifact(artifact, phase, parameter, option),
    )
