"""The AsyncAPI 3 document and the JSON Schemas: exported by the CLI, served by the console."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from agents.asyncapi import asyncapi_document
from agents.topics import load_catalog
from learnops.cli.main import cli
from models.events import Alert
from models.registry import TOPIC_EVENTS


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("schemas")
    result = CliRunner().invoke(cli, ["schema", "export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def test_export_writes_the_asyncapi_document_beside_a_schema_per_topic(exported: Path) -> None:
    names = {path.name for path in exported.iterdir()}
    assert names == {"asyncapi.json"} | {f"{topic}.schema.json" for topic in TOPIC_EVENTS}


def test_every_json_schema_has_its_id_and_dialect_and_is_a_valid_2020_12_schema(
    exported: Path,
) -> None:
    ids = set()
    for topic in TOPIC_EVENTS:
        schema = _load(exported / f"{topic}.schema.json")
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", topic
        assert schema["$id"] == f"urn:learnops:schema:{topic}"
        Draft202012Validator.check_schema(schema)  # raises SchemaError naming the fault
        ids.add(schema["$id"])
    assert len(ids) == len(TOPIC_EVENTS), "every schema has an $id of its own"


def test_the_document_is_asyncapi_3_with_a_channel_per_topic_and_resolvable_messages(
    exported: Path,
) -> None:
    document = _load(exported / "asyncapi.json")
    catalog = load_catalog()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] and document["info"]["version"]
    assert set(document["channels"]) == set(catalog.topics) == set(TOPIC_EVENTS)
    messages = document["components"]["messages"]
    for topic, channel in document["channels"].items():
        spec = catalog[topic]
        assert channel["address"] == topic
        assert channel["bindings"]["kafka"]["partitions"] == spec.partitions
        (reference,) = channel["messages"].values()
        prefix = "#/components/messages/"
        assert reference["$ref"].startswith(prefix)
        message = messages[reference["$ref"].removeprefix(prefix)]
        assert message["name"] == spec.value.rsplit(".", 1)[-1]
        payload = message["payload"]
        assert payload["schemaFormat"] == "application/schema+json;version=draft-2020-12"
        target = exported / payload["schema"]["$ref"]
        assert target.is_file(), f"{topic}: {payload['schema']['$ref']} is not beside it"
        assert _load(target)["$id"] == f"urn:learnops:schema:{topic}"


def test_an_event_validates_against_the_schema_its_channel_references(exported: Path) -> None:
    document = _load(exported / "asyncapi.json")
    schemas = [_load(exported / f"{topic}.schema.json") for topic in TOPIC_EVENTS]
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas
    )
    (reference,) = document["channels"]["learning.alerts"]["messages"].values()
    message = document["components"]["messages"][reference["$ref"].rsplit("/", 1)[-1]]
    schema = _load(exported / message["payload"]["schema"]["$ref"])
    validator = Draft202012Validator(schema, registry=registry)
    alert = Alert(doer="PRDWriter", kind="crl_regression", severity="warning", message="up")
    assert not list(validator.iter_errors(orjson.loads(alert.to_json())))
    errors = list(validator.iter_errors({**orjson.loads(alert.to_json()), "severity": "loud"}))
    assert errors, "a severity outside the model's values is refused by the schema"


async def test_the_console_serves_the_document_and_the_schemas_it_references() -> None:
    import httpx

    from learnops.console import create_console

    # Over ASGI, whose transport runs no lifespan: the database pool is not needed for the
    # contract.
    app = create_console("postgresql://unused/unused")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        document = (await client.get("/asyncapi.json")).json()
        assert document == asyncapi_document(load_catalog(), "/schemas/")
        for message in document["components"]["messages"].values():
            response = await client.get(message["payload"]["schema"]["$ref"])
            assert response.status_code == 200
            assert response.json()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert (await client.get("/schemas/nothing.schema.json")).status_code == 404
        assert "/asyncapi.json" in (await client.get("/openapi.json")).json()["paths"]
