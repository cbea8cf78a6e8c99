"""The bandit demo's doer: the small model is as good as the large one, and cheaper."""

from __future__ import annotations

import asyncio

import pytest

from agents.config import load_learning_config
from learning.bandit_book import BanditBook
from learning.crl import compute_crl, score_bundle
from learning.replay import ReplayTask
from learnops.client import Choice
from learnops.client.allocations import option_for, probes_for
from learnops.demo.bandit import DEMO_SEED
from learnops.demo.bandit_scenario import (
    LARGE,
    PARAMETER,
    PHASE,
    SMALL,
    DeclaredModelExecutor,
    TwoModelOrchestrator,
    control_artifact,
    declared_model,
)
from learnops.demo.experiments_scenario import SAMPLES, SEEDS
from models.bandit import BanditAllocations
from models.crl import CRLTerms
from models.events import RunCompleted
from models.tunables import tunables_of


def candidate_artifact() -> dict[str, object]:
    body = control_artifact()
    body.pop("tunables")
    return {**body, "fixed": {PHASE: {PARAMETER: SMALL}}}


def run(policy: dict[str, object], sample: str, seed: int) -> dict[str, object]:
    task = ReplayTask("t", "r", "p", "m", "s", seed, policy, sample)
    return asyncio.run(DeclaredModelExecutor().execute(task))


def test_a_policy_runs_the_model_it_fixes_or_its_first_option() -> None:
    assert declared_model(control_artifact()) == LARGE
    assert declared_model(candidate_artifact()) == SMALL


def test_the_sandbox_gives_the_small_model_the_same_quality_and_a_lower_loss() -> None:
    control, candidate = [], []
    for sample in SAMPLES:
        for seed in SEEDS:
            large = run(control_artifact(), sample, seed)
            small = run(candidate_artifact(), sample, seed)
            terms = {k: v for k, v in large["terms"].items() if k != "cost_over_budget_pct"}  # type: ignore[attr-defined]
            assert terms == {
                k: v
                for k, v in small["terms"].items()  # type: ignore[attr-defined]
                if k != "cost_over_budget_pct"
            }
            assert small["measurements"]["cost_usd"] < large["measurements"]["cost_usd"]  # type: ignore[index]
            control.append(compute_crl(CRLTerms(**large["terms"])).loss)  # type: ignore[arg-type]
            candidate.append(compute_crl(CRLTerms(**small["terms"])).loss)  # type: ignore[arg-type]
    assert all(s <= c for s, c in zip(candidate, control, strict=True))
    assert sum(control) - sum(candidate) > 0.2 * len(control)


def test_bundles_name_the_chosen_model_and_a_fixed_version_runs_its_own() -> None:
    chosen = [None, Choice(SMALL, 4), Choice(LARGE, 5)]

    def choose(doer: str, run_id: str) -> Choice | None:
        return chosen.pop(0) if chosen else None

    def orchestrator() -> TwoModelOrchestrator:
        return TwoModelOrchestrator(choose, {2: SMALL}, seed=1, doers=("D",), run_prefix="d")

    first = orchestrator()
    runs = [first.bundle("D", policy=("d", 1)) for _ in range(3)]
    assert [r.options for r in runs] == [{PARAMETER: LARGE}, {PARAMETER: SMALL}, {PARAMETER: LARGE}]
    # With the allocation that chose it; the default model was chosen by none.
    assert [r.allocation_sequences for r in runs] == [{}, {PARAMETER: 4}, {PARAMETER: 5}]
    assert first.probe(runs[1], LARGE).allocation_sequences == {PARAMETER: 4}
    assert all(r.phase == PHASE for r in runs)
    fixed = orchestrator().bundle("D", policy=("d", 2))
    again = orchestrator().bundle("D", policy=("d", 1))  # the same draws, the default model
    assert not fixed.options and fixed.model == SMALL
    assert RunCompleted.from_json(fixed.to_json()) == fixed  # what the CRL stage decodes
    assert fixed.gates == again.gates and fixed.qav == again.qav
    assert fixed.costs is not None and again.costs is not None
    assert fixed.costs.spent * 2 == pytest.approx(again.costs.spent)


def test_the_demos_follow_unsigned_changes_when_the_worker_signs_none() -> None:
    """A worker without LEARNOPS_WORKER_SIGNING_KEY_FILE publishes unsigned changes: the
    demo's Router follows them (it was refused at construction: a traceback)."""
    from agents.settings import Settings
    from learnops.demo.experiments_scenario import demo_router

    settings = Settings(_env_file=None, learnops_worker_signing_key_file=None)
    router = asyncio.run(demo_router(settings, None))
    assert router._keys is None  # unpinned, by the demo's choice


def rounds_to_confident(stamp: int, batch: int, rounds: int = 30) -> int | None:
    """The demo's learn loop without services: rounds of 100 runs, each routed by the shares
    of the allocation in force at the round's start, probes as asked, folded as the stage
    folds them, which reallocates what is due (every ``bandit.every`` runs) at the end of
    each ``batch`` of results; the round the small model's request came in, or None."""
    config = load_learning_config()
    bandit = config.bandit
    tunables = tunables_of(control_artifact())
    book = BanditBook()
    doer = f"BanditDemo{stamp}"  # as `learnops demo bandit` names them
    held: list[BanditAllocations] = []

    def choose(_doer: str, run_id: str) -> Choice | None:
        if not held:
            return None
        sequence = held[-1].allocations[0].sequence
        return Choice(option_for(held[-1], PHASE, PARAMETER, run_id), sequence)

    orchestrator = TwoModelOrchestrator(
        choose, {}, seed=DEMO_SEED, doers=(doer,), run_prefix=f"bandit-{stamp}"
    )
    for round_ in range(rounds):
        runs = []
        for _ in range(100):  # each task's probes right after its live run, as the demo does
            routed = orchestrator.bundle(doer, policy=(doer.lower(), 1))
            runs.append(routed)
            if held:
                probed = probes_for(held[-1], PHASE, PARAMETER, routed.run_id)
                runs.extend(orchestrator.probe(routed, option) for option in probed)
        for start in range(0, len(runs), batch):
            for bundle in runs[start : start + batch]:
                result = score_bundle(bundle, config.weights, config.objectives)
                assert book.fold(result, tunables, bandit.bandit, bandit.probe_share) is None
            due = book.due(bandit.every)
            allocations = [
                book.reallocate(key, bandit.bandit, bandit.seed, bandit.probe_share) for key in due
            ]
            if due or not held:
                held.append(book.event(doer))
            if any(a.confident and a.best == SMALL for a in allocations):
                return round_
    return None


@pytest.mark.parametrize(
    ("stamp", "batch"),
    [(1765000000, 1), (1765007919, 1000), (1796563458, 1), (1796563458, 1000)],
)
def test_the_demo_learns_the_small_model_within_its_rounds(stamp: int, batch: int) -> None:
    # The demo's loop offline, with the stage reallocating after each result or after each
    # whole round (as the live stage often batches them); the request must be the small
    # model's. Until 2026-12-06 about one demo time in a hundred kept the small model on the
    # floor for good (an early event of it there); it now leaves once its probes show it no
    # worse: over 400 demo times the request came at round 10 (median), 48 at the latest.
    found = rounds_to_confident(stamp, batch)
    assert found is not None and found <= 20, found
