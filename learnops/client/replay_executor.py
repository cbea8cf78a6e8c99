"""The local replay executor: learning.replay-tasks → learning.run-completed, deterministically.

It plays the orchestrator's sandbox for tests and the demo. Each task names
its policy by content hash (a blob) and carries its sample; the result is
``learning.replay.LocalExecutor`` — a pure function of policy, sample and seed
— reported as a learning bundle tagged with the replay id, which the CRL stage
scores like any run. A task it cannot run goes to learning.dlq with the reason.

A plain aiokafka loop, not a Faust agent: it is a separate process (as the
sandbox would be), in its own consumer group, and commits a batch's offsets
only after the batch's bundles are acknowledged by the broker.

It reads blobs through the async callable its caller gives (``fetch_blob``:
content hash → bytes or None; ``learnops replay executor`` wires in
``storage.experiments.get_blob``), so the client never imports the storage layer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from learning.replay import (
    PRE_TENANT_REPLAY,
    Executor,
    LocalExecutor,
    ReplayTask,
    replay_bundle,
)
from learning.signing import content_digest
from models.base import describe_exception, describe_validation_error, duplicate_key_problem
from models.events import DeadLetter
from models.events import ReplayTask as ReplayTaskEvent

log = logging.getLogger("learnops.replay_executor")

TASKS = "learning.replay-tasks"
RUNS = "learning.run-completed"
DLQ = "learning.dlq"
STAGE = "replay-executor"

#: Reads a blob by content hash: the bytes, or None when no blob has that hash.
BlobFetcher = Callable[[str], Awaitable[bytes | None]]


class TaskError(ValueError):
    """A task the executor cannot run; the message says why."""


async def resolve(fetch_blob: BlobFetcher, task: ReplayTaskEvent) -> ReplayTask:
    """The runnable task: the policy artifact from its blob, the sample from the task or a blob."""
    if task.policy_hash is None:
        raise TaskError("policy_hash is required: the executor runs policies by content hash")
    raw = await fetch_blob(task.policy_hash)
    if raw is None:
        raise TaskError(f"no blob {task.policy_hash} holds the policy artifact")
    policy = orjson.loads(raw)
    if not isinstance(policy, dict) or content_digest(policy) != task.policy_hash:
        raise TaskError(f"blob {task.policy_hash} is not a policy artifact with that hash")
    sample = task.input
    if sample is None:
        if task.input_hash is None:
            raise TaskError("the task has neither input nor input_hash")
        blob = await fetch_blob(task.input_hash)
        if blob is None:
            raise TaskError(f"no blob {task.input_hash} holds the sample")
        sample = blob.decode("utf-8")
    if task.run_id is None or task.manifest_hash is None:
        raise TaskError("run_id and manifest_hash are required to report a replay result")
    return ReplayTask(
        task_id=task.task_id,
        replay_id=task.replay_id,
        policy_hash=task.policy_hash,
        manifest_hash=task.manifest_hash,
        sample_id=task.sample_id,
        seed=task.seed,
        policy=policy,
        sample=sample,
    )


async def run_task(executor: Executor, fetch_blob: BlobFetcher, task: ReplayTaskEvent) -> bytes:
    """Execute one task and return its result bundle as wire bytes."""
    runnable = await resolve(fetch_blob, task)
    try:
        output = await executor.execute(runnable)
    except ValueError as exc:  # e.g. a policy quality outside [0, 1]
        # The executor's message may quote the sample; the reason is kept in the DLQ.
        raise TaskError(f"the executor refused the task ({describe_exception(exc)})") from None
    assert task.run_id is not None  # checked by resolve
    bundle = replay_bundle(
        output,
        doer=task.doer,
        phase=task.phase,
        policy_id=task.policy_id,
        policy_version=task.policy_version,
        replay_id=task.replay_id,
        run_id=task.run_id,
        occurred_at=task.occurred_at,
        tenant_id=task.tenant_id or PRE_TENANT_REPLAY,
    )
    return bundle.to_json()


async def serve(
    bootstrap_servers: str,
    fetch_blob: BlobFetcher,
    *,
    group_id: str,
    doers: str = ".*",
    executor: Executor | None = None,
    stop: asyncio.Event | None = None,
    **client_options: Any,
) -> None:
    """Consume replay tasks of doers matching ``doers`` and publish their bundles until stopped.

    ``client_options`` (aiokafka's security options, e.g. ``security_protocol``,
    ``ssl_context``, ``sasl_*``) go to both the consumer and the producer.
    """
    executor = executor or LocalExecutor()
    pattern = re.compile(doers)
    stop = stop or asyncio.Event()
    consumer = AIOKafkaConsumer(
        TASKS,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, **client_options
    )
    await consumer.start()
    await producer.start()
    log.info("replay_executor_ready group=%s doers=%s", group_id, doers)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            sends = []
            for records in batches.values():
                for record in records:
                    sends.append(await _handle(executor, fetch_blob, producer, record, pattern))
            acks = [s for s in sends if s is not None]
            if acks:
                await asyncio.gather(*acks)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


#: The doers whose tasks this process left to another executor (logged once each).
_SKIPPED: set[str] = set()


async def _handle(
    executor: Executor,
    fetch_blob: BlobFetcher,
    producer: Any,
    record: Any,
    pattern: re.Pattern[str],
) -> Any:
    repeated = duplicate_key_problem(record.value)
    if repeated is not None:
        return await _dead_letter(producer, record, repeated, "json")
    try:
        task = ReplayTaskEvent.model_validate_json(record.value)
    except ValidationError as exc:
        return await _dead_letter(producer, record, describe_validation_error(exc), "schema")
    if not pattern.fullmatch(task.doer):
        # Another sandbox serves this doer; said once per doer, since a pattern that was
        # meant to match (a prefix without ``.*``) would otherwise drop its tasks unseen.
        if task.doer not in _SKIPPED:
            _SKIPPED.add(task.doer)
            log.info(
                "replay_task_skipped doer=%s: not matched in full by --doers %r (its tasks are "
                "left to the executor that serves it)",
                task.doer,
                pattern.pattern,
            )
        return None
    try:
        value = await run_task(executor, fetch_blob, task)
    except TaskError as exc:
        return await _dead_letter(producer, record, str(exc), "task", task.doer)
    log.info(
        "replay_task_done replay_id=%s task_id=%s seed=%d", task.replay_id, task.task_id, task.seed
    )
    return await producer.send(RUNS, key=task.doer.encode(), value=value)


async def _dead_letter(
    producer: Any, record: Any, reason: str, error_type: str, doer: str | None = None
) -> Any:
    letter = DeadLetter.capture(
        value=record.value or b"",
        key=record.key,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
        stage=STAGE,
        error_type=error_type,
        doer=doer,
    )
    log.warning("dead_letter stage=%s error_type=%s offset=%s", STAGE, error_type, record.offset)
    return await producer.send(DLQ, key=letter.doer.encode(), value=letter.to_json())
