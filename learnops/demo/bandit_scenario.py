"""A doer with two models to choose from, the small one as good as the large one and cheaper.

Used by `learnops demo bandit`. The doer's policy declares ``router.model`` open
in its draft phase; the simulated orchestrator asks the bandit's
:class:`learnops.client.Allocations` which model each task uses and names it
in the bundle. Both models draw the same quality (gates, grounding,
contradictions, latency, incidents); only the cost differs, so the small
model's CRL is lower by its cost over budget (docs/crl.md: ``wc``).

The demo's sandbox (:class:`DeclaredModelExecutor`) replays a policy as
declared: the model it fixes, or the first option (the default) of a model it
leaves open, on the local executor's quality with that model's cost.
"""

from __future__ import annotations

from typing import Any

from learning.replay import ReplayTask, deterministic_output
from learnops.simulation.orchestrator import Orchestrator
from models.events import RunCompleted

PHASE = "draft"
PARAMETER = "router.model"
LARGE, SMALL = "model-a-large", "model-c-small"
#: What each model costs relative to the quality's cost draw (1.0 of budget is the limit).
COST = {LARGE: 1.4, SMALL: 0.7}
#: The policy's quality knob (learning.replay's executor and the simulated orchestrator).
QUALITY = 0.5
#: Every model's share of live runs and probes with a security critical, and with an API
#: breakage: an integration-heavy doer. The bandit's probes need some fifty events of each
#: to show the small model has fewer than twice the large one's (docs/bandits.md, *Probes*);
#: at the simulated orchestrator's 1.4 % and 2.6 % for this quality that took 2,500 runs.
INCIDENTS = 0.05


def control_artifact() -> dict[str, Any]:
    """Version 1: the doer's prompt, with the model left open between the large and the small."""
    return {
        "prompts": {"system": "Draft the PRD; cite every source."},
        "quality": QUALITY,
        "tunables": {PHASE: {PARAMETER: [LARGE, SMALL]}},
    }


def declared_model(policy: Any) -> str:
    """The model a policy runs its draft phase with: the one it fixes, else its first option."""
    fixed = (policy.get("fixed") or {}).get(PHASE, {})
    if PARAMETER in fixed:
        return str(fixed[PARAMETER])
    return str(policy["tunables"][PHASE][PARAMETER][0])


class DeclaredModelExecutor:
    """The sandbox: the local executor's result for the policy's quality, at its model's cost.

    The quality draws leave out the model declaration, so a task's gates,
    grounding and latency are the same whichever model runs it (the small
    model is as good); its cost is the draw times the model's factor.
    """

    async def execute(self, task: ReplayTask) -> dict[str, Any]:
        """The synthetic result of the task's policy on its sample with its seed."""
        policy = dict(task.policy)
        model = declared_model(policy)
        quality = {k: v for k, v in policy.items() if k not in ("tunables", "fixed")}
        output = deterministic_output(quality, task.sample, task.seed)
        measured = dict(output["measurements"])
        measured["cost_usd"] = round(measured["cost_usd"] * COST[model], 6)
        terms = dict(output["terms"])
        over = measured["cost_usd"] / measured["budget_usd"] - 1.0
        terms["cost_over_budget_pct"] = round(max(0.0, over), 6)
        return {**output, "measurements": measured, "terms": terms}


class TwoModelOrchestrator(Orchestrator):
    """Bundles of the doer whose draft phase runs the model the bandit (or the policy) picks.

    ``choose(doer, run_id)`` is the bandit's choice for a run of the version
    leaving the model open (``Allocations.choice``; None: the policy's default,
    the large one), named in the bundle with its allocation's sequence; a
    version fixing the model (``fixed``: version → model) runs that one.
    """

    def __init__(
        self, choose: Any, fixed: dict[int, str], incidents: float = INCIDENTS, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.choose = choose
        self.fixed = fixed
        self.incidents = incidents

    def bundle(self, doer: str | None = None, **kwargs: Any) -> RunCompleted:
        kwargs["phase"] = PHASE
        kwargs["quality"] = QUALITY
        run = super().bundle(doer, **kwargs)
        model = self.fixed.get(run.policy_version)
        update: dict[str, Any] = {}
        if model is None:  # the bundle names the option it used, and what chose it
            chosen = self.choose(run.doer, run.run_id)
            model = chosen.option if chosen else LARGE
            update["options"] = {PARAMETER: model}
            if chosen:
                update["allocation_sequences"] = {PARAMETER: chosen.sequence}
        assert run.costs is not None  # the simulated orchestrator always reports its cost
        update["costs"] = run.costs.model_copy(update={"spent": run.costs.spent * COST[model]})
        update.update(self._incidents(run))
        # Validated again: a bundle the schema refuses must fail here, not in the worker's DLQ.
        return RunCompleted.model_validate({**run.model_dump(), **update, "model": model})

    def _incidents(self, run: RunCompleted) -> dict[str, Any]:
        """The run's security criticals and API breakages, drawn at ``incidents`` for any model."""
        critical, breakage = self._rng.random(2) < self.incidents
        return {
            "security": run.security.model_copy(update={"criticals": int(critical)}),
            "api_breakages": int(breakage),
        }

    def probe(self, routed: RunCompleted, option: str) -> RunCompleted:
        """The bandit probe the allocation asked for: ``option`` run in shadow on the same task.

        A run of its own (its run id is the routed run's with ``-probe``), never
        served: ``shadow`` with no deployment, ``options`` naming the probed option.
        """
        run = super().bundle(
            routed.doer,
            occurred_at=routed.occurred_at,  # the same task, at the same time
            policy=(routed.policy_id, routed.policy_version),
            phase=PHASE,
            quality=QUALITY,
        )
        assert run.costs is not None
        return RunCompleted.model_validate(
            {
                **run.model_dump(),
                "run_id": f"{routed.run_id}-probe",
                "shadow": True,
                "options": {PARAMETER: option},
                # Asked for by the allocation the routed run was chosen under.
                "allocation_sequences": {
                    p: n for p, n in routed.allocation_sequences.items() if p == PARAMETER
                },
                "model": option,
                "costs": run.costs.model_copy(
                    update={"spent": run.costs.spent * COST[option]}
                ).model_dump(),
                **self._incidents(run),
            }
        )
