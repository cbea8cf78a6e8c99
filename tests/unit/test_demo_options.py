"""`learnops demo traffic --option-cost`: runs naming their option, probes of their own."""

from __future__ import annotations

import pytest

from learnops.demo.options import latest_allocations, parse_option_costs, with_options
from learnops.simulation.orchestrator import Orchestrator
from models.tunables import Tunables

TUNABLES = Tunables({"draft": {"router.model": ["large", "small"], "rag.top_k": ["4", "8"]}})


@pytest.mark.parametrize(
    ("texts", "said"),
    [
        (["router.model=small"], "is not PARAMETER=OPTION:FACTOR"),
        (["router.temp=small:0.5"], "p@1 leaves no 'router.temp' open"),
        (["router.model=tiny:0.5"], "'tiny' is not an option of router.model (large, small)"),
        (["router.model=small:x"], "the factor 'x' is not a number"),
        (["router.model=small:0"], "the factor 0 is not in (0, 100)"),
        (["router.model=small:0.5", "rag.top_k=8:2"], "name options of one parameter"),
    ],
)
def test_a_cost_that_names_no_declared_option_is_refused_saying_why(
    texts: list[str], said: str
) -> None:
    with pytest.raises(ValueError) as err:
        parse_option_costs(texts, TUNABLES, "p@1")
    assert said in str(err.value)
    with pytest.raises(ValueError, match="declares no tunables"):
        parse_option_costs(["a=b:1"], Tunables({}), "p@1")


def test_before_an_allocation_runs_name_the_default_and_then_its_picks_and_probes() -> None:
    costs = parse_option_costs(["router.model=small:0.5"], TUNABLES, "p@1")
    run = Orchestrator(seed=3).bundle("PRDWriter", policy=("p", 1))
    (default,) = with_options(run, costs, None)
    assert (default.options, default.allocation_sequences, default.phase) == (
        {"router.model": "large"},
        {},
        "draft",
    )
    assert default.event_id == run.event_id and default.costs == run.costs
    allocations = latest_allocations(
        [
            {  # a row of v_bandit_in_force (storage.dashboard.bandits_in_force)
                "doer": "PRDWriter",
                "doer_sequence": 4,
                "frozen": False,
                "phase": "draft",
                "parameter": "router.model",
                "policy_id": "p",
                "policy_version": 1,
                "shares": {"large": 0.0, "small": 1.0},
                "sequence": 4,
                "runs": 0,
                "probes": ["large"],
                "probe_share": 1.0,
            }
        ]
    )
    routed, probe = with_options(run, costs, allocations)
    assert routed.options == {"router.model": "small"} and not routed.shadow
    assert routed.allocation_sequences == {"router.model": 4}
    assert routed.costs is not None and run.costs is not None
    assert routed.costs.spent == pytest.approx(run.costs.spent * 0.5)
    assert (
        probe.shadow and probe.deployment_id is None and probe.options == {"router.model": "large"}
    )
    assert probe.run_id == f"{run.run_id}-probe-large" and probe.event_id != run.event_id
    other = Orchestrator(seed=3).bundle("PRDWriter", policy=("p", 2))  # another version's
    assert with_options(other, costs, allocations)[0].options == {"router.model": "large"}
