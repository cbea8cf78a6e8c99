"""The bandit stage through a real worker, real Kafka and real PostgreSQL.

One doer's policy declares two models for its draft phase; bundles of the
small model score far better. The worker (crl, policy and bandit stages) must
publish allocations that move to the small model, send a run naming an
undeclared option to the DLQ with its reason, ignore replays, hold a frozen
doer's shares, and count each run once across a restart that redelivers
everything it read. A freeze is a signed command: an unsigned or forged one is
refused with its reason and the shares keep moving. An owner's `learnops bandit
propose` turns the confident request into a signed candidate version and the
tool_tuning experiment answering it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agents.topics import read_from_start
from learning.signing import (
    BANDIT_ALLOCATIONS_KIND,
    SigningKey,
    TrustedKeys,
    generate_key,
    sign_event,
    signed_artifact,
)
from learnops.client import Allocations
from learnops.client.allocations import check_allocations
from learnops.simulation.orchestrator import Orchestrator
from models.bandit import BanditAllocations, BanditControl
from models.bundle import Security
from models.commands import PromotePolicy, RegisterPolicy
from models.events import Alert, DeadLetter, RunCompleted
from models.ids import caused_event_id
from storage import policy_commands as commands_store
from storage.experiments import get_experiment
from storage.operator_keys import add_operator_key, grant_role
from storage.policies import find_policy
from storage.skills import open_requests, request_row
from tests.integration.kafka_io import eventually, publish
from tests.integration.test_experiment_evidence import frozen_golden
from tests.integration.test_policy_agent import applied_command
from tests.integration.test_policy_store import bootstrap, register
from tests.operators import signed
from tests.services import (
    REPO,
    WorkerProcess,
    end_offsets,
    free_port,
    run_learnops,
    start_after_inputs,
    start_group_at,
)

RUNS = "learning.run-completed"
SCORED = "learning.crl-computed"
ALLOCATIONS = "learning.bandit-allocations"
CONTROLS = "learning.bandit-controls"
PARAMETER = "router.model"
LARGE, SMALL = "model-a-large", "model-c-small"
EVERY = 20
PROBE_RUNS = 10
RISKY = "model-r-risky"


@pytest.fixture(scope="module")
async def bandit_worker(
    topics: Any, settings_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """A worker with the crl, policy, bandit, experiments and alerts stages, allocating every 20
    runs (alerts: the CLI reads a refused freeze's alert from PostgreSQL).

    An option is confidently best after 50 runs of it (not 200), so the test
    sees the experiment request, and the small model (not the policy's default)
    is off probation after 4 runs (not 20), so the first allocation may favour it.
    """
    folder = tmp_path_factory.mktemp("bandit")
    config = folder / "learning.yaml"
    packaged = (REPO / "config" / "learning.yaml").read_text()
    config.write_text(
        packaged.replace("  every: 100 ", f"  every: {EVERY} ")
        .replace("  min_runs: 200 ", "  min_runs: 50 ")
        .replace("  probation_runs: 20 ", "  probation_runs: 4 ")
        .replace("  probe_runs: 150 ", f"  probe_runs: {PROBE_RUNS} ")
    )
    env = {
        **settings_env,
        "LEARNOPS_STAGES": "crl,policy,bandit,experiments,alerts",
        "LEARNOPS_CONFIG_FILE": str(config),
        "LEARNOPS_WEB_PORT": str(free_port()),
    }
    process = WorkerProcess(env=env, log_path=Path(folder) / "worker.log")
    await start_after_inputs(process)
    yield process
    await asyncio.to_thread(process.stop)


async def _allocations(settings: Any, doer: str) -> list[BanditAllocations]:
    """The doer's records the stage sent: signed with the worker's key (the tests' have one)."""
    worker = settings.worker_key()
    assert worker is not None
    ring = TrustedKeys()
    ring.add(worker.public_key)
    return [
        found
        for r in await read_from_start(settings, ALLOCATIONS)
        if r.key == doer.encode()
        and check_allocations(
            found := BanditAllocations.from_json(r.value), r.key, ring, stale=False
        )
        is None
    ]


async def _dead_letters(settings: Any, doer: str) -> list[DeadLetter]:
    return [
        letter
        for r in await read_from_start(settings, "learning.dlq")
        if r.key == doer.encode() and (letter := DeadLetter.from_json(r.value)).stage == "bandit"
    ]


async def _dead_letter_naming(settings: Any, doer: str, option: str) -> DeadLetter:
    letters = await eventually(
        lambda: _dead_letters(settings, doer),
        lambda found: any(option in d.reason for d in found),
        timeout=90.0,
    )
    return next(d for d in letters if option in d.reason)


def _runs(allocations: BanditAllocations) -> int:
    found = allocations.allocation("draft", PARAMETER)
    return found.runs if found else 0


class Doer:
    """A doer whose policy declares two models, and bundles naming one of them."""

    def __init__(self, producer: Any, env: dict[str, str]) -> None:
        self.env = env
        self.name = f"Bandit{uuid.uuid4().hex[:8]}"
        self.policy = self.name.lower()
        self.producer = producer
        self.orchestrator = Orchestrator(seed=20, doers=(self.name,), run_prefix=self.policy)

    def bundle(self, option: str, **update: Any) -> RunCompleted:
        quality = 0.95 if option == SMALL else 0.3
        b = self.orchestrator.bundle(
            self.name, policy=(self.policy, 1), quality=quality, phase="draft"
        )
        return b.model_copy(update={"options": {PARAMETER: option}, **update})

    async def run(self, n: int, **update: Any) -> None:
        bundles = [self.bundle((LARGE, SMALL)[i % 2], **update) for i in range(n)]
        await self.send(RUNS, *bundles)

    async def send(self, topic: str, *events: Any) -> None:
        await publish(self.producer, topic, [(e.doer.encode(), e.to_json()) for e in events])


async def registered_doer(
    producer: Any, env: dict[str, str], db: Any, key: SigningKey, models: tuple[str, ...] = ()
) -> Doer:
    """A fresh doer whose signed policy v1 declares the models (the two), registered."""
    doer = Doer(producer, env)
    declared = list(models or (LARGE, SMALL))
    body = {"prompts": {"system": "Draft."}, "tunables": {"draft": {PARAMETER: declared}}}
    await register_version(doer, db, key, 1, body, "two models to choose from")
    return doer


async def active_tuned_doer(db: Any, key: SigningKey, prefix: str) -> str:
    """A fresh doer whose active v1 leaves the two models open (applied in the store)."""
    doer = f"{prefix}{uuid.uuid4().hex[:8]}"
    body = {"prompts": {"system": "Draft."}, "tunables": {"draft": {PARAMETER: [LARGE, SMALL]}}}
    registered = await commands_store.apply_command(db, register(doer, key, 1, body))
    assert registered is not None and registered.applied, registered
    first = PromotePolicy(
        doer=doer, actor="tests", reason="first", policy_id=doer.lower(), version=1, force=True
    )
    promoted = await commands_store.apply_command(db, first)
    assert promoted is not None and promoted.applied, promoted
    return doer


async def register_version(
    doer: Doer, db: Any, key: SigningKey, version: int, body: dict[str, Any], reason: str
) -> None:
    """Register ``body`` signed as the doer's policy ``version``; wait until it is stored."""
    register = RegisterPolicy(
        doer=doer.name,
        actor="tests",
        reason=reason,
        policy_id=doer.policy,
        version=version,
        **signed_artifact(body, key, doer=doer.name, policy_id=doer.policy, version=version),
    )
    await doer.send("learning.commands", signed(register))
    await eventually(lambda: find_policy(db, doer.policy, version), lambda p: p is not None)


async def test_allocations_move_to_the_better_option_and_survive_freeze_and_restart(
    bandit_worker: WorkerProcess, producer: Any, db: Any, settings: Any, signing_key: SigningKey
) -> None:
    doer = await registered_doer(producer, bandit_worker.env, db, signing_key)
    bootstrap = settings.kafka_bootstrap_servers
    start = await end_offsets(bootstrap, (RUNS, SCORED, CONTROLS))

    # 200 live runs, replays that must not count, and one undeclared option.
    await doer.run(200)
    await doer.run(40, replay_id="rp-bandit")
    await doer.send(RUNS, doer.bundle("model-z-unknown"))
    letter = await _dead_letter_naming(settings, doer.name, "model-z-unknown")
    assert letter.error_type == "option"
    assert "is not one the policy declares" in letter.reason
    history = await _allocations(settings, doer.name)
    assert history, "no allocation published"
    # Published at its first run (when that batch held fewer than `every` runs): the
    # version's starting shares, the default (first declared) above the floor.
    started = [a for a in history if a.allocations[0].sequence == 0]
    assert all(a.allocations[0].shares[LARGE] > a.allocations[0].shares[SMALL] for a in started)
    moved = [a for a in history if a.allocations[0].sequence >= 1]
    assert moved, "no reallocation published"
    assert all(a.allocations[0].shares[SMALL] > 0.5 for a in moved)
    assert [a.sequence for a in history] == sorted(a.sequence for a in history)
    learned = history[-1].allocation("draft", PARAMETER)
    assert learned is not None
    assert 1 <= learned.sequence <= 200 // EVERY  # at most one allocation per batch
    assert learned.shares[SMALL] > 0.9 > learned.shares[LARGE]

    # Confidently best: one open request for the experiment that fixes it.
    requests = await eventually(lambda: open_requests(db, doer.name), lambda r: len(r) == 1)
    (request,) = requests
    assert request["reason"] == f"bandit:{doer.policy}@1:draft/{PARAMETER}={SMALL}"
    evidence = request["evidence"]
    assert evidence["experiment_type"] == "tool_tuning" and evidence["option"] == SMALL
    assert evidence["candidate_artifact"]["fixed"] == {"draft": {PARAMETER: SMALL}}
    assert "tunables" not in evidence["candidate_artifact"]

    # Frozen: the record shows every live run folded; runs still arrive, shares stay.
    frozen = await freeze(doer, settings, db, True)
    assert _runs(frozen) == 200
    await doer.run(100)
    await doer.send(RUNS, doer.bundle("model-y-unknown"))
    await _dead_letter_naming(settings, doer.name, "model-y-unknown")  # the 100 are folded
    assert (await _allocations(settings, doer.name))[-1] == frozen
    # Frozen again: said, so it is not read as the freeze that held them.
    again = await asyncio.to_thread(
        run_learnops, doer.env, *("bandit", "freeze", doer.name, "--reason", "t", "--no-wait")
    )
    assert again.returncode == 0, again.stderr
    said = f"note: {doer.name}'s allocations are frozen already (sequence {frozen.sequence})"
    assert said in again.stderr, again.stderr

    # Unfrozen: the runs folded while frozen count at once.
    thawed = await freeze(doer, settings, db, False)
    assert _runs(thawed) == 300 and thawed.sequence == frozen.sequence + 1

    # The orchestrator's client, pinning the worker's key, takes the same signed shares and
    # routes tasks by them.
    assert all(a.signature for a in await _allocations(settings, doer.name))
    worker_key = settings.worker_key()
    assert worker_key is not None
    async with Allocations(bootstrap, trusted_keys=[worker_key.public_key]) as client:
        # Taken under the pinned key (doers of other sessions on a shared broker, signed with
        # their own workers' keys, are refused: test_client_allocations covers refusals).
        await eventually(lambda: _held(client, doer.name), lambda a: a is not None and a == thawed)
        picks = [client.option(doer.name, "draft", PARAMETER, f"task-{i}") for i in range(2000)]
    share = thawed.allocation("draft", PARAMETER)
    assert share is not None
    assert picks.count(SMALL) / len(picks) == pytest.approx(share.shares[SMALL], abs=0.03)

    # A restart that reads every record again (and re-scores every bundle) counts none twice.
    await asyncio.to_thread(bandit_worker.stop)
    await start_group_at(bootstrap, bandit_worker.app_id, start)
    await asyncio.to_thread(bandit_worker.start)
    await doer.run(EVERY)
    await doer.send(RUNS, doer.bundle("model-w-unknown"))
    await _dead_letter_naming(settings, doer.name, "model-w-unknown")
    assert _runs(await freeze(doer, settings, db, True)) == 300 + EVERY
    # The first freeze, read again, is older than the unfreeze applied after it: refused.
    first_freeze = await db.fetchval(
        "SELECT event_id FROM applied_commands WHERE doer = $1 AND action = 'freeze_bandit' "
        "ORDER BY issued_at LIMIT 1",
        doer.name,
    )
    replayed = await _refusal(settings, doer.name, first_freeze)
    assert replayed.evidence["refusal"] == "replayed", replayed.message
    shown = await asyncio.to_thread(run_learnops, doer.env, "bandit", "show", doer.name, "--json")
    assert shown.returncode == 0, shown.stderr
    assert BanditAllocations.model_validate_json(shown.stdout).frozen
    misspelt = await asyncio.to_thread(
        run_learnops, doer.env, "bandit", "show", doer.name.lower() + "x"
    )
    assert misspelt.returncode == 1
    assert f"did you mean '{doer.name}'?" in misspelt.stderr, misspelt.stderr
    # Lower-cased, as policy ids are: the doer is found regardless of case, even beside
    # a record anyone wrote under the lower-cased name (unsigned, "moving", a higher
    # sequence): a red-team trial froze such a decoy while the doer moved on.
    held = BanditAllocations.model_validate_json(shown.stdout)
    decoy = held.model_copy(
        update={
            "doer": doer.name.lower(),
            "frozen": False,
            "sequence": held.sequence + 100,
            "signature": None,
        }
    )
    # And under the doer's own name: unsigned, and signed by a policy signer's key (in the
    # keyring, never the stage's): neither is the latest however numbered.
    impostor = decoy.model_copy(update={"doer": doer.name})
    by_signer = impostor.model_copy(update={"sequence": held.sequence + 200})
    by_signer = by_signer.model_copy(
        update={
            "signature": sign_event(
                BANDIT_ALLOCATIONS_KIND, by_signer.model_dump(mode="json"), signing_key
            )
        }
    )
    await publish(
        doer.producer,
        ALLOCATIONS,
        [
            (decoy.doer.encode(), decoy.to_json()),
            (doer.name.encode(), impostor.to_json()),
            (doer.name.encode(), by_signer.to_json()),
        ],
    )
    folded = await asyncio.to_thread(
        run_learnops, doer.env, "bandit", "show", doer.name.lower(), "--json"
    )
    assert folded.returncode == 0, folded.stderr
    assert BanditAllocations.model_validate_json(folded.stdout).doer == doer.name
    assert BanditAllocations.model_validate_json(folded.stdout).frozen
    assert len(await open_requests(db, doer.name)) == 1
    letters = await _dead_letters(settings, doer.name)
    assert sorted(d.reason.split("'")[1] for d in letters) == [
        "model-w-unknown",
        "model-y-unknown",
        "model-z-unknown",
    ]

    # Stored for the console (migration 036): one row per record the stage sent, however
    # often the restart sent it again, and in force the freeze sent last.
    published = await _allocations(settings, doer.name)
    rows = await db.fetch(
        "SELECT sequence, frozen, allocations FROM bandit_allocations WHERE doer = $1", doer.name
    )
    assert sorted((r["sequence"], r["frozen"]) for r in rows) == sorted(
        {(a.sequence, a.frozen) for a in published}
    )
    last = published[-1]
    stored = {(r["sequence"], r["frozen"]): r["allocations"] for r in rows}
    assert stored[(last.sequence, last.frozen)] == [
        p.model_dump(mode="json") for p in last.allocations
    ]
    (in_force,) = await db.fetch("SELECT * FROM v_bandit_in_force WHERE doer = $1", doer.name)
    assert in_force["frozen"] and in_force["doer_sequence"] == last.sequence
    assert in_force["runs"] == 300 + EVERY and in_force["parameter"] == PARAMETER
    assert in_force["shares"] == last.allocations[0].shares
    history = await db.fetch(
        "SELECT sequence FROM v_bandit_history WHERE doer = $1 ORDER BY sent_at", doer.name
    )
    assert [r["sequence"] for r in history] == sorted(
        {a.allocations[0].sequence for a in published}
    )


async def test_probes_release_a_clean_option_and_hold_one_with_a_security_critical(
    bandit_worker: WorkerProcess, producer: Any, db: Any, settings: Any, signing_key: SigningKey
) -> None:
    doer = await registered_doer(
        producer, bandit_worker.env, db, signing_key, models=(LARGE, SMALL, RISKY)
    )
    clean = {"security": Security(criticals=0), "api_breakages": 0}

    def reallocations(history: list[BanditAllocations]) -> int:
        return max((a.allocations[0].sequence for a in history if a.allocations), default=0)

    async def live(n: int) -> BanditAllocations:
        """Send n runs of the default model; the record of the reallocation they bring.

        (Not the record the version's first run publishes: its starting shares.)
        """
        before = reallocations(await _allocations(settings, doer.name))
        await doer.send(RUNS, *(doer.bundle(LARGE, **clean) for _ in range(n)))
        history = await eventually(
            lambda: _allocations(settings, doer.name),
            lambda h: reallocations(h) > before,
            timeout=90.0,
        )
        return history[-1]

    # The default model only: the other two are on probation, and the record asks for probes.
    first = (await live(EVERY)).allocation("draft", PARAMETER)
    assert first is not None
    assert first.probes == [SMALL, RISKY] and first.probe_share == 0.5
    assert first.shares[SMALL] == first.shares[RISKY] == pytest.approx(0.02)
    worker_key = settings.worker_key()
    assert worker_key is not None
    async with Allocations(
        settings.kafka_bootstrap_servers, trusted_keys=[worker_key.public_key]
    ) as client:
        # The reallocation's record (the start's, sequence 0, asks for no probes).
        await eventually(
            lambda: _held(client, doer.name),
            lambda a: a is not None and a.allocations[0].sequence >= 1,
        )
        asked = [client.probes(doer.name, "draft", PARAMETER, f"task-{i}") for i in range(2000)]
    assert sum(SMALL in a for a in asked) / len(asked) == pytest.approx(0.5, abs=0.04)

    # The orchestrator runs them in shadow: the small model's probes are clean, the risky
    # one's first six have a security critical each, which no live run had.
    probe = {"shadow": True, **clean}
    await doer.send(RUNS, *(doer.bundle(SMALL, **probe) for _ in range(PROBE_RUNS)))
    critical = {**probe, "security": Security(criticals=1)}
    await doer.send(RUNS, *(doer.bundle(RISKY, **critical) for _ in range(6)))
    await doer.send(RUNS, *(doer.bundle(RISKY, **probe) for _ in range(PROBE_RUNS)))
    second = (await live(EVERY)).allocation("draft", PARAMETER)
    assert second is not None
    assert second.runs == 2 * EVERY  # probes are not live runs
    assert second.shares[SMALL] > 0.02  # released by its probes, with no live run of its own
    assert second.shares[RISKY] == pytest.approx(0.02)  # held on the floor for good
    assert second.probes == []  # one cleared, one held: nothing left to probe
    assert not await _dead_letters(settings, doer.name)


async def _held(client: Allocations, doer: str) -> BanditAllocations | None:
    return client.latest(doer)


async def freeze(doer: Doer, settings: Any, db: Any, frozen: bool) -> BanditAllocations:
    """`learnops bandit freeze|unfreeze DOER`; the allocations record the stage publishes after."""
    before = len(await _allocations(settings, doer.name))
    verb = "freeze" if frozen else "unfreeze"
    # The freeze as text, the unfreeze as JSON: both name the signed control's id. The
    # unfreeze names the doer in lower case: the CLI sends it under the name runs give.
    json_flag = () if frozen else ("--json",)
    done = await asyncio.to_thread(
        run_learnops,
        doer.env,
        "bandit",
        verb,
        doer.name if frozen else doer.name.lower(),
        "--actor",
        "ops",
        "--reason",
        "test",
        *json_flag,
    )
    assert done.returncode == 0, done.stderr
    # The CLI waits until the bandit stage applied it (the row below is there already).
    if frozen:
        assert done.stdout.startswith(f"{doer.name}: frozen (applied "), done.stdout
        event_id = done.stdout.split("(applied ")[1].split(",")[0]
    else:
        sent = json.loads(done.stdout)
        assert (sent["doer"], sent["frozen"], sent["sent"]) == (doer.name, False, True), sent
        assert sent["applied"] is True and sent["has_allocations"] is True, sent
        assert sent["note"] is None, sent
        event_id = sent["event_id"]

    async def probe() -> list[BanditAllocations]:
        return await _allocations(settings, doer.name)

    found = await eventually(
        probe, lambda a: any(r.frozen == frozen for r in a[before:]), timeout=90.0
    )
    # The audit names the key's operator (tests.operators: "tests"), not the declared actor.
    applied = await applied_command(db, uuid.UUID(event_id))
    assert (applied["action"], applied["operator"]) == (f"{verb}_bandit", "tests")
    assert applied["reason"] == "test"  # the operator's --reason, kept with the audit
    return next(r for r in found[before:] if r.frozen == frozen)


async def test_freezing_a_doer_with_no_allocations_sends_it_and_says_so(
    settings_env: dict[str, str], db: Any, signing_key: SigningKey
) -> None:
    """A freeze ahead of a doer's first allocation holds from then on, so it is sent, under
    the name the policy store knows (typed in any case), with a note; a name neither the
    store nor the allocations know would freeze nothing anyone routes by: refused."""
    name = f"NoBandit{uuid.uuid4().hex[:8]}"
    unknown = await asyncio.to_thread(
        run_learnops, settings_env, "bandit", "freeze", name, "--reason", "ahead of time"
    )
    assert unknown.returncode == 1, unknown.stdout
    assert f"no doer '{name}' in the policy store or on learning.bandit-allocations" in (
        unknown.stderr
    )
    assert "nothing sent" in unknown.stderr and "sent as" not in unknown.stdout
    await bootstrap(db, name, signing_key)
    # --no-wait: no bandit stage need run for this doer's name and note to be right.
    text = await asyncio.to_thread(
        run_learnops,
        settings_env,
        "bandit",
        "freeze",
        name.lower(),
        "--reason",
        "ahead",
        "--no-wait",
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"{name}: frozen sent as"), text.stdout
    # Its active policy declares nothing to allocate: the freeze can only hold a later version.
    declares = f"its active policy {name.lower()}@1 declares no tunables"
    assert f"note: {name}: {declares}" in text.stderr, text.stderr
    assert "holds from the first allocation of a later version that declares some" in text.stderr
    shown = await asyncio.to_thread(run_learnops, settings_env, "bandit", "show", name)
    assert shown.returncode == 1 and f"no allocations of '{name}'" in shown.stderr, shown
    assert declares in shown.stderr and "did you mean" not in shown.stderr, shown.stderr
    # A doer whose active policy leaves options open: the freeze holds from its first shares.
    tuned = await active_tuned_doer(db, signing_key, "Tuned")
    shown = await asyncio.to_thread(run_learnops, settings_env, "bandit", "show", tuned)
    assert shown.returncode == 1, shown.stdout
    assert f"its active policy {tuned.lower()}@1 leaves draft/{PARAMETER} open" in shown.stderr
    done = await asyncio.to_thread(
        run_learnops,
        settings_env,
        *("bandit", "unfreeze", tuned, "--reason", "ahead", "--json", "--no-wait"),
    )
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)
    assert (sent["doer"], sent["sent"], sent["has_allocations"]) == (tuned, True, False), sent
    assert f"{tuned} has no allocations on learning.bandit-allocations yet" in sent["note"]
    assert "the unfreeze holds from its first allocation on" in sent["note"]


async def test_a_new_active_version_is_published_at_its_first_run_and_late_old_runs_skip(
    bandit_worker: WorkerProcess, producer: Any, db: Any, settings: Any, signing_key: SigningKey
) -> None:
    """After a promotion, runs of the version before it still arrive for a while (a
    canary's control runs in flight). They used to start that version's bandits again,
    wiping the new one's evidence (and its guardrails) back and forth; and the new
    version's shares went out only after `every` of its runs, so the Router client kept
    the old version's options meanwhile."""
    doer = await registered_doer(producer, bandit_worker.env, db, signing_key)
    body = {"prompts": {"system": "Draft, v2."}, "tunables": {"draft": {PARAMETER: [LARGE, SMALL]}}}
    await register_version(doer, db, signing_key, 2, body, "a new prompt, the same models")
    # v1 ran first, then v2 became the doer's active policy (as a promotion records it).
    await doer.send(RUNS, doer.bundle(LARGE))
    first = await eventually(
        lambda: _allocations(settings, doer.name),
        lambda found: any(_runs(a) == 1 for a in found),  # v1's first shares, at its first run
        timeout=90.0,
    )
    assert {a.allocations[0].policy_version for a in first} == {1}
    promoted = await commands_store.apply_command(
        db,
        PromotePolicy(
            doer=doer.name, actor="tests", reason="v2", policy_id=doer.policy, version=2, force=True
        ),
    )
    assert promoted is not None and promoted.applied, promoted
    # Until then the latest record holds v1's shares, which route no task of v2: said.
    shown = await asyncio.to_thread(run_learnops, doer.env, "bandit", "show", doer.name)
    assert shown.returncode == 0, shown.stderr
    assert f"active policy is {doer.policy}@2; the shares below are of {doer.policy}@1" in (
        " ".join(shown.stderr.split())
    ), shown.stderr

    def v2(option: str) -> RunCompleted:
        return doer.bundle(option).model_copy(update={"policy_version": 2})

    await doer.send(RUNS, v2(SMALL))
    started = await eventually(
        lambda: _allocations(settings, doer.name),
        lambda found: any(a.allocations[0].policy_version == 2 for a in found),
        timeout=90.0,
    )
    new = next(a for a in started if a.allocations[0].policy_version == 2)
    assert _runs(new) == 1 and new.sequence > max(a.sequence for a in first)
    shown = await asyncio.to_thread(run_learnops, doer.env, "bandit", "show", doer.name)
    assert shown.returncode == 0 and "note:" not in shown.stderr, shown.stderr
    # Its start asks for the small model's probes, and `bandit show` says so.
    assert new.allocations[0].probes == [SMALL] and new.allocations[0].probe_share == 0.5
    assert "50% of tasks" in shown.stdout, shown.stdout
    # Late runs of v1, then v2's own up to its first reallocation.
    await doer.run(10)
    await doer.send(RUNS, *(v2((LARGE, SMALL)[i % 2]) for i in range(EVERY - 1)))
    history = await eventually(
        lambda: _allocations(settings, doer.name),
        lambda found: any(
            a.allocations[0].policy_version == 2 and _runs(a) == EVERY for a in found
        ),
        timeout=90.0,
    )
    after = history[history.index(new) :]
    assert all(a.allocations[0].policy_version == 2 for a in after), [
        (a.sequence, a.allocations[0].policy_version, _runs(a)) for a in after
    ]
    assert "bandit_run_skipped" in bandit_worker.log_path.read_text(errors="replace")
    # A run of a version the store has never seen is no late run: dead-lettered as the
    # docs say, not skipped (a new operator's walk found it skipped at INFO).
    await doer.send(RUNS, doer.bundle(SMALL).model_copy(update={"policy_version": 7}))
    letter = await _dead_letter_naming(settings, doer.name, f"{doer.policy}@7")
    assert letter.reason == f"policy {doer.policy}@7 is not in the policy store"
    assert letter.error_type == "unknown_policy"  # not "option": no option of it is wrong


async def test_an_unsigned_or_forged_freeze_is_refused_and_the_allocations_keep_moving(
    bandit_worker: WorkerProcess,
    producer: Any,
    db: Any,
    settings: Any,
    signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    doer = await registered_doer(producer, bandit_worker.env, db, signing_key)
    await doer.run(EVERY)
    first = await eventually(  # the first reallocation (not only the start's record)
        lambda: _allocations(settings, doer.name),
        lambda a: any(x.allocations[0].sequence >= 1 for x in a),
        timeout=90.0,
    )
    unsigned = BanditControl(doer=doer.name, command="freeze_bandit", actor="ops", reason="hold it")
    # Signed by a registered owner, then altered: the signature no longer matches.
    forged = signed(
        BanditControl(doer=doer.name, command="unfreeze_bandit", actor="ops", reason="go")
    ).model_copy(update={"command": "freeze_bandit"})
    await doer.send(CONTROLS, unsigned, forged)

    for control, refusal in ((unsigned, "unsigned"), (forged, "signature")):
        alert = await _refusal(settings, control.doer, control.event_id)
        assert alert.evidence["refusal"] == refusal, alert.message
        assert alert.message.startswith("freeze_bandit refused: ")
        assert (
            await db.fetchval(
                "SELECT count(*) FROM applied_commands WHERE event_id = $1", control.event_id
            )
            == 0
        )

    # Through the CLI, with a key that may only view: refused, and the CLI says so.
    viewer = generate_key()
    await add_operator_key(db, viewer.public_key, operator="auditor", actor="tests")
    await grant_role(db, viewer.key_id, "*", "viewer", actor="tests")
    key_file = tmp_path / "viewer.pem"
    key_file.write_bytes(viewer.to_pem())
    refused = await asyncio.to_thread(
        run_learnops,
        {**bandit_worker.env, "LEARNOPS_OPERATOR_KEY": str(key_file)},
        *("bandit", "freeze", doer.name, "--reason", "hold it", "--timeout", "60"),
    )
    assert refused.returncode == 1, refused.stdout
    assert "learnops: freeze_bandit refused: " in refused.stderr, refused.stderr
    assert "needs the operator role" in refused.stderr, refused.stderr

    # Not frozen: the next runs move the shares again.
    await doer.run(EVERY)
    later = await eventually(
        lambda: _allocations(settings, doer.name),
        lambda a: a[-1].sequence > first[-1].sequence,
        timeout=90.0,
    )
    assert not any(a.frozen for a in later)


async def _refusal(settings: Any, doer: str, event_id: uuid.UUID) -> Alert:
    """The command_refused alert of a control on learning.alerts (waits, fails loudly if none)."""
    wanted = caused_event_id("alert", event_id)

    async def probe() -> list[Alert]:
        records = await read_from_start(settings, "learning.alerts")
        alerts = [Alert.from_json(r.value) for r in records if r.key == doer.encode()]
        return [a for a in alerts if a.event_id == wanted]

    found = await eventually(probe, lambda a: len(a) > 0, timeout=90.0)
    assert found, f"no refusal alert for {event_id}"
    assert found[0].kind == "command_refused"
    return found[0]


async def test_an_owner_proposes_the_confident_option_as_a_signed_tool_tuning_experiment(
    bandit_worker: WorkerProcess,
    producer: Any,
    db: Any,
    settings: Any,
    signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    doer = await registered_doer(producer, bandit_worker.env, db, signing_key)
    await frozen_golden(db, doer.name)  # propose checks the draft tasks to replay on
    await doer.run(200)
    (request,) = await eventually(
        lambda: open_requests(db, doer.name), lambda r: len(r) == 1, timeout=90.0
    )
    evidence = request["evidence"]
    key_file = tmp_path / "owner-policy-key.pem"
    key_file.write_bytes(signing_key.to_pem())

    def propose(request_id: str, *more: str) -> Any:
        return run_learnops(
            doer.env,
            "bandit",
            "propose",
            request_id,
            "--key",
            str(key_file),
            "--actor",
            "owner",
            *more,
        )

    # A request about a version no longer active is stale: its candidate would undo what
    # the active version changed. Refused, nothing registered. (v1 promoted here: the
    # bandit followed its runs while the doer had no active policy.)
    promoted = await commands_store.apply_command(
        db,
        PromotePolicy(
            doer=doer.name, actor="tests", reason="v1", policy_id=doer.policy, version=1,
            force=True,
        ),
    )  # fmt: skip
    assert promoted is not None and promoted.applied
    stale_id = uuid.uuid4()
    stale_evidence = {
        **evidence,
        "parent": f"{doer.policy}@7",
        "experiment_id": f"{evidence['experiment_id']}-stale",
    }
    await db.execute(
        "INSERT INTO experiment_requests (request_id, doer, reason, hypothesis, message,"
        " evidence) VALUES ($1, $2, $3, $4, $5, $6)",
        stale_id,
        doer.name,
        f"{request['reason']}-stale",
        request["hypothesis"],
        request["message"],
        stale_evidence,
    )
    stale = await asyncio.to_thread(propose, str(stale_id))
    assert stale.returncode == 1
    assert f"is about {doer.policy}@7, and {doer.policy}@1 is" in stale.stderr, stale.stderr
    assert await find_policy(db, doer.policy, 2) is None

    # A margin looser than the worker's canary limits (0.25): refused before anything is sent.
    loose = await asyncio.to_thread(propose, str(request["request_id"]), "--margin", "0.3")
    assert loose.returncode == 1, loose.stderr
    assert "looser than this service allows" in loose.stderr, loose.stderr
    assert await find_policy(db, doer.policy, 2) is None

    done = await asyncio.to_thread(propose, str(request["request_id"]), "--json")
    assert done.returncode == 0, done.stderr
    answered = json.loads(done.stdout)  # one document: the steps' lines held back
    assert answered["experiment_id"] == evidence["experiment_id"], answered
    assert answered["experiment_type"] == "tool_tuning"
    assert answered["candidate"] == f"{doer.policy}@2"
    assert answered["request_id"] == str(request["request_id"])

    # The candidate: the next version, signed by the owner's policy key, fixing the small model.
    candidate = await find_policy(db, doer.policy, 2)
    assert candidate is not None
    assert candidate.key_id == signing_key.key_id
    assert candidate.artifact["fixed"] == {"draft": {PARAMETER: SMALL}}
    assert "tunables" not in candidate.artifact
    assert (candidate.parent_policy_id, candidate.parent_version) == (doer.policy, 1)
    assert candidate.experiment_id == evidence["experiment_id"]

    # The experiment in the registry, of the request's type and id, answering it.
    experiment = await eventually(
        lambda: get_experiment(db, evidence["experiment_id"]), lambda e: e is not None
    )
    assert experiment["experiment_type"] == "tool_tuning"
    assert experiment["request_id"] == request["request_id"]
    # Judged "no worse": the control already runs mostly the option the candidate fixes.
    assert experiment["plan"]["canary"]["mode"] == "non_inferiority", experiment["plan"]
    assert (experiment["policy_id"], experiment["policy_version"]) == (doer.policy, 2)
    answered = await eventually(
        lambda: request_row(db, request["request_id"]),
        lambda r: r["experiment_id"] == evidence["experiment_id"],
    )
    assert answered["experiment_id"] == evidence["experiment_id"]

    # Proposing it again is refused with its reason; nothing more is registered.
    again = await asyncio.to_thread(propose, str(request["request_id"]))
    assert again.returncode == 1
    assert evidence["experiment_id"] in again.stderr
    assert await find_policy(db, doer.policy, 3) is None
    # By the start of its id, as `experiment requests` shows it: the same request.
    short = await asyncio.to_thread(propose, str(request["request_id"])[:8])
    assert short.returncode == 1 and evidence["experiment_id"] in short.stderr, short.stderr
    unknown = await asyncio.to_thread(propose, str(uuid.uuid4()))
    assert unknown.returncode == 1 and "no experiment request" in unknown.stderr


async def _stored_runs(db: Any, doer: str) -> dict[bool, int]:
    """The doer's stored runs by ``shadow``."""
    rows = await db.fetch(
        "SELECT shadow, count(*) AS runs FROM crl_results WHERE doer = $1 GROUP BY shadow", doer
    )
    return {r["shadow"]: r["runs"] for r in rows}


async def test_demo_traffic_names_each_runs_option_as_the_latest_allocation_picks_it(
    bandit_worker: WorkerProcess, db: Any, settings: Any, signing_key: SigningKey
) -> None:
    """A new operator had no way from the CLI to feed runs naming options (demo traffic
    named none): it wrote a producer of its own. With --option-cost, runs of the active
    version name the policy's default before any allocation, then the allocation's picks,
    with the probes it asks for, each at its option's cost."""
    doer = await active_tuned_doer(db, signing_key, "Traffic")

    async def traffic(tasks: int) -> Any:
        sent = await asyncio.to_thread(
            run_learnops,
            bandit_worker.env,
            *("demo", "traffic", doer, "--tasks", str(tasks)),
            *("--option-cost", f"{PARAMETER}={SMALL}:0.5"),
        )
        assert sent.returncode == 0, sent.stderr
        return sent.stdout

    said = await traffic(40)
    assert f"draft/{PARAMETER} by the policy's default {LARGE} (no allocation yet): " in said
    assert f"{LARGE} 40" in said
    allocated = await eventually(
        lambda: db.fetchrow(
            "SELECT sequence, allocations FROM bandit_allocations WHERE doer = $1"
            " ORDER BY sequence DESC, last_sent_at DESC LIMIT 1",
            doer,
        ),
        lambda row: row is not None,
    )
    assert allocated is not None
    said = await traffic(200)
    assert f"draft/{PARAMETER} by allocation {allocated['sequence']}: " in said, said
    assert f"probe {SMALL}" in said, said  # on probation at the floor: probed in shadow

    # Every run stored, the probes as shadow runs (guardrail evidence only); the bandit
    # folded the live ones (its last allocation counts all but the runs since it, < EVERY),
    # and dead-lettered none for its option.
    def stored(counts: dict[bool, int]) -> bool:
        return counts.get(False) == 240 and counts.get(True, 0) > 0

    counts = await eventually(lambda: _stored_runs(db, doer), stored)
    assert stored(counts), counts
    folded = await eventually(
        lambda: db.fetchval(
            "SELECT max((a->>'runs')::int) FROM bandit_allocations,"
            " jsonb_array_elements(allocations) AS a WHERE doer = $1",
            doer,
        ),
        lambda runs: runs > 240 - EVERY,
    )
    assert 240 - EVERY < folded <= 240
    assert not await _dead_letters(settings, doer)
    refused = await asyncio.to_thread(
        run_learnops,
        bandit_worker.env,
        *("demo", "traffic", doer, "--option-cost", f"{PARAMETER}=model-z:0.5"),
    )
    assert refused.returncode == 1 and "'model-z' is not an option of router.model" in (
        refused.stderr
    )
