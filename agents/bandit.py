"""The bandit stage: learning.crl-computed → each doer's option statistics → allocations.

Per batch: decode → claim the live runs that name options (storage.claims) →
fold each owned run once into its doer's book (learning.bandit_book, one
Faust table value per doer with its source mark) → reallocate the parameters
that are due → write the book once → publish the doer's allocations on the
compacted learning.bandit-allocations topic, keyed by doer.

The options a run may name are those its policy version declares
(``"tunables"`` in the signed artifact, read from the policy store once per
version); a run naming another goes to the DLQ with the reason. Replays,
a deployment's shadow runs and canary candidate runs never fold in; a
bandit probe (a shadow run of no deployment that the allocation asked for)
folds in its guardrail events only, toward its option's probation. An operator's freeze
arrives on learning.bandit-controls (co-partitioned): a frozen book keeps
learning but publishes no new shares until it is unfrozen. A freeze or
unfreeze is a signed command (agents/command_auth.py): applied only when an
operator key holding the operator role on the doer signed it, in the order
they were issued (the book keeps the last), and recorded in
``applied_commands`` with its signer once the book is written.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from agents.command_auth import authorised, record_applied, refuse
from agents.stage import Stage
from agents.tables import folded_up_to, marked
from agents.tails import STALE_CHECK_S, Tails
from agents.triggers import raise_request
from learning.bandit import Allocation
from learning.bandit_book import BanditBook, BookConfig, counts, probes
from learning.command_signing import Verdict
from learning.signing import BANDIT_ALLOCATIONS_KIND, sign_event
from learning.skills import ExperimentTrigger
from learning.tuning import tuning_proposal
from models.bandit import BanditAllocations, BanditControl
from models.events import CRLComputed
from models.tunables import Tunables, tunables_of
from storage.bandit import expire_allocations, record_allocations
from storage.claims import Claim, owned_claims
from storage.experiments import get_experiment
from storage.policies import find_policy, live_at
from storage.pool import TRANSIENT_ERRORS, durably

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.bandit")

BATCH = 1000  # at most this many events per batch (agents/streams.py)
CLAIMS = "bandit"  # this stage's name in fold_claims
HISTORY = timedelta(days=30)  # stored allocations kept for the console (storage.bandit)


@dataclass(frozen=True)
class _Unusable:
    """Why a run's policy version gives the bandit nothing to go by: its DLQ type and reason."""

    error_type: str  # "unknown_policy": not in the store; "policy": its declaration is wrong
    reason: str


def _unknown_policy(policy_id: str, version: int) -> _Unusable:
    return _Unusable("unknown_policy", f"policy {policy_id}@{version} is not in the policy store")


@dataclass
class _Slot:
    """One doer's book as a batch changes it: its source mark and what to write and send."""

    book: BanditBook
    partition: int
    mark: int
    changed: bool = False
    publish: bool = False
    # Freezes and unfreezes applied in this batch, audited once the book is written.
    applied: list[tuple[BanditControl, Verdict]] = field(default_factory=list)


class BanditStage(Stage):
    """learning.crl-computed and learning.bandit-controls → books per doer → allocations."""

    name = "bandit"

    def __init__(self, app: LearnopsApp) -> None:
        super().__init__(app)
        self.books = self.table(
            "bandit-books",
            default=dict,
            help_="Each doer's bandits (learning.bandit_book.BanditBook) and source marks",
        )
        # A registered version's artifact never changes: it and its tunables are read once.
        self.declared: dict[tuple[str, int], tuple[dict[str, Any], Tunables | _Unusable]] = {}
        # The worker's key signs the allocations, as the policy stage signs policy changes.
        self.key = app.settings.worker_key()
        self._active: dict[str, tuple[str, int] | None] = {}

        async def bandit(stream: Any) -> None:
            """Fold each batch into the books, reallocate, write, publish; ack after all of it."""
            async for events in self.batches(stream, BATCH):
                async with self.guarded_batch(events):
                    await self.process(events)

        topics = self.topics
        # Its own output too: what compaction will keep last for each doer (reassert_stale).
        source = topics.source(
            topics.crl_computed, topics.bandit_controls, topics.bandit_allocations
        )
        app.agent(source, name=self.name)(bandit)
        # Claims matter while a duplicate could still arrive: the CRL topic keeps 30 days.
        self.expire_claims_every(CLAIMS, 3600.0, timedelta(days=31))
        self.every(3600.0, self.expire_history)
        # Each doer's last record read back on learning.bandit-allocations: compaction keeps
        # it, and an orchestrator's client that starts reads only that one, so a record
        # written there by anyone else (an older signed allocation sent again, with shares
        # from before an option was excluded, or a forged or empty one) would be what
        # starting clients route by; reassert_stale sends the allocations in force after it.
        self.tails = Tails(
            BanditAllocations,
            BANDIT_ALLOCATIONS_KIND,
            self.key,
        )
        self.every(STALE_CHECK_S, self.reassert_stale)
        # A doer's allocations reach the producer in their sequence's order: the batches
        # and the re-assert timer both send.
        self._sending = asyncio.Lock()

    async def process(self, events: list[Any]) -> None:
        """One batch: decode, claim its runs, take each into its doer's book, write and send."""
        allocations = self.topics.bandit_allocations.name
        for event in events:
            if event.message.topic == allocations:
                await self.tails.note(event)
        events = [e for e in events if e.message.topic != allocations]
        decoded: list[tuple[Any, CRLComputed | BanditControl]]
        decoded = await self.decode_each(events, self._decode)
        claims = [
            (item.run_id, event.message.partition, event.message.offset)
            for event, item in decoded
            if isinstance(item, CRLComputed)
        ]
        owned = await durably(
            partial(owned_claims, self.app.pool, CLAIMS, claims), what="fold_claims"
        )
        slots: dict[str, _Slot] = {}
        self._active = {}  # each doer's active policy, asked at most once a batch
        for event, item in decoded:
            async with self.guarded(event):
                await self._take(event, item, owned, slots)
        await self._flush(slots)

    async def _decode(self, event: Any) -> CRLComputed | BanditControl | None:
        """The control or the scored run; None when bad (dead-lettered) or not the bandit's."""
        if event.message.topic == self.topics.bandit_controls.name:
            return await self.decode(event, BanditControl)
        result = await self.decode(event, CRLComputed)
        if result is None or not (counts(result) or probes(result)) or not result.options:
            return None  # a replay, a deployment's shadow or candidate run, or no choice made
        return result

    def _slot(self, doer: str, partition: int, slots: dict[str, _Slot]) -> _Slot:
        self.partitions.seen(doer, partition)
        slot = slots.get(doer)
        if slot is None:
            stored = self.books[doer]
            slot = slots[doer] = _Slot(
                BanditBook.from_dict(stored or {}), partition, folded_up_to(stored, partition)
            )
        return slot

    async def _take(
        self,
        event: Any,
        item: CRLComputed | BanditControl,
        owned: set[Claim],
        slots: dict[str, _Slot],
    ) -> None:
        """Fold one owned run in (once: a run at or below the book's mark is in it already)."""
        partition, offset = event.message.partition, event.message.offset
        slot = self._slot(item.doer, partition, slots)
        if isinstance(item, BanditControl):
            await self._control(item, slot)
            return
        if (item.run_id, partition, offset) not in owned:
            return  # a duplicate of a run another record delivered
        if offset <= slot.mark:
            slot.publish = True  # redelivered after a crash: its allocation may be unsent
            return
        slot.mark = offset
        slot.changed = True
        starts = counts(item) and not slot.book.follows(item)
        if starts and not await self._active_or_none(item):
            if await self._artifact(item.policy_id, item.policy_version) is None:
                # Not a late run of an older version: one the store has never seen.
                unknown = _unknown_policy(item.policy_id, item.policy_version)
                await self.dead_letter(
                    event, error_type=unknown.error_type, reason=unknown.reason, doer=item.doer
                )
                return
            # A late run of the version before a promotion (or of any other that is not
            # the doer's active policy): it must not start that version's bandits again.
            log.info(
                "bandit_run_skipped doer=%s run=%s policy=%s@%d: not the active policy",
                item.doer,
                item.run_id,
                item.policy_id,
                item.policy_version,
            )
            return
        declared = await self._tunables(item)
        config = self.app.learning.bandit
        if isinstance(declared, _Unusable):
            await self.dead_letter(
                event, error_type=declared.error_type, reason=declared.reason, doer=item.doer
            )
            return
        reason = slot.book.fold(item, declared, config.bandit, config.probe_share)
        # A version's bandits started: their first shares go out now, so the Router
        # client never goes on with the previous version's for a hundred runs (not
        # while frozen: nothing new goes out until the unfreeze, which sends them).
        slot.publish = slot.publish or (starts and reason is None and not slot.book.frozen)
        if reason is not None:
            await self.dead_letter(event, error_type="option", reason=reason, doer=item.doer)

    async def _control(self, control: BanditControl, slot: _Slot) -> None:
        """Apply a freeze or unfreeze whose envelope verifies and that is newer than the last."""
        verdict = await authorised(self, control, replays=False)
        if verdict is None:
            return  # refused and alerted: the allocations stay as they are
        assert control.issued_at is not None  # authorise refuses a command without one
        replayed = slot.book.take_control(control.frozen, control.issued_at, str(control.event_id))
        if replayed is not None:
            await refuse(self, control, Verdict(False, replayed, "replayed", verdict.key_id))
            return
        log.info(
            "bandit_control doer=%s frozen=%s operator=%s key=%s",
            control.doer,
            control.frozen,
            verdict.operator,
            verdict.key_id,
        )
        slot.changed = True
        slot.publish = True
        slot.applied.append((control.model_copy(update={"actor": verdict.operator}), verdict))

    async def _active_or_none(self, result: CRLComputed) -> bool:
        """Whether the run's version is the doer's active policy now, or the doer has none.

        Asked only when a run would start a version's bandits (the first run of a
        version, rare), once per doer and batch. A doer with no active policy (its
        versions registered, none promoted) has its runs' version followed as before.
        """
        doer = result.doer
        if doer not in self._active:
            record = await durably(
                partial(live_at, self.app.pool, doer, datetime.now(UTC)), what="policy_activations"
            )
            self._active[doer] = None if record is None else (record.policy_id, record.version)
        active = self._active[doer]
        return active is None or active == (result.policy_id, result.policy_version)

    async def _tunables(self, result: CRLComputed) -> Tunables | _Unusable:
        """The tunables the run's policy version declares, or why there are none to go by."""
        ref = (result.policy_id, result.policy_version)
        if await self._artifact(*ref) is None:
            return _unknown_policy(*ref)
        return self.declared[ref][1]

    async def _artifact(self, policy_id: str, version: int) -> dict[str, Any] | None:
        """The version's artifact (its tunables kept beside it), read from the store once.

        None while the store has no such version (not cached: it may be
        registered later). The proposal after a restart or a partition move
        reads it here too, when no run of the version came through this worker.
        """
        ref = (policy_id, version)
        if ref not in self.declared:
            record = await durably(partial(find_policy, self.app.pool, *ref), what="policies")
            if record is None:
                return None
            try:
                found: Tunables | _Unusable = tunables_of(record.artifact)
            except ValueError as exc:  # the DLQ reason names the version
                found = _Unusable("policy", f"{policy_id}@{version}: {exc}")
            self.declared[ref] = (dict(record.artifact), found)
        return self.declared[ref][0]

    async def _propose(self, doer: str, book: BanditBook, key: str, allocation: Allocation) -> None:
        """Request the experiment fixing a confidently best option (one open request per option)."""
        bandit = book.bandits[key]
        phase, parameter = key.split("/", 1)
        artifact = await self._artifact(bandit.policy_id, bandit.version)
        if artifact is None:
            log.warning(
                "bandit_proposal_skipped doer=%s policy=%s@%d: not in the policy store",
                doer,
                bandit.policy_id,
                bandit.version,
            )
            return
        proposal = tuning_proposal(
            doer=doer,
            policy_id=bandit.policy_id,
            version=bandit.version,
            artifact=artifact,
            phase=phase,
            parameter=parameter,
            allocation=allocation,
            runs={o: s.runs for o, s in bandit.state.options.items()},
        )
        if proposal is None:
            return
        filed = await durably(
            partial(get_experiment, self.app.pool, proposal.experiment_id), what="experiments"
        )
        if filed is not None:
            # Answered already (its id is the proposal's): a request raised again would
            # stay open for good, since `bandit propose` cannot file the same experiment.
            return
        trigger = ExperimentTrigger(
            doer=doer,
            reason=f"bandit:{bandit.policy_id}@{bandit.version}:{key}={proposal.option}",
            hypothesis=proposal.hypothesis,
            message=f"{key}: {proposal.option} is best ({proposal.experiment_type})",
            evidence={
                **proposal.evidence,
                "experiment_id": proposal.experiment_id,
                "experiment_type": proposal.experiment_type,
                "phase": phase,
                "parameter": parameter,
                "option": proposal.option,
                "candidate_artifact": proposal.artifact,
            },
        )
        await raise_request(self.app, trigger)

    async def expire_history(self) -> None:
        """Delete stored allocations older than HISTORY, each doer's latest kept."""
        if not self.app.pool_open:
            return
        removed = await expire_allocations(self.app.pool, HISTORY)
        if removed:
            log.info("bandit_allocations_expired removed=%d", removed)

    async def reassert_stale(self, now: float | None = None) -> None:
        """Send a doer's allocations in force again when what is last for it is not them.

        A doer whose book this worker does not hold (its partition moved to
        another worker) is left to the worker that holds it.
        """
        await self.tails.stale(now, self._reassert, "bandit_allocations")

    async def _reassert(
        self, doer: str, record: BanditAllocations | None, valid: bool, now: float
    ) -> bool:
        """Send the doer's allocations in force again unless ``record`` is them."""
        async with self._sending:
            book = BanditBook.from_dict(self.books.get(doer) or {})
            if not book.bandits:
                return False
            held = book.event(doer)
            sequence = None if record is None else record.sequence
            if (
                valid
                and record is not None
                and (
                    record.sequence > held.sequence
                    # A freeze or an unfreeze keeps the sequence: the same number with the
                    # other flag is the record from before it, sent again.
                    or (record.sequence == held.sequence and record.frozen == held.frozen)
                )
            ):
                return False
            log.warning(
                "bandit_allocations_reasserted doer=%s last_sequence=%s valid=%s sequence=%d",
                doer,
                sequence,
                valid,
                held.sequence,
            )
            await self._record([held])
            await self.topics.bandit_allocations.send(self._signed(held))
        return False

    def _signed(self, allocations: BanditAllocations) -> BanditAllocations:
        """The allocations signed with the worker's key; unsigned when the worker has none."""
        if self.key is None:
            return allocations
        signature = sign_event(
            BANDIT_ALLOCATIONS_KIND, allocations.model_dump(mode="json"), self.key
        )
        return allocations.model_copy(update={"signature": signature})

    async def _flush(self, slots: dict[str, _Slot]) -> None:
        """Reallocate what is due, write each changed book once, publish the doers' shares."""
        config = self.app.learning.bandit
        proposals: list[tuple[str, _Slot, str, Allocation]] = []
        # One hold from the books' writes to the sends: the re-assert timer, which reads
        # the books, must not send a freeze whose audit row is not written yet.
        async with self._sending:
            await self._write_and_send(slots, config, proposals)
        for doer, slot, key, allocation in proposals:
            if allocation.confident:
                try:
                    await self._propose(doer, slot.book, key, allocation)
                except TRANSIENT_ERRORS:
                    raise  # PostgreSQL or Kafka away: the batch is taken again
                except Exception:
                    # A proposal is advice, asked again at the next allocation; a bug
                    # in it must not fail the batch, whose other doers' books are
                    # still to be written.
                    log.exception("bandit_proposal_failed doer=%s key=%s", doer, key)

    async def _write_and_send(
        self,
        slots: dict[str, _Slot],
        config: BookConfig,
        proposals: list[tuple[str, _Slot, str, Allocation]],
    ) -> None:
        """Reallocate, write each changed book, audit its controls, store and send its shares."""
        outgoing: list[tuple[str, BanditAllocations, list[str]]] = []
        for doer, slot in slots.items():
            due = slot.book.due(config.every)
            proposals += [
                (
                    doer,
                    slot,
                    key,
                    slot.book.reallocate(key, config.bandit, config.seed, config.probe_share),
                )
                for key in due
            ]
            if slot.changed or due:
                self.books[doer] = marked(slot.book.to_dict(), slot.partition, slot.mark)
            # Audited with the book's write, before anything is sent: a send that fails
            # fails the batch, and the freeze it carried must not stand unrecorded.
            for control, verdict in slot.applied:
                await record_applied(self, control, verdict)
            if (due or slot.publish) and slot.book.bandits:
                outgoing.append((doer, self._signed(slot.book.event(doer)), due))
        # Stored before they are sent, in one statement: the console's record of what the
        # Routers were told (storage.bandit; sent again after a crash, it stays one row).
        await self._record([allocations for _, allocations, _ in outgoing])
        for doer, allocations, due in outgoing:
            await self.topics.bandit_allocations.send(allocations)
            if due:
                log.info(
                    "bandit_allocation doer=%s sequence=%d parameters=%s",
                    doer,
                    allocations.sequence,
                    ",".join(due),
                )

    async def _record(self, sent: list[BanditAllocations]) -> None:
        """Store allocations about to be sent (storage.bandit), for the console."""
        rows = [
            (a.doer, a.sequence, a.frozen, [p.model_dump(mode="json") for p in a.allocations])
            for a in sent
        ]
        await durably(partial(record_allocations, self.app.pool, rows), what="bandit_allocations")
