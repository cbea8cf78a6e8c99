"""What every stream stage shares: its app, its name, decoding, dead letters and error guards.

A stage is a class built by :func:`agents.app.create_app` with the app it runs
on; its constructor declares its tables and registers its agent (and timers)
on that app, so nothing happens at import and a test can build an app with one
stage and drive it in process (``test_context()``).

The processing-error policy is the same for every stage: an event that breaks
the contract is a dead letter with a reason (:meth:`Stage.decode`); an
unexpected error while handling one event or a batch dead-letters what was in
hand and the stream goes on (:meth:`Stage.guarded`, :meth:`Stage.guarded_batch`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from prometheus_client import Counter, Gauge
from pydantic import TypeAdapter, ValidationError

from agents.dlq import DEAD_LETTERS, DEAD_LETTERS_FAILED
from agents.health import BATCH_SECONDS, BATCH_SIZE, EVENTS_IN
from agents.logs import OnceAWhile
from agents.placement import placement_problem
from agents.streams import batches, each, unacked_if_cut_short
from agents.tables import DoerPartitions, doer_table
from learning.signing import POLICY_CHANGE_KIND, TrustedKeys, VerifyResult, verify_event
from models.base import (
    Event,
    describe_exception,
    describe_validation_error,
    duplicate_key_problem,
)
from models.keys import key_problem
from models.policy_change import PolicyChange
from storage.claims import expire_claims
from storage.pool import TRANSIENT_ERRORS, durably, misconfigured
from storage.signing_keys import load_keyring

if TYPE_CHECKING:
    from agents.app import LearnopsApp

log = logging.getLogger("learnops.stage")

#: The reason a record with no value (a null, as a compacted topic's delete marker) is refused.
NO_VALUE = "the record has no value (null); every event is a JSON object"

TIMER_ERRORS = Counter(
    "learnops_timer_errors_total",
    "Timer ticks that failed for an internal error (logged; the timer goes on), by stage.",
    ["stage"],
)
STAGE_HALTED = Gauge(
    "learnops_stage_halted",
    "1 when a stage stopped after too many internal errors in a row (it needs a fix).",
    ["stage"],
)

E = TypeVar("E", bound=Event)


K = TypeVar("K", bound=Event)


#: Per record, what it was validated as, kept while Faust holds the record. Every
#: stream of a topic gets the same ``Message``, so a bundle the crl and curator
#: stages both read, or a CRL result read by skills, canary and bandit, is
#: checked and parsed once per worker (the models are frozen). Refusals are not
#: kept: each stage dead-letters under its own name.
_VALIDATED: weakref.WeakKeyDictionary[Any, dict[object, Any]] = weakref.WeakKeyDictionary()


def validated_before(message: Any, schema: object) -> Any | None:
    """What an earlier reader validated ``message`` as with ``schema`` (a model, an adapter)."""
    try:
        seen = _VALIDATED.get(message)
    except TypeError:  # a stand-in record that cannot be weakly referenced (tests)
        return None
    return None if seen is None else seen.get(schema)


def remember_validated(message: Any, schema: object, result: Any) -> None:
    """Keep ``result`` (it passed the duplicate-key check and ``schema``) for the other readers."""
    try:
        seen = _VALIDATED.get(message)
        if seen is None:
            seen = _VALIDATED[message] = {}
    except TypeError:
        return
    seen[schema] = result


def misplaced(app: LearnopsApp, message: Any) -> str | None:
    """Why ``message`` (its key checked) is not on its key's partition; None if it is.

    Known once the worker has started (the learning topics' one partition
    count); a record on another partition would split its doer's table state
    (agents.placement). Compacted topics are not checked: after a repartition
    each doer's last record stays on its old partition until its next one
    (docs/operations.md), and is the current value there, not a new fact.
    """
    count = app.partition_count
    if count is None or message.topic not in app.placed_topics:
        return None
    return placement_problem(message.topic, message.partition, message.key, count)


class Stage:
    """The base of every stage: ``name`` is the agent's name and the one LEARNOPS_STAGES uses."""

    name: ClassVar[str]

    def __init__(self, app: LearnopsApp) -> None:
        self.app = app
        self.topics = app.event_topics
        self.partitions = DoerPartitions()
        self.internal_errors = 0  # in a row; reset by any event handled without one
        self.halted = False  # stopped for good (stage_halted in the log); /readyz says so
        # 0 from the start, so an alert on == 1 has a series to watch and a missing
        # series means a missing worker (deploy/prometheus/alerts.yml).
        STAGE_HALTED.labels(self.name).set(0)
        # Likewise a failed dead letter's counter, and the misplaced records' (alert
        # LearnopsRecordsMisplaced): an alert on its increase needs a 0 first.
        DEAD_LETTERS_FAILED.labels(self.name)
        DEAD_LETTERS.labels(self.name, "partition")

    def close(self) -> None:
        """Release what the stage holds outside the app (its processes) once its agent stopped."""

    async def batches(
        self, stream: Any, max_events: int, *, ack: bool = True
    ) -> AsyncIterator[list[Any]]:
        """The stream's batches (agents.streams.batches), measured for /metrics."""
        async for batch in batches(stream, max_events, self.app.bodies, self.name, ack=ack):
            EVENTS_IN.labels(self.name).inc(len(batch))
            BATCH_SIZE.labels(self.name).observe(len(batch))
            started = time.perf_counter()
            yield batch
            BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - started)

    async def each(self, stream: Any) -> AsyncIterator[Any]:
        """The stream's events one by one (agents.streams.each), measured for /metrics."""
        async for event in each(stream, self.app.bodies, self.name):
            EVENTS_IN.labels(self.name).inc()
            started = time.perf_counter()
            yield event
            BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - started)

    def table(
        self,
        name: str,
        *,
        default: Any,
        help_: str,
        window: timedelta | None = None,
        expires: timedelta | None = None,
        holds_partition: bool = False,
    ) -> Any:
        """A table keyed by doer (agents.tables), on this stage's partitions.

        ``holds_partition``: its values are a source partition plus one (DoerTable).
        """
        return doer_table(
            self.app,
            name,
            self.partitions,
            default=default,
            help_=help_,
            window=window,
            expires=expires,
            holds_partition=holds_partition,
        )

    def every(self, interval_s: float, tick: Callable[[], Awaitable[None]]) -> None:
        """Run ``tick`` every ``interval_s`` seconds on the worker; a failed tick never crashes it.

        An exception in a Faust timer crashes the whole app (every stage stops,
        and the process may hang in its shutdown). A tick that meets PostgreSQL
        down is skipped and tried again at the next interval; any other error is
        logged with its traceback and counted, and the timer goes on.
        """
        name = f"{type(self).__qualname__}.{getattr(tick, '__name__', 'tick')}"
        # A tick a second through a PostgreSQL outage logged a line a second: the first of
        # a run of failures is logged, then one per TIMER_LOG_EVERY_S with the count.
        quiet = OnceAWhile(TIMER_LOG_EVERY_S)

        def due() -> str | None:
            """What to add to the line when one is due (None: left out, and counted)."""
            left_out = quiet.due(time.monotonic())
            if left_out is None:
                return None
            return f" ({left_out} more since the last line)" if left_out else ""

        async def guarded_tick() -> None:
            try:
                await tick()
            except TRANSIENT_ERRORS as exc:
                if (more := due()) is not None:
                    log.warning(
                        "timer_skipped stage=%s timer=%s error=%s%s",
                        self.name,
                        name,
                        describe_exception(exc),
                        more,
                    )
            except Exception:
                TIMER_ERRORS.labels(self.name).inc()
                if (more := due()) is not None:
                    log.exception("timer_failed stage=%s timer=%s%s", self.name, name, more)
            else:
                quiet.reset()

        guarded_tick.__qualname__ = name
        self.app.timer(interval=interval_s)(guarded_tick)

    def expire_claims_every(self, consumer: str, interval_s: float, keep: timedelta) -> None:
        """Delete this stage's fold claims older than ``keep`` every ``interval_s`` seconds.

        A claim only matters while a duplicate of its run could still be folded
        into a live aggregate; after the aggregates' horizon it is dead weight.
        """

        async def expire() -> None:
            if not self.app.pool_open:
                return
            removed = await expire_claims(self.app.pool, consumer, keep)
            if removed:
                log.info("fold_claims_expired stage=%s removed=%d", self.name, removed)

        expire.__name__ = "expire_claims"
        self.every(interval_s, expire)

    async def dead_letter(
        self, event: Any, *, error_type: str, reason: str, doer: str | None = None
    ) -> None:
        """Send ``event`` to learning.dlq as refused by this stage."""
        await self.app.dead_letters.send(
            event, stage=self.name, error_type=error_type, reason=reason, doer=doer
        )

    async def decode_each(
        self, events: list[Any], decode: Callable[[Any], Awaitable[K | None]]
    ) -> list[tuple[Any, K]]:
        """Each event with what ``decode`` made of it, leaving out those it refused (guarded)."""
        decoded: list[tuple[Any, K]] = []
        for event in events:
            async with self.guarded(event):
                item = await decode(event)
                if item is not None:
                    decoded.append((event, item))
        return decoded

    async def decode(self, event: Any, model: type[E]) -> E | None:
        """The validated event, or None after its bytes went to learning.dlq with the reason.

        Bad JSON and schema violations both surface as a pydantic ValidationError;
        an object that repeats a key is refused first (models.base.duplicate_key_problem).
        An event with no key, or a key that is not its doer, is refused too: it
        would land in another doer's partition and split that doer's state
        across workers (models.keys); and so is one on another partition than
        its key's (:func:`misplaced`).
        """
        return await self._validated(event, model, model.model_validate_json)

    async def signed_change(self, event: Any) -> PolicyChange | None:
        """A record of learning.policy-changes if the policy stage signed it; else None.

        Where this worker's stages sign what they publish (a worker signing key),
        a change must verify against the trusted keyring as the Router's do: its
        deployment carries the steps and the statistics the canary decides by,
        and anyone who can write the topic could otherwise send a forged one.
        A refused record is dead-lettered with the reason. Without a signing key
        (a local setup) the policy stage publishes unsigned changes, taken as
        they are.
        """
        change = await self.decode(event, PolicyChange)
        if change is None or self.app.settings.learnops_worker_signing_key_file is None:
            return change
        check = await self.change_verifies(change)
        if check:
            return change
        log.warning(
            "policy_change_refused stage=%s doer=%s reason=%r", self.name, change.doer, check.reason
        )
        await self.dead_letter(
            event,
            error_type="signature",
            reason=f"the policy change's signature is refused: {check.reason}",
            doer=change.doer,
        )
        return None

    async def change_verifies(self, change: PolicyChange) -> VerifyResult:
        """Whether ``change``'s signature verifies against the trusted keyring as it is now.

        No signing time: a change's occurred_at is its state's (the last promotion's),
        not when it was signed, so a retired key's changes verify (as at the Router).
        """
        keyring = await self.keyring()
        return verify_event(POLICY_CHANGE_KIND, change.model_dump(mode="json"), keyring)

    async def keyring(self) -> TrustedKeys:
        """The trusted keyring as it is now (the policy signers' and the workers' keys)."""
        return await durably(partial(load_keyring, self.app.pool), what="signing_keys")

    async def decode_with(self, event: Any, adapter: TypeAdapter[K]) -> K | None:
        """As :meth:`decode`, for a topic whose value is a union of models (``POLICY_COMMANDS``)."""
        return await self._validated(event, adapter, adapter.validate_json)

    async def _validated(self, event: Any, schema: object, parse: Callable[[Any], K]) -> K | None:
        message = event.message
        value = message.value
        if value is None:
            await self.dead_letter(event, error_type="json", reason=NO_VALUE)
            return None
        decoded: K | None = validated_before(message, schema)
        if decoded is None:
            repeated = duplicate_key_problem(value)
            if repeated is not None:
                await self.dead_letter(event, error_type="json", reason=repeated)
                return None
            try:
                decoded = parse(value)
            except ValidationError as exc:
                is_json = not any(e["type"] == "json_invalid" for e in exc.errors())
                await self.dead_letter(
                    event,
                    error_type="schema" if is_json else "json",
                    reason=describe_validation_error(exc),
                )
                return None
            remember_validated(message, schema, decoded)
        problem = key_problem(message.key, decoded)
        if problem is not None:
            await self.dead_letter(event, error_type="key", reason=problem, doer=decoded.doer)
            return None
        problem = misplaced(self.app, message)
        if problem is not None:
            await self.dead_letter(event, error_type="partition", reason=problem, doer=decoded.doer)
            return None
        return decoded

    @asynccontextmanager
    async def guarded(self, event: Any) -> AsyncIterator[None]:
        """Turn an unexpected error while handling one event into a dead letter.

        Left alone, the exception would crash the agent and Faust's supervisor
        would restart it past the event: a silent drop. Here the event's bytes and
        the error go to learning.dlq (to be replayed once fixed), the error is
        logged with its traceback, and the stream goes on.
        """
        try:
            yield
        except Exception as exc:
            await self._halt_if_misconfigured(exc)
            log.exception("internal_error stage=%s", self.name)
            await self._internal_error()
            await self.dead_letter(event, error_type="internal", reason=_internal_reason(exc))
        else:
            self.internal_errors = 0

    @asynccontextmanager
    async def guarded_batch(self, events: list[Any]) -> AsyncIterator[None]:
        """Like :meth:`guarded` for a batch body: an unexpected error dead-letters every event.

        The batch is acked once the body has ended (:func:`agents.streams.batches`),
        so without this a crash in a batch body would drop the batch. A body that
        does not finish leaves the batch unacked for good
        (:func:`agents.streams.unacked_if_cut_short`).
        """
        async with unacked_if_cut_short(events, stage=self.name):
            try:
                yield
            except Exception as exc:
                await self._halt_if_misconfigured(exc)
                log.exception("internal_error stage=%s batch=%d", self.name, len(events))
                await self._internal_error()
                reason = _internal_reason(exc)
                for event in events:
                    await self.dead_letter(event, error_type="internal", reason=reason)

    async def _halt_if_misconfigured(self, exc: BaseException) -> None:
        """Stop the stage at once when PostgreSQL refused for a reason no input causes.

        A role without its grants or a schema not migrated fails every event the
        same way: dead-lettering them, even the few before the internal-error
        limit, would move their offsets past data that is good. The stage waits
        instead, its events unacked, until a worker with the fault mended takes
        them.
        """
        if not misconfigured(exc):
            return
        self.halted = True
        STAGE_HALTED.labels(self.name).set(1)
        log.critical(
            "stage_halted stage=%s error=%s hint='PostgreSQL refused for a reason no input "
            "causes: check the grants of the worker's role (learnops db migrate grants them to "
            "learnops_worker) and that the schema is migrated, then restart the worker: its "
            "input waits, unacked'",
            self.name,
            describe_exception(exc),
        )
        await asyncio.Event().wait()

    async def _internal_error(self) -> None:
        """Count an internal error; past the limit, stop the stage here for good.

        An error on every event is a bug, not bad input: dead-lettering would
        empty the stage's input into the DLQ. Instead the stage waits here,
        holding its events unacked (so no offset is committed past them), until
        the worker is stopped; after a fix, the next worker processes them.
        """
        self.internal_errors += 1
        limit = self.app.settings.learnops_max_internal_errors
        if self.internal_errors < limit:
            return
        self.halted = True
        STAGE_HALTED.labels(self.name).set(1)
        log.critical(
            "stage_halted stage=%s internal_errors_in_a_row=%d hint='fix the error logged above "
            "and restart the worker: its input waits, unacked'",
            self.name,
            self.internal_errors,
        )
        await asyncio.Event().wait()


#: How often a timer that keeps failing logs a line (the first failure always).
TIMER_LOG_EVERY_S = 30.0


def _internal_reason(exc: BaseException) -> str:
    """The error's kind and where it was raised; never its message, which may quote the input."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    reason = f"internal error {describe_exception(exc)} at {frame.filename}:{frame.lineno}"
    return reason[:1000]
