"""The orchestrator's bandit client: follows learning.bandit-allocations, picks options locally.

Beside the :class:`~learnops.client.router.Router`, an orchestrator may keep one
:class:`Allocations`. It reads the compacted ``learning.bandit-allocations``
topic from the beginning (each doer's shares per phase and parameter, keyed by
doer) and keeps following it, so ``option(doer, phase, parameter, task_id)``
is a look-up and a hash: the task's bucket (``learning.routing.bucket``, salted
with the doer, phase and parameter, so it is independent of a canary's arm)
falls in one option's share. The same task id always gets the same option
under the same shares, so a replay of the routing agrees without talking.

    async with Allocations("kafka:9092", trusted_keys=workers) as allocations:
        route = router.route("PRDWriter", task_id)
        chosen = allocations.choice(
            "PRDWriter", "draft", "router.model", task_id, policy=(route.policy_id, route.version)
        )
        model = chosen.option if chosen else default_model

The orchestrator records the option in the bundle (``RunCompleted.options``)
and, when an allocation chose it, that allocation's sequence
(``RunCompleted.allocation_sequences``: ``{"router.model": chosen.sequence}``):
the bandit then tests the run's security criticals and API breakages at the
shares it was routed under, not at those in force when its result arrives,
which differ for runs in flight across a reallocation. ``option(...)`` is the
option alone, for an orchestrator that does not report the sequence.
With ``policy``, an allocation of another version than the routed one gives
None (the policy's default applies): after a promotion the bandit starts the
new version's bandits and publishes their shares at its first run, and until
then the held record is the old version's, whose options the new one may not
declare.

While options are on probation the allocation may ask for probes:
``probes(doer, phase, parameter, task_id, arm=route.arm)`` lists the options to
also run on this task in shadow, beside the routed one (each on ``probe_share``
of the tasks, by its own bucket). The orchestrator runs them, serves nothing
from them, and publishes each as a bundle of its own (its own run id) with
``shadow: true``, no deployment, and ``options`` naming only the probed
parameter and option: the bandit counts its security criticals and API
breakages toward that option's probation, and nothing else. Their test
compares them with the live runs of the same tasks, so only tasks whose live
run the bandit counts are probed: none routed to a canary's candidate arm
(pass the Router's arm; ``probes`` returns [] for ``"candidate"``). Publish
a task's probes right after its live run, with the live run's
``allocation_sequences``: the tests weigh a task's runs together, and an
option leaves the floor only once the probes its tasks asked for are in.

    for probed in allocations.probes("PRDWriter", "draft", "router.model", task_id, arm=arm):
        run_in_shadow(task, {"router.model": probed})  # published with shadow=True
Like the Router it needs only the contract, the routing rules and aiokafka.

With ``trusted_keys`` (the workers' public keys the orchestrator pins, as for
the Router) a record is taken only when its Kafka key is its doer, the
worker's signature verifies and its sequence does not go back; anything else
is counted in ``refused`` by kind and logged, and the doer keeps its last good
shares. Without pinned keys every valid record is taken.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from learning.routing import bucket
from learnops.client.follower import TopicFollower
from learnops.client.router import pinned_keyring

if TYPE_CHECKING:
    from learning.signing import PublicKey, TrustedKeys
    from models.bandit import BanditAllocations, ParameterAllocation

log = logging.getLogger("learnops.allocations")

ALLOCATIONS = "learning.bandit-allocations"


class Choice(NamedTuple):
    """The option an allocation gives a task, and that allocation's sequence number."""

    option: str
    sequence: int


def choose(shares: Mapping[str, float], point: float) -> str:
    """The option whose share, laid end to end in name order, holds ``point`` in [0, 1)."""
    if not shares:
        raise ValueError("no options to choose from")
    total = sum(shares.values())
    edge = 0.0
    names = sorted(shares)
    for name in names:
        edge += shares[name] / total
        if point < edge:
            return name
    return names[-1]  # point fell past the last edge by rounding


def option_for(allocations: BanditAllocations, phase: str, parameter: str, task_id: str) -> str:
    """The option a task gets under the doer's allocations; KeyError when none is published."""
    found = allocations.allocation(phase, parameter)
    if found is None:
        raise KeyError(f"{allocations.doer} has no allocation of {parameter} in {phase}")
    salt = f"bandit/{allocations.doer}/{phase}/{parameter}"
    return choose(found.shares, bucket(task_id, salt))


def probes_for(
    allocations: BanditAllocations,
    phase: str,
    parameter: str,
    task_id: str,
    arm: str | None = None,
) -> list[str]:
    """The options to probe on a task (each by its own bucket under ``probe_share``).

    None on a task routed to a canary's candidate ``arm``: its live run does not
    count for the bandit, so it cannot be the probes' comparison.
    """
    found = allocations.allocation(phase, parameter)
    if found is None or found.probe_share <= 0 or arm == "candidate":
        return []
    salt = f"bandit-probe/{allocations.doer}/{phase}/{parameter}"
    return [o for o in found.probes if bucket(task_id, f"{salt}/{o}") < found.probe_share]


class Allocations(TopicFollower):
    """Each doer's latest bandit allocations, kept up to date in the background."""

    topic = ALLOCATIONS

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        trusted_keys: TrustedKeys | Iterable[PublicKey] | None = None,
        allow_unverified: bool = False,
        **client_options: Any,
    ) -> None:
        """Follow the cluster at ``bootstrap_servers``; ``client_options`` go to aiokafka.

        ``trusted_keys`` pins the worker keys whose signatures are accepted, and
        is required: unpinned, anyone who can write the topic would steer the
        tasks. ``allow_unverified=True`` takes every valid record (and logs that
        once at start), for a test bench only.
        """
        if trusted_keys is None and not allow_unverified:
            raise ValueError(
                "Allocations needs trusted_keys: the public keys of the learnops workers "
                "that sign the allocations; pass allow_unverified=True only where unsigned "
                "allocations may be followed (docs/security.md)"
            )
        super().__init__(bootstrap_servers, **client_options)
        self._keys = pinned_keyring(trusted_keys)
        if self._keys is None:
            log.warning("allocations_unpinned: records are taken without checking a signature")
        self._latest: dict[str, BanditAllocations] = {}
        self.skipped = 0  # records that were not valid BanditAllocations
        self.refused: Counter[str] = Counter()  # records refused by the pinned keys, by kind

    def apply(self, value: bytes, key: bytes | None = None) -> BanditAllocations | None:
        """Take one record (its value and Kafka key); the allocations taken, or None.

        An older sequence than the one held is ignored (refused, with pinned
        keys), a record that is not valid is counted in ``skipped``.
        """
        from pydantic import ValidationError

        from models.bandit import BanditAllocations

        try:
            allocations = BanditAllocations.from_json(value)
        except ValidationError as exc:
            self.skipped += 1
            log.warning("allocations_skipped_record error_count=%d", exc.error_count())
            return None
        held = self._latest.get(allocations.doer)
        stale = held is not None and held.sequence > allocations.sequence
        if self._keys is not None:
            refusal = check_allocations(allocations, key, self._keys, stale=stale)
            if refusal is not None:
                kind, reason = refusal
                self.refused[kind] += 1
                log.warning(
                    "allocations_refused doer=%s refusal=%s reason=%r",
                    allocations.doer,
                    kind,
                    reason,
                )
                return None
        if stale:
            return None
        self._latest[allocations.doer] = allocations
        return allocations

    def latest(self, doer: str) -> BanditAllocations | None:
        """The doer's latest allocations, or None."""
        return self._latest.get(doer)

    def choice(
        self,
        doer: str,
        phase: str,
        parameter: str,
        task_id: str,
        *,
        policy: tuple[str, int] | None = None,
    ) -> Choice | None:
        """The option for the task by its share, with the allocation's sequence; None without one.

        ``policy`` is the (policy id, version) the task is routed under: an
        allocation of another version (the one before a promotion, until the
        bandit publishes the new one's) gives None, and the policy's default
        applies, instead of options the routed version may not declare. Put
        the sequence in the bundle's ``allocation_sequences`` under ``parameter``.
        """
        found = self._routed(doer, phase, parameter, policy)
        if found is None:
            return None
        allocations, allocation = found
        return Choice(option_for(allocations, phase, parameter, task_id), allocation.sequence)

    def option(
        self,
        doer: str,
        phase: str,
        parameter: str,
        task_id: str,
        *,
        policy: tuple[str, int] | None = None,
    ) -> str | None:
        """The option of :meth:`choice` alone."""
        chosen = self.choice(doer, phase, parameter, task_id, policy=policy)
        return chosen.option if chosen else None

    def probes(
        self,
        doer: str,
        phase: str,
        parameter: str,
        task_id: str,
        *,
        arm: str | None = None,
        policy: tuple[str, int] | None = None,
    ) -> list[str]:
        """Options to also run on the task in shadow, as bandit probes; [] when none are asked.

        ``arm`` is the task's canary arm from the Router (None without a deployment):
        a task on the candidate arm is never probed. ``policy``: as for :meth:`option`.
        """
        found = self._routed(doer, phase, parameter, policy)
        if found is None:
            return []
        return probes_for(found[0], phase, parameter, task_id, arm)

    def _routed(
        self, doer: str, phase: str, parameter: str, policy: tuple[str, int] | None
    ) -> tuple[BanditAllocations, ParameterAllocation] | None:
        """The doer's allocations and the parameter's, if it is of the routed ``policy``."""
        allocations = self._latest.get(doer)
        if allocations is None:
            return None
        allocation = allocations.allocation(phase, parameter)
        if allocation is None or not _of_policy(allocation, policy):
            return None
        return allocations, allocation


def _of_policy(allocation: ParameterAllocation, policy: tuple[str, int] | None) -> bool:
    """Whether an allocation is of the routed (policy id, version); any, when not told."""
    return policy is None or (allocation.policy_id, allocation.policy_version) == policy


def check_allocations(
    allocations: BanditAllocations, key: bytes | None, keys: TrustedKeys, *, stale: bool
) -> tuple[str, str] | None:
    """Why a record of allocations is refused under pinned keys, as (kind, reason); None if not."""
    from learning.signing import BANDIT_ALLOCATIONS_KIND, verify_event

    if key is None or key.decode("utf-8", "replace") != allocations.doer:
        return "key", f"the record's key is not its doer {allocations.doer!r}"
    signed = verify_event(BANDIT_ALLOCATIONS_KIND, allocations.model_dump(mode="json"), keys)
    if not signed:
        return "signature", f"the allocations' signature is refused: {signed.reason}"
    if stale:
        return "sequence", f"sequence {allocations.sequence} goes back for {allocations.doer}"
    return None
