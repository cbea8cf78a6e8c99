"""topics.yaml applied to the real broker: created, read back, idempotent, updated."""

from __future__ import annotations

from typing import Any

from agents.topics import TopicCatalog, TopicSpec, describe, ensure


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
