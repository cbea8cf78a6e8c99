"""topics.yaml applied to the real broker: created, read back, idempotent, updated."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from agents.topics import TopicCatalog, TopicCatalogError, TopicSpec, describe, ensure
from tests.services import free_port, run_learnops


async def test_every_catalogue_topic_exists_with_the_files_partitions_and_configs(
    settings: Any, topics: TopicCatalog
) -> None:
    states = await describe(settings, sorted(topics.topics))
    assert sorted(states) == sorted(topics.topics)
    for name, spec in topics.topics.items():
        assert states[name].partitions == spec.partitions, name
        assert states[name].configs == spec.configs, name
    assert states["learning.policy-changes"].configs["cleanup.policy"] == "compact"
    assert states["learning.skill-cards"].configs["cleanup.policy"] == "compact"
    assert states["learning.run-completed"].configs["retention.ms"] == "604800000"


async def test_applying_the_catalogue_twice_changes_nothing(
    settings: Any, topics: TopicCatalog
) -> None:
    changes = await ensure(settings, topics)
    assert {c.action for c in changes} == {"unchanged"}
    assert len(changes) == len(topics.topics)


async def test_a_drifted_topic_config_is_put_back_and_partitions_grow(
    settings: Any, topics: TopicCatalog
) -> None:
    # A scratch topic, so the shared catalogue topics stay as the file says.
    name = f"learning.scratch-{id(settings)}"
    first = TopicSpec(
        name=name,
        partitions=1,
        replication_factor=1,
        key="doer",
        value="x",
        configs={"retention.ms": "1000000"},
    )
    assert [c.action for c in await ensure(settings, TopicCatalog({name: first}))] == ["created"]

    second = replace_spec(
        first, partitions=3, configs={"retention.ms": "2000000", "cleanup.policy": "delete"}
    )
    changes = await ensure(settings, TopicCatalog({name: second}))
    assert changes[0].action == "updated"
    state = (await describe(settings, [name]))[name]
    assert state.partitions == 3
    assert state.configs == {"retention.ms": "2000000", "cleanup.policy": "delete"}


def replace_spec(spec: TopicSpec, **changes: Any) -> TopicSpec:
    return spec.model_copy(update=changes)


async def test_a_replication_factor_the_cluster_cannot_have_is_said_not_hidden(
    settings: Any, settings_env: dict[str, str], topics: TopicCatalog, tmp_path: Any
) -> None:
    """`topics create --replication-factor 3` on this one-broker cluster: existing topics
    are reported as differing (Kafka changes replicas only by a reassignment), where it
    said "unchanged"; a new topic is refused in one sentence, where it was a traceback."""
    states = await describe(settings, sorted(topics.topics))
    assert {s.replication_factor for s in states.values()} == {1}
    existing = await asyncio.to_thread(
        run_learnops, settings_env, "topics", "create", "--replication-factor", "3", "--json"
    )
    assert existing.returncode == 0, existing.stderr
    changes = json.loads(existing.stdout)
    assert {c["action"] for c in changes} == {"differs"}
    assert all("replication factor 1 on the cluster, 3 asked" in c["detail"] for c in changes)

    catalog = tmp_path / "topics.yaml"
    name = f"learning.scratch-rf-{uuid.uuid4().hex[:8]}"
    catalog.write_text(f"topics:\n  {name}:\n    partitions: 1\n    key: doer\n    value: x\n")
    fresh = await asyncio.to_thread(
        run_learnops,
        {**settings_env, "LEARNOPS_TOPICS_FILE": str(catalog)},
        *("topics", "create", "--replication-factor", "3"),
    )
    assert fresh.returncode == 1, fresh.stdout
    lines = fresh.stderr.strip().splitlines()
    assert len(lines) == 1 and "the cluster refused the replication factor" in lines[0], lines


async def _make(settings: Any, name: str, partitions: int) -> None:
    spec = TopicSpec(name=name, partitions=partitions, replication_factor=1, key="doer", value="x")
    assert [c.action for c in await ensure(settings, TopicCatalog({name: spec}))] == ["created"]


async def test_partitions_do_not_grow_under_table_state_unless_asked(settings: Any) -> None:
    """Found by an operator trial: topics.yaml raised from 4 to 8 grew the inputs but not
    the tables' changelogs; the worker then crash-looped, and once the changelogs were
    grown by hand doers' daily counts were lost (their state stayed on the old partition)."""
    tag = uuid.uuid4().hex[:8]
    name, table = f"grow-{tag}", f"table{tag}"
    await _make(settings, name, 2)
    await _make(settings, f"someapp-{table}-changelog", 2)
    # Another system's changelog of that count is not learnops state.
    await _make(settings, f"streams-{tag}-other-changelog", 2)
    wider = TopicSpec(name=name, partitions=3, replication_factor=1, key="doer", value="x")
    with pytest.raises(TopicCatalogError, match=r"would grow from 2 to 3 partitions.*"):
        await ensure(settings, TopicCatalog({name: wider}), tables=[table])
    assert (await describe(settings, [name]))[name].partitions == 2, "nothing changed"
    assert await ensure(settings, TopicCatalog({name: wider}), tables=[f"no{tag}"])
    assert (await describe(settings, [name]))[name].partitions == 3
    wider = TopicSpec(name=name, partitions=4, replication_factor=1, key="doer", value="x")
    await _make(settings, f"someapp-{table}x-changelog", 3)
    changes = await ensure(
        settings, TopicCatalog({name: wider}), with_state=True, tables=[f"{table}x"]
    )
    assert [c.action for c in changes] == ["updated"]
    assert (await describe(settings, [name]))[name].partitions == 4


async def test_a_worker_refuses_to_start_when_its_changelogs_lost_the_inputs_count(
    settings: Any, settings_env: dict[str, str], tmp_path: Any
) -> None:
    app_id = f"repart{uuid.uuid4().hex[:8]}"
    await _make(settings, f"{app_id}-crl-daily-doer-changelog", 2)  # the inputs have 4
    env = {
        **settings_env,
        "LEARNOPS_APP_ID": app_id,
        "LEARNOPS_STAGES": "crl",
        "LEARNOPS_DATA_DIR": str(tmp_path / "data"),
        "LEARNOPS_WEB_PORT": str(free_port()),
    }
    started = await asyncio.to_thread(run_learnops, env, "worker")
    assert started.returncode != 0
    assert "this app id's table changelogs do not" in started.stderr, started.stderr[-2000:]
    assert f"{app_id}-crl-daily-doer-changelog 2" in started.stderr
    assert "Changing the partition count" in started.stderr


@pytest.mark.parametrize("seek_gap", [1, 2_000])
async def test_records_are_read_back_at_their_offsets_across_gaps_and_past_the_end(
    settings: Any, producer: Any, monkeypatch: pytest.MonkeyPatch, seek_gap: int
) -> None:
    # `learnops dlq replay` reads every refused record with one consumer, seeking across
    # gaps wider than SEEK_GAP and reading through narrower ones.
    import agents.topics as topics_module

    monkeypatch.setattr(topics_module, "SEEK_GAP", seek_gap)
    name = f"learning.scratch-read-{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name=name, partitions=2, replication_factor=1, key="doer", value="x")
    await ensure(settings, TopicCatalog({name: spec}))
    sent = {}
    for i in range(12):
        partition = i % 2
        meta = await producer.send_and_wait(
            name, key=b"k%d" % i, value=b"v%d" % i, partition=partition
        )
        sent[(name, partition, meta.offset)] = b"v%d" % i
    wanted = [o for o in sent if o[2] in (0, 2, 5)] + [(name, 0, 6), (name, 1, 99)]
    found = await topics_module.read_records(settings, wanted)
    assert set(found) == set(wanted)
    for origin in wanted:
        if origin in sent:
            assert found[origin] is not None and found[origin].value == sent[origin], origin
        else:
            assert found[origin] is None, origin  # at or past the partition's end
    assert await topics_module.read_record(settings, name, 1, 3) is not None
    with pytest.raises(TopicCatalogError, match="no topic"):
        await topics_module.read_records(settings, [("learning.no-such-topic", 0, 0)])


async def test_a_topic_is_read_from_its_start_and_a_missing_one_is_named_at_once(
    settings: Any, producer: Any
) -> None:
    import time

    from agents.topics import read_from_start
    from learnops.cli.main import explain

    name = f"learning.scratch-start-{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name=name, partitions=3, replication_factor=1, key="doer", value="x")
    await ensure(settings, TopicCatalog({name: spec}))
    for i in range(9):
        await producer.send_and_wait(name, key=b"k%d" % i, value=b"v%d" % i, partition=i % 3)
    assert sorted(r.value for r in await read_from_start(settings, name)) == [
        b"v%d" % i for i in range(9)
    ]
    # A command run before `learnops topics create` (e.g. `bandit show`) waited 40 s for
    # the metadata and then printed UnknownTopicOrPartitionError's traceback.
    began = time.monotonic()
    with pytest.raises(TopicCatalogError) as refused:
        await read_from_start(settings, "learning.no-such-topic")
    assert time.monotonic() - began < 10
    assert explain(refused.value, settings) == (
        f"no topic learning.no-such-topic on the cluster at {settings.kafka_bootstrap_servers}:"
        " `learnops topics create` creates the catalogue's topics"
    )


async def test_records_deleted_by_retention_during_the_read_are_gone_not_an_error(
    settings: Any, producer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Retention can delete the log's start between the look at it and the read; the
    # consumer then meets an offset out of range, which must mean "gone" for what lies
    # below the new start, and the rest is still read.
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    import agents.topics as topics_module

    name = f"learning.scratch-race-{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name=name, partitions=1, replication_factor=1, key="doer", value="x")
    await ensure(settings, TopicCatalog({name: spec}))
    for i in range(8):
        await producer.send_and_wait(name, key=b"k", value=b"v%d" % i, partition=0)
    tp = TopicPartition(name, 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=5)})
    finally:
        await admin.close()
    real = AIOKafkaConsumer.beginning_offsets
    stale = {"left": 1}

    async def seen_before_the_deletion(self: Any, partitions: Any) -> Any:
        starts = await real(self, partitions)
        if stale["left"]:  # the first look predates the deletion
            stale["left"] -= 1
            return {p: 0 for p in starts}
        return starts

    monkeypatch.setattr(AIOKafkaConsumer, "beginning_offsets", seen_before_the_deletion)
    found = await topics_module.read_records(settings, [(name, 0, 2), (name, 0, 6)])
    assert found[(name, 0, 2)] is None
    record = found[(name, 0, 6)]
    assert record is not None and record.value == b"v6"
