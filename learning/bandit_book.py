"""One doer's bandits: what the bandit stage keeps in its table value, and how a run folds in.

The value is one per doer (one changelog record holds everything that must
change together): per phase and parameter of the active policy, its
:class:`learning.bandit.BanditState`, the shares in force and the sequence
number of the last allocation published, with the few allocations before it
(a run's guardrail events are tested at the shares of the allocation that
routed it, ``RunCompleted.allocation_sequences``); and whether an operator froze
the doer's allocations, with the last freeze or unfreeze applied (to refuse
older ones).

A scored run folds in when it is live and served by the active policy
(:func:`counts`): replays, shadow runs and a canary's candidate runs never
move the bandit, whose options are the active policy's. A bandit probe (a
shadow run without a deployment, :func:`probes`) folds in its guardrail
events only, toward the probation of the option it ran. A run of a new
policy version starts that version's bandits afresh (its declared options may
differ). A run naming an option its policy does not declare is refused with
the reason (``models.tunables.undeclared_options``), for the DLQ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import numpy as np

from learning.bandit import Allocation, BanditConfig, BanditState, allocate
from models.bandit import BanditAllocations, ParameterAllocation
from models.events import CRLComputed
from models.tunables import Tunables, undeclared_options


@dataclass(frozen=True)
class BookConfig:
    """How the bandit stage keeps its books (``bandit:`` in learning.yaml).

    ``every`` — runs of a parameter between two allocations; ``seed`` — mixed
    with each allocation's sequence number into its generator; ``probe_share``
    — the share of tasks on which the orchestrator is asked to also run each
    option on probation in shadow (0: never asked); ``bandit`` — the
    statistics' settings (:class:`learning.bandit.BanditConfig`).
    """

    every: int = 100
    seed: int = 20
    probe_share: float = 0.0
    bandit: BanditConfig = field(default_factory=BanditConfig)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"bandit.every {self.every} is below 1")
        if not 0.0 <= self.probe_share <= 1.0:
            raise ValueError(f"bandit.probe_share {self.probe_share} is not in [0, 1]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BookConfig:
        """Build from the YAML mapping; an unknown key is an error naming it."""
        own = {"every", "seed", "probe_share"}
        known = own | {f.name for f in fields(BanditConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"bandit: unknown setting(s) {', '.join(unknown)}")
        statistics = {k: v for k, v in data.items() if k not in own}
        if "guardrail_metrics" in statistics:
            statistics["guardrail_metrics"] = tuple(statistics["guardrail_metrics"])
        return cls(
            every=int(data.get("every", cls.every)),
            seed=int(data.get("seed", cls.seed)),
            probe_share=float(data.get("probe_share", cls.probe_share)),
            bandit=BanditConfig(**statistics),
        )


def counts(result: CRLComputed) -> bool:
    """Whether a scored run moves the bandit: live, and served by the active policy."""
    return result.replay_id is None and not result.shadow and result.arm != "candidate"


def probes(result: CRLComputed) -> bool:
    """Whether a scored run is a bandit probe: a shadow run of no deployment, naming options."""
    return (
        result.shadow
        and result.deployment_id is None
        and result.replay_id is None
        and bool(result.options)
    )


def parameter_key(phase: str, parameter: str) -> str:
    """The key of one bandit in a doer's book."""
    return f"{phase}/{parameter}"


#: How many allocations before the one in force a bandit keeps, for the runs routed under
#: them whose results arrive after a reallocation (``RunCompleted.allocation_sequences``).
KEPT_ALLOCATIONS = 8


@dataclass(frozen=True)
class InForce:
    """What an allocation put in force: the shares, and the probes it asked for on what share."""

    shares: dict[str, float]
    probes: list[str]
    probe_share: float

    def to_list(self, sequence: int) -> list[Any]:
        """JSON-ready form under the allocation's sequence."""
        return [sequence, dict(self.shares), list(self.probes), self.probe_share]


@dataclass
class ParameterBandit:
    """The bandit of one phase and parameter of one policy version."""

    policy_id: str
    version: int
    state: BanditState
    shares: dict[str, float]
    sequence: int = 0
    runs_since_published: int = 0
    probes: list[str] = field(default_factory=list)  # options asked to be probed
    probe_share: float = 0.0
    # The last KEPT_ALLOCATIONS allocations before the one in force, by sequence.
    earlier: dict[int, InForce] = field(default_factory=dict)

    def routed_under(self, sequence: int | None) -> InForce:
        """What was in force when a run was routed by the allocation numbered ``sequence``.

        The allocation in force when the run names none (an orchestrator that
        does not report it, or the policy's default chosen without one), or one
        older than the kept allocations.
        """
        if sequence is not None and sequence in self.earlier:
            return self.earlier[sequence]
        return InForce(self.shares, self.probes, self.probe_share)

    def put_in_force(
        self, shares: Mapping[str, float], probes: list[str], probe_share: float
    ) -> None:
        """Number a new allocation and put it in force, keeping the one before it."""
        self.earlier[self.sequence] = InForce(
            dict(self.shares), list(self.probes), self.probe_share
        )
        for old in sorted(self.earlier)[:-KEPT_ALLOCATIONS]:
            del self.earlier[old]
        self.shares = dict(shares)
        self.probes = probes
        self.probe_share = probe_share
        self.sequence += 1
        self.runs_since_published = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for a table value."""
        return {
            "policy_id": self.policy_id,
            "version": self.version,
            "state": self.state.to_dict(),
            "shares": dict(self.shares),
            "sequence": self.sequence,
            "runs_since_published": self.runs_since_published,
            "probes": list(self.probes),
            "probe_share": self.probe_share,
            "earlier": [kept.to_list(seq) for seq, kept in sorted(self.earlier.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParameterBandit:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            policy_id=str(data["policy_id"]),
            version=int(data["version"]),
            state=BanditState.from_dict(data["state"]),
            shares={o: float(s) for o, s in data["shares"].items()},
            sequence=int(data["sequence"]),
            runs_since_published=int(data["runs_since_published"]),
            probes=[str(o) for o in data.get("probes") or []],
            probe_share=float(data.get("probe_share", 0.0)),
            earlier={
                int(seq): InForce(
                    {o: float(v) for o, v in shares.items()},
                    [str(o) for o in probes],
                    float(share),
                )
                for seq, shares, probes, share in data.get("earlier") or []
            },
        )


@dataclass
class BanditBook:
    """Every bandit of one doer, and whether its allocations are frozen."""

    bandits: dict[str, ParameterBandit] = field(default_factory=dict)
    frozen: bool = False
    # The last freeze or unfreeze applied: (issued_at as ISO 8601, event id).
    control: tuple[str, str] | None = None
    # The policy version whose runs the book follows (the last one a run started);
    # bandits of another version are kept for their sequence numbers, never published.
    policy: tuple[str, int] | None = None

    def follows(self, result: CRLComputed) -> bool:
        """Whether the run is of the version the book follows (no bandit would start afresh)."""
        return self.policy == (result.policy_id, result.policy_version) and all(
            parameter_key(result.phase, parameter) in self.bandits for parameter in result.options
        )

    def take_control(self, frozen: bool, issued_at: datetime, event_id: str) -> str | None:
        """Apply a verified freeze or unfreeze; the reason it is refused, or None.

        Controls apply in the order they were issued: one issued before the last
        applied is a replay (an old unfreeze must not undo a newer freeze) and is
        refused. The last one again is a redelivery and changes nothing. The
        order lives in this value, so it is written with the freeze it guards.
        """
        mark = (issued_at.isoformat(), event_id)
        if self.control is not None and self.control[1] != event_id:
            last_issued, last_id = datetime.fromisoformat(self.control[0]), self.control[1]
            if (issued_at, event_id) <= (last_issued, last_id):
                return (
                    f"replayed: issued at {mark[0]}, not after the control {last_id} "
                    f"applied last (issued at {self.control[0]})"
                )
        self.control = mark
        self.frozen = frozen
        return None

    def fold(
        self,
        result: CRLComputed,
        tunables: Tunables,
        config: BanditConfig,
        probe_share: float = 0.0,
    ) -> str | None:
        """Fold one scored run of the doer in; the reason it is refused, or None.

        ``tunables`` are those of the run's policy version; the caller folds a
        run of a version the book does not follow (:meth:`follows`) only if that
        version is the doer's active policy (agents/bandit.py). A probe
        (:func:`probes`) counts its guardrail events toward the probation of
        the one option it names, and nothing else, if the bandit of that policy
        version asks for it (a late probe, of another version or of an option
        no longer asked for, changes nothing); other runs that do not
        :func:`count`, and runs that name no option, change nothing.
        ``probe_share`` is what a bandit started by this run asks for its
        options on probation (:meth:`reallocate`).
        """
        probe = probes(result)
        if not (counts(result) or probe) or not result.options:
            return None
        reason = undeclared_options(result.options, result.phase, tunables)
        if reason is not None:
            return reason
        events = {
            "security_criticals": result.terms.security_criticals,
            "api_breakages": result.terms.api_breakages,
        }
        routed = result.allocation_sequences
        if probe:
            ((parameter, option),) = result.options.items()  # a probe names exactly one
            asked = self.bandits.get(parameter_key(result.phase, parameter))
            if asked is None or (asked.policy_id, asked.version) != (
                result.policy_id,
                result.policy_version,
            ):
                return None
            then = asked.routed_under(routed.get(parameter))
            if option in then.probes:
                asked.state.observe_probe(option, events, then.shares, then.probe_share, config)
            return None
        self.policy = (result.policy_id, result.policy_version)
        for parameter, option in sorted(result.options.items()):
            bandit = self._bandit(result, parameter, tunables, config, probe_share)
            then = bandit.routed_under(routed.get(parameter))
            bandit.state.observe(
                option,
                result.loss,
                then.shares,
                events=events,
                config=config,
                probe_share=then.probe_share,
                probing=then.probes,
                counted=routed.get(parameter) is not None,
            )
            bandit.runs_since_published += 1
        return None

    def _bandit(
        self,
        result: CRLComputed,
        parameter: str,
        tunables: Tunables,
        config: BanditConfig,
        probe_share: float,
    ) -> ParameterBandit:
        """The run's bandit, started afresh for a policy version not seen before.

        A fresh bandit's shares in force are the allocation rule's with no runs
        yet: the baseline (the policy's default) gets what the floors leave, the
        other options sit at the floor on probation, as a first reallocation
        would put them, and with a ``probe_share`` it asks for their probes.
        When the new version declares the same options as the old one, each
        option's guardrail and probe tests carry over (an option held at the
        floor for its security criticals stays held); the loss
        statistics and the releases from probation start again, since the new
        version changes what the options are run with.
        """
        key = parameter_key(result.phase, parameter)
        bandit = self.bandits.get(key)
        if bandit is None or (bandit.policy_id, bandit.version) != (
            result.policy_id,
            result.policy_version,
        ):
            options = tunables.options(result.phase, parameter) or []
            state = BanditState.for_options(options)
            if bandit is not None and list(bandit.state.options) == list(options):
                for name, before in bandit.state.options.items():
                    after = state.options[name]
                    after.guardrails = before.guardrails
                    after.probe_tests = before.probe_tests
                    # Probed again from none, and shown no worse afresh (its no-harm
                    # tests start empty): a "cleared" of the old version would
                    # otherwise release the option at the new version's first run.
                    after.probe_runs = 0
            # Sequences only go up per key: a new version's start is numbered after the
            # old version's last allocation, so neither can pass for the other.
            sequence = bandit.sequence + 1 if bandit else 0
            start = allocate(state, config, np.random.default_rng([0, sequence]))
            asked = list(start.probes) if probe_share > 0 else []
            bandit = ParameterBandit(
                policy_id=result.policy_id,
                version=result.policy_version,
                state=state,
                shares=dict(start.shares),
                sequence=sequence,
                probes=asked,
                probe_share=probe_share if asked else 0.0,
            )
            self.bandits[key] = bandit
        return bandit

    def due(self, every: int) -> list[str]:
        """Keys with at least ``every`` runs since their last allocation; none while frozen."""
        if self.frozen:
            return []
        return sorted(
            k
            for k, b in self.bandits.items()
            if b.runs_since_published >= every and self._current(b)
        )

    def _current(self, bandit: ParameterBandit) -> bool:
        """Whether a bandit is of the version the book follows (a book from before it: all are)."""
        return self.policy is None or (bandit.policy_id, bandit.version) == self.policy

    def reallocate(
        self, key: str, config: BanditConfig, seed: int, probe_share: float = 0.0
    ) -> Allocation:
        """Compute the key's next allocation, put it in force and number it.

        The generator is seeded from the key's sequence number and ``seed``, so
        recomputing after a crash gives the same allocation. With a
        ``probe_share``, the options the allocation would probe are asked for.
        """
        bandit = self.bandits[key]
        rng = np.random.default_rng([seed, bandit.sequence + 1])
        allocation = allocate(bandit.state, config, rng)
        asked = list(allocation.probes) if probe_share > 0 else []
        bandit.put_in_force(allocation.shares, asked, probe_share if asked else 0.0)
        return allocation

    def event(self, doer: str) -> BanditAllocations:
        """The doer's allocations in force, as published on learning.bandit-allocations."""
        allocations = []
        for key, bandit in sorted(self.bandits.items()):
            if not self._current(bandit):
                continue  # a parameter the version the book follows has not named (yet)
            phase, parameter = key.split("/", 1)
            allocations.append(
                ParameterAllocation(
                    phase=phase,
                    parameter=parameter,
                    policy_id=bandit.policy_id,
                    policy_version=bandit.version,
                    shares=bandit.shares,
                    sequence=bandit.sequence,
                    runs=sum(s.runs for s in bandit.state.options.values()),
                    probes=bandit.probes,
                    probe_share=bandit.probe_share,
                )
            )
        return BanditAllocations(
            doer=doer,
            # Over every bandit kept, published or not: the doer's sequence never goes down.
            sequence=sum(b.sequence for b in self.bandits.values()),
            frozen=self.frozen,
            allocations=allocations,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for a table value."""
        return {
            "bandits": {k: b.to_dict() for k, b in self.bandits.items()},
            "frozen": self.frozen,
            "control": list(self.control) if self.control is not None else None,
            "policy": list(self.policy) if self.policy is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BanditBook:
        """Rebuild from :meth:`to_dict` output (an empty mapping is an empty book)."""
        control = data.get("control")
        policy = data.get("policy")
        return cls(
            bandits={
                k: ParameterBandit.from_dict(b) for k, b in (data.get("bandits") or {}).items()
            },
            frozen=bool(data.get("frozen", False)),
            control=(str(control[0]), str(control[1])) if control else None,
            policy=(str(policy[0]), int(policy[1])) if policy else None,
        )
