"""`learnops dlq list|show|replay`: the letters the session worker wrote, the refused input
read back from its topic, and misplaced runs replayed where they belong, as an operator
meets them."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from agents.placement import key_hash
from agents.topics import read_records
from learnops.cli.dlq import REPLAYED_FROM, _replay
from learnops.simulation.orchestrator import Orchestrator
from storage.dead_letters import Replay, record_replays
from tests.integration.kafka_io import eventually
from tests.services import ReadBack, WorkerProcess, end_offsets, partition_letter, run_learnops

RUNS = "learning.run-completed"


async def learnops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(lambda: run_learnops(env, *args, text=False))


async def test_an_operator_lists_the_letters_and_reads_the_refused_input_back(
    worker: WorkerProcess, producer: Any, db: Any, settings_env: dict[str, str]
) -> None:
    doer = f"DlqCli{uuid.uuid4().hex[:8]}"
    # A bundle missing its run id (valid JSON), and bytes that are not JSON at all.
    bundle = {"doer": doer, "phase": "draft", "note": "call me at +44 20 7946 0958"}
    invalid = json.dumps(bundle).encode()
    garbage = b"\xff\xfe not json " + doer.encode()
    for value in (invalid, garbage):
        await producer.send_and_wait(RUNS, value=value, key=doer.encode())

    rows = await eventually(
        lambda: db.fetch(
            "SELECT event_id, stage, reason FROM dead_letters WHERE doer = $1 AND stage = 'crl'",
            doer,
        ),
        lambda found: len(found) == 2,
    )
    listed = await learnops(settings_env, "dlq", "list", "--doer", doer, "--stage", "crl", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    assert {x["event_id"] for x in letters} == {str(r["event_id"]) for r in rows}
    assert all(x["topic"] == RUNS and x["doer"] == doer for x in letters)
    # Latest first: the garbage was sent second.
    later, earlier = letters
    assert later["offset"] > earlier["offset"]
    table = await learnops(settings_env, "dlq", "list", "--doer", doer, "--reason", "JSON")
    assert table.returncode == 0, table.stderr
    assert later["event_id"].encode() in table.stdout
    assert earlier["event_id"].encode() not in table.stdout  # its reason is a missing field
    # A reason as the console's dead-letter page groups it ("line … column …"), any case
    # of the stage and doer: the same letter.
    grouped = await db.fetchval(
        "SELECT reason FROM v_dead_letters_by_reason WHERE stage = 'crl' AND reason LIKE '%…%'"
        " AND reason = regexp_replace($1, 'line [0-9]+ column [0-9]+', 'line … column …', 'g')",
        later["reason"],
    )
    assert grouped is not None and grouped != later["reason"], later["reason"]
    pasted = await learnops(
        settings_env,
        *("dlq", "list", "--stage", "CRL", "--doer", doer.lower(), "--reason", grouped),
        "--json",
    )
    assert [x["event_id"] for x in json.loads(pasted.stdout)] == [later["event_id"]]
    nosuch = await learnops(settings_env, "dlq", "list", "--stage", "crll", "--doer", doer)
    assert nosuch.returncode == 0 and b"no letters of stage 'crll'; did you mean 'crl'?" in (
        nosuch.stdout
    )

    # The whole input, read back from its topic at the letter's offset.
    shown = await learnops(settings_env, "dlq", "show", earlier["event_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["reason"] == earlier["reason"] and document["input"]["key"] == doer
    assert base64.b64decode(document["input"]["value_b64"]) == invalid
    # The start of the id (as pasted, with spaces), or the whole id without its dashes.
    raw = await learnops(settings_env, "dlq", "show", f"  {later['event_id'][:12]} ", "--raw")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == garbage
    raw = await learnops(
        settings_env, "dlq", "show", later["event_id"].replace("-", "").upper(), "--raw"
    )
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == garbage
    text = await learnops(settings_env, "dlq", "show", earlier["event_id"])
    assert text.returncode == 0, text.stderr
    assert b'"note": "call me at +44 20 7946 0958"' in text.stdout  # indented JSON
    assert f"{RUNS}[{earlier['partition']}] offset {earlier['offset']}".encode() in text.stdout

    # A letter whose input the topic no longer has (an offset past its end stands in for
    # one deleted by retention): said so, and --raw fails.
    gone = uuid.uuid4()
    await db.execute(
        "INSERT INTO dead_letters (event_id, doer, stage, error_type, reason, topic, partition,"
        " \"offset\", occurred_at) VALUES ($1, $2, 'crl', 'ValidationError', 'old', $3, 0,"
        " 10000000, now())",
        gone,
        doer,
        RUNS,
    )
    missing = await learnops(settings_env, "dlq", "show", str(gone))
    assert missing.returncode == 0, missing.stderr
    assert b"no longer on learning.run-completed[0] at offset 10000000" in missing.stdout
    failed = await learnops(settings_env, "dlq", "show", str(gone), "--raw")
    assert failed.returncode == 1 and failed.stdout == b""
    assert b"no longer on" in failed.stderr and b"Traceback" not in failed.stderr

    for args, fragment, code in (
        (("dlq", "show", "0123"), b"too short", 2),  # a wrong command line
        (("dlq", "show", "00000000-dead"), b"no dead letter with event id", 1),
        (("dlq", "show", "%%%%%%%%"), b"hex digits and dashes", 2),
    ):
        refused = await learnops(settings_env, *args)
        assert refused.returncode == code, refused
        assert fragment in refused.stderr and b"Traceback" not in refused.stderr


async def _today_count(settings_env: dict[str, str], doer: str) -> int:
    url = f"http://127.0.0.1:{settings_env['LEARNOPS_WEB_PORT']}/crl/{doer}/"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return int((await response.json())["trend"]["today_count"])


async def test_a_misplaced_run_waits_in_the_dlq_and_its_replay_is_counted_once(
    worker: WorkerProcess,
    producer: Any,
    db: Any,
    settings_env: dict[str, str],
    role_urls: dict[str, str],
) -> None:
    tag = uuid.uuid4().hex[:8]
    doer = f"Misplaced{tag}"
    count = len(await producer.partitions_for(RUNS))
    home = key_hash(doer.encode()) % count
    away = (home + 1) % count
    orchestrator = Orchestrator(seed=47, doers=(doer,), run_prefix=f"misplaced-{tag}")
    now = datetime.now(UTC)
    placed = [orchestrator.bundle(doer, occurred_at=now) for _ in range(3)]
    # A producer whose metadata predates a repartition puts the doer on another partition.
    stale = [orchestrator.bundle(doer, occurred_at=now) for _ in range(2)]
    for bundle in placed:
        await producer.send_and_wait(RUNS, key=doer.encode(), value=bundle.to_json())
    for bundle in stale:
        await producer.send_and_wait(
            RUNS, key=doer.encode(), value=bundle.to_json(), partition=away
        )

    letters = await eventually(
        lambda: db.fetch(
            "SELECT stage, reason, partition FROM dead_letters"
            " WHERE doer = $1 AND error_type = 'partition'",
            doer,
        ),
        lambda found: len(found) == len(stale),
    )
    # One letter a record: the curator reads the same records and leaves them to the crl stage.
    assert {(x["stage"], x["partition"]) for x in letters} == {("crl", away)}
    assert f"belongs on partition {home} of {count}" in letters[0]["reason"]
    stored = "SELECT run_id FROM crl_results WHERE doer = $1"
    await eventually(lambda: db.fetch(stored, doer), lambda rows: len(rows) == len(placed))
    assert await eventually(
        lambda: _today_count(settings_env, doer), lambda n: n == len(placed), timeout=30
    )
    # Neither stored nor counted anywhere: not a row, not a sample.
    assert {r["run_id"] for r in await db.fetch(stored, doer)} == {str(b.run_id) for b in placed}
    samples = await db.fetchval(
        "SELECT count(*) FROM dataset_samples WHERE run_id = ANY($1::text[])",
        [str(b.run_id) for b in stale],
    )
    assert samples == 0

    async def home_end() -> int:
        ends = await end_offsets(settings_env["KAFKA_BOOTSTRAP_SERVERS"], (RUNS,))
        return ends[TopicPartition(RUNS, home)]

    before = await home_end()
    # A login that may not record the replay is refused before anything is published.
    assert "worker" in role_urls, "no learnops_worker login (scripts/postgres.sh makes one)"
    as_worker = {**settings_env, "DATABASE_URL": role_urls["worker"]}
    denied = await learnops(as_worker, "dlq", "replay", "--error-type", "partition")
    assert denied.returncode == 1 and b"may not write the table dead_letter_replays" in (
        denied.stderr
    )
    assert await home_end() == before
    dry = await learnops(
        settings_env,
        "dlq",
        "replay",
        "--error-type",
        "partition",
        "--doer",
        doer,
        "--dry-run",
        "--json",
    )
    assert dry.returncode == 0, dry.stderr
    assert len(json.loads(dry.stdout)["would_publish"]) == len(stale)
    assert await home_end() == before  # a dry run publishes nothing

    replayed = await learnops(
        settings_env,
        *("dlq", "replay", "--error-type", "partition", "--doer", doer),
        *("--actor", "oncall", "--json"),
    )
    assert replayed.returncode == 0, replayed.stderr
    published = json.loads(replayed.stdout)["published"]
    assert sorted(p["offset"] for p in published) == sorted(
        x["offset"]
        for x in await db.fetch(
            "SELECT \"offset\" FROM dead_letters WHERE doer = $1 AND error_type = 'partition'",
            doer,
        )
    )
    assert {(p["new_partition"], p["actor"], tuple(p["error_types"])) for p in published} == {
        (home, "oncall", ("partition",))
    }
    # The letters now say where their record's copy went.
    listed = await learnops(settings_env, "dlq", "list", "--doer", doer, "--json")
    assert listed.returncode == 0, listed.stderr
    copies = {x["offset"]: x["replayed_to"] for x in json.loads(listed.stdout)}
    assert copies == {p["offset"]: f"{RUNS}[{home}]@{p['new_offset']}" for p in published}
    table = await learnops(settings_env, "dlq", "list", "--doer", doer)
    assert b"replayed to" in table.stdout
    await eventually(lambda: db.fetch(stored, doer), lambda rows: len(rows) == 5)
    assert await eventually(lambda: _today_count(settings_env, doer), lambda n: n == 5, timeout=30)

    # Again: every refused record was replayed once, so nothing is published.
    after = await home_end()
    again = await learnops(
        settings_env, "dlq", "replay", "--error-type", "partition", "--doer", doer, "--json"
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["published"] == []
    assert await home_end() == after == before + len(stale)
    audit = await db.fetch(
        "SELECT actor, new_partition FROM dead_letter_replays WHERE doer = $1", doer
    )
    assert [tuple(r) for r in audit] == [("oncall", home)] * len(stale)

    # The same run misplaced again (a stale producer's retry): PostgreSQL holds it, so a
    # copy would never be counted; it is left alone and said so.
    await producer.send_and_wait(RUNS, key=doer.encode(), value=stale[0].to_json(), partition=away)
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM dead_letters WHERE doer = $1 AND error_type = 'partition'", doer
        ),
        lambda n: n == len(stale) + 1,
    )
    retried = await learnops(
        settings_env, "dlq", "replay", "--error-type", "partition", "--doer", doer, "--json"
    )
    assert retried.returncode == 0, retried.stderr
    document = json.loads(retried.stdout)
    assert document["published"] == [] and len(document["counted_already"]) == 1
    assert await home_end() == before + len(stale)

    # A bundle this version's contract refuses (a schema letter) is not published again:
    # its copy would be refused at a new offset, which the next replay would publish.
    bad = stale[1].model_dump(mode="json") | {"run_id": ""}
    await producer.send_and_wait(RUNS, key=doer.encode(), value=json.dumps(bad).encode())
    schema_letter = await eventually(
        lambda: db.fetchval(
            "SELECT event_id FROM dead_letters WHERE doer = $1 AND error_type = 'schema'", doer
        ),
        lambda found: found is not None,
    )
    settled = await home_end()  # the refused bundle itself is on the doer's partition
    still = await learnops(settings_env, "dlq", "replay", str(schema_letter), "--json")
    assert still.returncode == 0, still.stderr
    document = json.loads(still.stdout)
    assert document["published"] == [] and len(document["still_refused"]) == 1
    # A record that another stage refused late (after storing it, say) is owned by its
    # original, whatever the letter asked for says: left alone.
    late = 20_000_000 + uuid.uuid4().int % 1_000_000
    for error_type in ("partition", "internal"):
        await db.execute(
            "INSERT INTO dead_letters (event_id, doer, stage, error_type, reason, topic,"
            " partition, \"offset\", occurred_at) VALUES ($1, $2, $3, $4, 'r', $5, 0, $6, now())",
            uuid.uuid4(),
            doer,
            "crl" if error_type == "partition" else "curator",
            error_type,
            RUNS,
            late,
        )
    mixed = await learnops(
        settings_env, "dlq", "replay", "--error-type", "partition", "--doer", doer, "--json"
    )
    assert mixed.returncode == 0, mixed.stderr
    assert json.loads(mixed.stdout)["refused_late"] == [f"{RUNS}[0]@{late}"]
    assert await home_end() == settled

    for args, fragment in (
        (("dlq", "replay", "--doer", doer), b"name the letters"),
        (("dlq", "replay", ""), b"too short"),
        (("dlq", "replay", "--", "-"), b"too short"),
        (("dlq", "replay", "--error-type", "internal"), b"'internal' is not one of"),
    ):
        refused = await learnops(settings_env, *args)
        assert refused.returncode == 2, args  # a wrong command line, after its usage line
        assert b"Usage: learnops dlq replay" in refused.stderr, refused.stderr
        assert fragment in refused.stderr and b"Traceback" not in refused.stderr, refused.stderr


async def test_a_replay_batch_publishes_what_no_replay_did_and_records_nothing_if_a_copy_fails(
    kafka_bootstrap: str, db: Any, settings: Any
) -> None:
    # `dlq replay` publishes and records a batch (dlq.REPLAY_BATCH) per transaction. Here on a
    # topic of the test's own, whose records take at most 2,000 bytes: no worker reads the
    # copies, and the broker refuses a larger one.
    name = f"test.replay-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, 2, 1, topic_configs={"max.message.bytes": "2000"})]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        found: dict[tuple[str, int, int], ReadBack] = {}
        for n in range(6):
            key, value = b"k%d" % n, b"value %d" % n
            sent = await producer.send_and_wait(name, key=key, value=value)
            found[(name, sent.partition, sent.offset)] = ReadBack(key, value)
        origins = list(found)
        big = (name, 1, 10_000)  # its copy is over the topic's limit
        found[big] = ReadBack(b"big", b"x" * 5_000)
        todo = {o: [partition_letter(o)] for o in found}
        first = origins[0]  # published and recorded by another replay already
        await record_replays(db, [Replay(*first, "Replayed", ("partition",), 0, 0, "other")])

        replays = await _replay(db, producer, origins[:4], found, todo, "tests")
        assert [(r.topic, r.partition, r.offset) for r in replays] == origins[1:4]
        at = [(name, r.new_partition, r.new_offset) for r in replays]
        copies = await read_records(settings, at)
        assert [
            (copies[c].key, copies[c].value, dict(copies[c].headers)[REPLAYED_FROM]) for c in at
        ] == [(*found[o], f"{o[0]}/{o[1]}/{o[2]}".encode()) for o in origins[1:4]]
        assert {r.actor for r in replays} == {"tests"}
        assert await _replay(db, producer, origins[:4], found, todo, "tests") == []

        # A copy the broker refuses fails its batch: none of the batch is recorded, so the
        # next replay publishes them again (the stages count a run or routing once).
        with pytest.raises(KafkaError):
            await _replay(db, producer, [origins[4], big, origins[5]], found, todo, "tests")
        recorded = await db.fetch(
            'SELECT topic, partition, "offset" FROM dead_letter_replays WHERE topic = $1', name
        )
        assert sorted(tuple(r) for r in recorded) == sorted(origins[:4])
    finally:
        await producer.stop()
