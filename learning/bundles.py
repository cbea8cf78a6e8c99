"""What of a learning bundle is kept durably, and what is not."""

from __future__ import annotations

import hashlib
from typing import Any

from models.events import RunCompleted


def durable_bundle(bundle: RunCompleted) -> dict[str, Any]:
    """The bundle as JSON with every artifact's content replaced by its SHA-256.

    Raw artifact text may carry PII; only the curator, after redaction, stores
    text. The hash keeps the run linkable to its samples.
    """
    record = bundle.model_dump(mode="json")
    for artifact in record.get("artifacts", []):
        content = artifact.pop("content", None)
        if content is not None and not artifact.get("content_hash"):
            artifact["content_hash"] = hashlib.sha256(content.encode("utf-8")).hexdigest()
    return record
