"""Which event model each topic carries, decoding by topic, and every event's JSON Schema.

This mapping and topics.yaml's ``value`` column say the same thing; a unit test
keeps them in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import TypeAdapter

from models.bandit import BanditAllocations, BanditControl
from models.base import Event
from models.commands import POLICY_COMMANDS
from models.events import (
    Alert,
    CRLComputed,
    DeadLetter,
    DecisionMade,
    ExperimentChanged,
    PolicyChange,
    ReplayTask,
    RunCompleted,
    SampleCurated,
    SkillCard,
    TaskRouted,
)

# The value type of each topic: an Event class, or for learning.commands the
# discriminated union of command models (hence TypeAdapter, which takes both).
TOPIC_EVENTS: Mapping[str, Any] = {
    "learning.run-completed": RunCompleted,
    "learning.task-routed": TaskRouted,
    "learning.crl-computed": CRLComputed,
    "learning.samples": SampleCurated,
    "learning.commands": POLICY_COMMANDS,
    "learning.policy-changes": PolicyChange,
    "learning.decisions": DecisionMade,
    "learning.dlq": DeadLetter,
    "learning.alerts": Alert,
    "learning.experiments": ExperimentChanged,
    "learning.replay-tasks": ReplayTask,
    "learning.skill-cards": SkillCard,
    "learning.bandit-allocations": BanditAllocations,
    "learning.bandit-controls": BanditControl,
}


@cache
def adapter(topic: str) -> TypeAdapter[Any]:
    """Return the validator of ``topic``'s values; ``KeyError`` names an unknown topic."""
    try:
        value_type = TOPIC_EVENTS[topic]
    except KeyError:
        raise KeyError(f"no event model for topic {topic!r}") from None
    return value_type if isinstance(value_type, TypeAdapter) else TypeAdapter(value_type)


def decode(topic: str, data: bytes | str) -> Event:
    """Return the event in ``data``, validated as ``topic``'s model (or ``ValidationError``)."""
    event: Event = adapter(topic).validate_json(data)
    return event


def json_schemas() -> dict[str, dict[str, Any]]:
    """Return the JSON Schema (draft 2020-12, validation mode) of every topic's value, by topic."""
    return {topic: adapter(topic).json_schema() for topic in TOPIC_EVENTS}
