"""agents.event_topics: one typed attribute per topic of the contract, made from the registry."""

from __future__ import annotations

from typing import get_type_hints

from agents.event_topics import EventTopics, attribute_of
from models.registry import TOPIC_EVENTS


def test_every_topic_of_the_registry_has_one_declared_attribute_and_no_more() -> None:
    declared = set(EventTopics.__annotations__)
    assert declared == {attribute_of(name) for name in TOPIC_EVENTS}


def test_each_attribute_is_typed_with_its_topics_event_model() -> None:
    hints = get_type_hints(EventTopics)
    for name, model in TOPIC_EVENTS.items():
        (argument,) = hints[attribute_of(name)].__args__
        if isinstance(model, type):
            assert argument is model, name


def test_attribute_names_drop_the_prefix_and_dashes() -> None:
    assert attribute_of("learning.crl-computed") == "crl_computed"
    assert attribute_of("learning.dlq") == "dlq"
