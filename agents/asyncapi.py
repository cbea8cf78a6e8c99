"""The AsyncAPI 3 document of learnops' topics, from topics.yaml and the event models.

Each topic of the catalogue is a channel whose one message's payload is the JSON
Schema of the topic's model (models.registry), referenced by file name, so the
document and the schemas ``learnops schema export`` writes beside it stay one
source. Kafka bindings carry the partition count, replication and topic configs,
and the message key (the doer). Reference: https://www.asyncapi.com/docs/reference/specification/v3.0.0
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from agents.topics import TopicCatalog
from models.registry import json_schemas

ASYNCAPI_VERSION = "3.0.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: The payloads are JSON Schema 2020-12 (pydantic's output), not AsyncAPI's own schema format.
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
KAFKA_BINDING_VERSION = "0.5.0"


def schema_file(topic: str) -> str:
    """The file name of TOPIC's JSON Schema, as ``learnops schema export`` writes it."""
    return f"{topic}.schema.json"


def schema_id(topic: str) -> str:
    """The ``$id`` of TOPIC's JSON Schema: a URN that names it wherever the file is."""
    return f"urn:learnops:schema:{topic}"


def event_schemas() -> dict[str, dict[str, Any]]:
    """Every topic's JSON Schema with its ``$id`` and ``$schema``, by topic."""
    return {
        topic: {"$schema": JSON_SCHEMA_DIALECT, "$id": schema_id(topic), **schema}
        for topic, schema in json_schemas().items()
    }


def _message_name(model_path: str) -> str:
    return model_path.rsplit(".", 1)[-1]


def asyncapi_document(catalog: TopicCatalog, schema_base: str = "./") -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of CATALOG's topics.

    SCHEMA_BASE prefixes the payloads' ``$ref`` to the schema files: ``./`` when they
    lie beside the document (``learnops schema export``), a URL path when served.
    """
    try:
        release = version("learnops")
    except PackageNotFoundError:  # run from a source tree that was never installed
        release = "0+unknown"
    schemas = event_schemas()
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic, spec in sorted(catalog.topics.items()):
        name = _message_name(spec.value)
        messages[name] = {
            "name": name,
            "title": name,
            "summary": schemas[topic].get("description", spec.description).split("\n")[0],
            "contentType": "application/json",
            "payload": {
                "schemaFormat": SCHEMA_FORMAT,
                "schema": {"$ref": f"{schema_base}{schema_file(topic)}"},
            },
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": f"the {spec.key}"},
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }
        channels[topic] = {
            "address": topic,
            "description": spec.description,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {
                "kafka": {
                    "topic": topic,
                    "partitions": spec.partitions,
                    "replicas": spec.replication_factor,
                    "topicConfiguration": _topic_configuration(spec.configs),
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "learnops",
            "version": release,
            "description": "The topics learnops reads and writes, keyed by doer and"
            " co-partitioned; each message's payload is the JSON Schema of its event model.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "The cluster KAFKA_BOOTSTRAP_SERVERS names.",
            }
        },
        "channels": channels,
        "components": {"messages": messages},
    }


def _topic_configuration(configs: dict[str, str]) -> dict[str, Any]:
    """The Kafka binding's topicConfiguration: the fields it defines, typed as it wants them."""
    out: dict[str, Any] = {}
    if "cleanup.policy" in configs:
        out["cleanup.policy"] = configs["cleanup.policy"].split(",")
    for key in ("retention.ms", "retention.bytes", "delete.retention.ms", "max.message.bytes"):
        if key in configs:
            out[key] = int(configs[key])
    return out
