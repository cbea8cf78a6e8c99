"""A policy artifact that leaves parameters open (models.tunables), for the unit tests."""

from typing import Any

ARTIFACT: dict[str, Any] = {
    "prompt": "Write the PRD.",
    "tunables": {
        "draft": {
            "router.model": ["model-a-large", "model-b-medium", "model-c-small"],
            "rag.top_k": ["4", "8", "16"],
        },
        "review": {"router.model": ["model-a-large", "model-c-small"]},
    },
}
