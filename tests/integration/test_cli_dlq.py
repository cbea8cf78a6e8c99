"""`learnops dlq list|show`: the letters the session worker wrote, and the refused input read
back from its topic, as an operator meets them."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from typing import Any

from tests.integration.kafka_io import eventually
from tests.services import REPO, WorkerProcess, learnops_command

RUNS = "learning.run-completed"


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*learnops_command(), *args], env=env, cwd=REPO, capture_output=True, timeout=120
    )


async def learnops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(_run, env, *args)


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

    for args, fragment in (
        (("dlq", "show", "0123"), b"too short"),
        (("dlq", "show", "00000000-dead"), b"no dead letter with event id"),
        (("dlq", "show", "%%%%%%%%"), b"hex digits and dashes"),
    ):
        refused = await learnops(settings_env, *args)
        assert refused.returncode == 1, refused
        assert fragment in refused.stderr and b"Traceback" not in refused.stderr
