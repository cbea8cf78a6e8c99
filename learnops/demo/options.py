"""`learnops demo traffic --option-cost`: runs that name the option each used, for the bandit.

A doer whose active policy leaves a parameter open (``"tunables"``) is tuned by
the bandit stage only from runs that name the option they used
(``RunCompleted.options``). The simulated orchestrator's bundles name none, so
this picks each run's option as an orchestrator would (the doer's latest
allocation, as the bandit stage stored it when it sent it; the policy's first
option before there is one), names it with the allocation's sequence, scales the
run's cost by the option's factor, and adds the probes the allocation asks for
(shadow runs of the options on probation), as `learnops demo bandit` does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from learnops.client.allocations import option_for, probes_for
from models.bandit import BanditAllocations
from models.bundle import RunCompleted
from models.tunables import Tunables


@dataclass(frozen=True)
class OptionCosts:
    """One open parameter of the active policy and what each of its options costs."""

    phase: str
    parameter: str
    options: tuple[str, ...]  # as the policy declares them; the first is its default
    factors: Mapping[str, float]  # option → cost factor (1 for an option not given)

    def factor(self, option: str) -> float:
        return self.factors.get(option, 1.0)


def parse_option_costs(texts: Sequence[str], tunables: Tunables, policy: str) -> OptionCosts:
    """``PARAMETER=OPTION:FACTOR`` (each a declared option of one open parameter) as costs.

    Raises ``ValueError`` naming the text and what the policy declares.
    """
    open_ = {
        parameter: (phase, options)
        for phase, parameters in tunables.root.items()
        for parameter, options in parameters.items()
    }
    if not open_:
        raise ValueError(f"{policy} declares no tunables: no option to name")
    factors: dict[str, dict[str, float]] = {}
    for text in texts:
        parameter, equals, rest = text.partition("=")
        option, colon, number = rest.rpartition(":")
        if not (equals and colon and parameter and option):
            raise ValueError(f"{text!r} is not PARAMETER=OPTION:FACTOR (router.model=small:0.5)")
        if parameter not in open_:
            raise ValueError(
                f"{policy} leaves no {parameter!r} open (it leaves {', '.join(sorted(open_))})"
            )
        if option not in open_[parameter][1]:
            declared = ", ".join(open_[parameter][1])
            raise ValueError(f"{option!r} is not an option of {parameter} ({declared})")
        try:
            factor = float(number)
        except ValueError:
            raise ValueError(f"{text!r}: the factor {number!r} is not a number") from None
        if not 0 < factor < 100:
            raise ValueError(f"{text!r}: the factor {factor:g} is not in (0, 100)")
        factors.setdefault(parameter, {})[option] = factor
    if len(factors) != 1:
        raise ValueError(
            f"name options of one parameter (a probe names one): {', '.join(sorted(factors))}"
        )
    ((parameter, costs),) = factors.items()
    phase, options = open_[parameter]
    return OptionCosts(phase, parameter, tuple(options), costs)


def latest_allocations(rows: Sequence[Mapping[str, Any]]) -> BanditAllocations | None:
    """The doer's allocations record in force, from its rows of ``v_bandit_in_force``
    (``storage.dashboard.bandits_in_force``: one per phase and parameter), or None."""
    if not rows:
        return None
    fields = ("phase", "parameter", "policy_id", "policy_version", "shares", "sequence", "runs")
    return BanditAllocations.model_validate(
        {
            "doer": rows[0]["doer"],
            "sequence": rows[0]["doer_sequence"],
            "frozen": rows[0]["frozen"],
            "allocations": [
                {
                    **{name: row[name] for name in fields},
                    "probes": row["probes"],
                    "probe_share": row["probe_share"],
                }
                for row in rows
            ],
        }
    )


def with_options(
    run: RunCompleted, costs: OptionCosts, allocations: BanditAllocations | None
) -> list[RunCompleted]:
    """The routed run naming its option (at its cost), then a shadow probe per option asked.

    The run's id stands for the task (the routing bucket), as in `learnops demo bandit`.
    """
    found = None if allocations is None else allocations.allocation(costs.phase, costs.parameter)
    current = found is not None and (found.policy_id, found.policy_version) == (
        run.policy_id,
        run.policy_version,
    )
    option, sequences = costs.options[0], {}
    probes: Iterable[str] = ()
    if current and allocations is not None and found is not None:
        option = option_for(allocations, costs.phase, costs.parameter, run.run_id)
        sequences = {costs.parameter: found.sequence}
        probes = probes_for(allocations, costs.phase, costs.parameter, run.run_id)
    routed = _named(run, costs, option, sequences)
    return [routed] + [
        _named(
            run,
            costs,
            probe,
            sequences,
            run_id=f"{run.run_id}-probe-{probe}",
            # An event of its own: the stages claim events by id, a copy's would be a duplicate.
            event_id=uuid.uuid5(run.event_id, f"probe/{probe}"),
            shadow=True,
            deployment_id=None,
            arm=None,
        )
        for probe in probes
    ]


def _named(
    run: RunCompleted,
    costs: OptionCosts,
    option: str,
    sequences: Mapping[str, int],
    **update: Any,
) -> RunCompleted:
    if run.costs is not None:
        factor = costs.factor(option)
        update["costs"] = run.costs.model_copy(update={"spent": run.costs.spent * factor})
    return RunCompleted.model_validate(
        {
            **run.model_dump(),
            **update,
            "phase": costs.phase,
            "options": {costs.parameter: option},
            "allocation_sequences": dict(sequences),
        }
    )
