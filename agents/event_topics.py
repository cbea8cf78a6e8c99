"""Every topic of the contract as a typed attribute: ``app.event_topics.alerts.send(alert)``.

The attributes are made from :data:`models.registry.TOPIC_EVENTS` (topic name →
event model), so a topic added there is a topic here; the annotations below
give the type checker each topic's event type, and a unit test keeps the two
in step. A send keys the record by the event's doer, as every topic is keyed
(design.md), and writes the event's JSON: no stage formats a record itself.

An app built with an ``outbox`` (tests that drive a stage in process with
Faust's ``test_context()``) collects the events it would send there instead of
producing them; everything else goes to the broker through Faust's producer, straight to
aiokafka (``Producer.send_acknowledged``): the commit after a send waits for
the broker to acknowledge it.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from agents.faust_internals.transport import Producer
from agents.health import EVENTS_OUT
from models.bandit import BanditAllocations, BanditControl
from models.base import Event
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
from models.registry import TOPIC_EVENTS

E = TypeVar("E", bound=Event)


def attribute_of(topic: str) -> str:
    """The attribute name of a topic: ``learning.crl-computed`` → ``crl_computed``."""
    return topic.removeprefix("learning.").replace("-", "_")


class Sent:
    """A send that the broker acknowledges when awaited (``await (await topic.send(e))``)."""

    def __init__(self, future: Any = None) -> None:
        self._future = future

    def __await__(self) -> Any:
        if self._future is None:
            return _done().__await__()
        return self._future.__await__()


async def _done() -> None:
    return None


class EventTopic(Generic[E]):
    """One topic of the contract: its Faust channel and a typed, doer-keyed send."""

    def __init__(self, app: Any, name: str, model: Any) -> None:
        self.name = name
        self.model = model
        self._app = app
        self.channel: Any = app.topic(name, key_type=bytes, value_type=bytes)
        self._sent_counter = EVENTS_OUT.labels(name)

    async def send(self, event: E) -> Sent:
        """Send the event under its key (its doer, Event.record_key); awaited, the broker's ack."""
        outbox = self._app.outbox
        if outbox is not None:
            outbox.append((self.name, event))
            return Sent()
        key, value = event.record_key().encode(), event.to_json()
        app = self._app
        producer = await app.maybe_start_producer()
        assert isinstance(producer, Producer), "apps are built on learnops' transport (build_app)"
        app.sensors.on_send_initiated(
            producer, self.name, message=None, keysize=len(key), valsize=len(value)
        )
        future = await producer.send_acknowledged(self.name, key, value)
        self._sent_counter.inc()
        return Sent(future)


class EventTopics:
    """The contract's topics on one app, one typed attribute each."""

    run_completed: EventTopic[RunCompleted]
    task_routed: EventTopic[TaskRouted]
    crl_computed: EventTopic[CRLComputed]
    samples: EventTopic[SampleCurated]
    commands: EventTopic[Any]  # the discriminated union of policy commands
    policy_changes: EventTopic[PolicyChange]
    decisions: EventTopic[DecisionMade]
    dlq: EventTopic[DeadLetter]
    alerts: EventTopic[Alert]
    experiments: EventTopic[ExperimentChanged]
    replay_tasks: EventTopic[ReplayTask]
    skill_cards: EventTopic[SkillCard]
    bandit_allocations: EventTopic[BanditAllocations]
    bandit_controls: EventTopic[BanditControl]

    def __init__(self, app: Any) -> None:
        self._app = app
        self.by_name: dict[str, EventTopic[Any]] = {}
        for name, model in TOPIC_EVENTS.items():
            topic: EventTopic[Any] = EventTopic(app, name, model)
            self.by_name[name] = topic
            setattr(self, attribute_of(name), topic)

    def source(self, *topics: EventTopic[Any]) -> Any:
        """One Faust channel that reads several topics (an agent with more than one input)."""
        return self._app.topic(*(t.name for t in topics), key_type=bytes, value_type=bytes)
