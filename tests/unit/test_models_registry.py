"""The topic → event model registry agrees with topics.yaml and gives every schema."""

from __future__ import annotations

import importlib
from pathlib import Path

import orjson
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from models.commands import POLICY_COMMANDS, ApproveStep
from models.events import RunCompleted
from models.registry import TOPIC_EVENTS, adapter, decode, json_schemas
from tests.unit.sample_bundles import make_bundle

TOPICS_FILE = Path(__file__).resolve().parents[2] / "topics.yaml"


def test_every_topic_in_topics_yaml_has_the_model_it_names() -> None:
    declared = yaml.safe_load(TOPICS_FILE.read_text(encoding="utf-8"))["topics"]
    assert set(declared) == set(TOPIC_EVENTS)
    for topic, entry in declared.items():
        module, _, name = entry["value"].rpartition(".")
        named = getattr(importlib.import_module(module), name)
        registered = TOPIC_EVENTS[topic]
        if isinstance(registered, TypeAdapter):
            assert TypeAdapter(named).json_schema() == registered.json_schema(), topic
        else:
            assert named is registered, topic


def test_json_schemas_cover_every_topic_and_serialise() -> None:
    schemas = json_schemas()
    assert set(schemas) == set(TOPIC_EVENTS)
    for topic, schema in schemas.items():
        assert orjson.loads(orjson.dumps(schema)) == schema, topic
    bundle = schemas["learning.run-completed"]
    assert "run_id" in bundle["required"] and "doer" in bundle["required"]
    assert bundle["additionalProperties"] is False
    assert schemas["learning.commands"]["discriminator"]["propertyName"] == "command"


def test_decode_picks_the_topics_model() -> None:
    bundle = make_bundle()
    assert decode("learning.run-completed", bundle.to_json()) == bundle
    command = ApproveStep(doer="d", actor="ops", reason="looks fine", deployment_id="x", step=2)
    assert decode("learning.commands", command.to_json()) == command
    assert adapter("learning.commands") is POLICY_COMMANDS


def test_decode_rejects_an_event_of_another_topic() -> None:
    with pytest.raises(ValidationError):
        decode("learning.task-routed", make_bundle().to_json())
    assert isinstance(decode("learning.run-completed", make_bundle().to_json()), RunCompleted)


def test_an_unknown_topic_is_named() -> None:
    with pytest.raises(KeyError, match=r"learning\.nope"):
        adapter("learning.nope")
