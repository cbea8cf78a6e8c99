"""The event contract, served: the AsyncAPI 3 document and the JSON Schema of every topic."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from agents.asyncapi import asyncapi_document, event_schemas, schema_file

router = APIRouter()

#: Where the schemas are served; the document's payload references point here.
SCHEMAS_PATH = "/schemas/"


@router.get("/asyncapi.json", tags=["contract"])
async def asyncapi(request: Request) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of learnops' topics (from topics.yaml and the event models)."""
    return asyncapi_document(request.app.state.catalog, SCHEMAS_PATH)


@router.get(SCHEMAS_PATH + "{name}", tags=["contract"])
async def schema(name: str) -> dict[str, Any]:
    """The JSON Schema NAME (``<topic>.schema.json``) that the AsyncAPI document references."""
    by_file = {schema_file(topic): doc for topic, doc in event_schemas().items()}
    if name not in by_file:
        raise HTTPException(404, f"no schema {name}; see /asyncapi.json for the topics")
    return by_file[name]
