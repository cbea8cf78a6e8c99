"""The orchestrator's side of learnops: the routing client and the local replay executor.

    from learnops.client import Router, UnknownDoer

    async with Router("kafka:9092", trusted_keys=signers, worker_keys=workers) as router:
        route = router.route("PRDWriter", task_id)

:class:`Allocations` follows the bandit's shares the same way and picks a
task's option of a tunable parameter (``learnops.client.allocations``).

:class:`Router` needs only the event contract (``models``), the routing rules
(``learning.routing``) and aiokafka; importing this package loads nothing of
the service (no Faust, storage or numerical libraries). The replay executor
(:func:`serve`, the orchestrator's sandbox for tests and the demo) runs the
deterministic ``learning.replay`` executor and is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from learnops.client.allocations import Allocations, Choice
from learnops.client.router import Router, UnknownDoer

if TYPE_CHECKING:
    from learnops.client.replay_executor import BlobFetcher, TaskError, serve

__all__ = ["Allocations", "BlobFetcher", "Choice", "Router", "TaskError", "UnknownDoer", "serve"]

_EXECUTOR_NAMES = frozenset({"BlobFetcher", "TaskError", "serve"})


def __getattr__(name: str) -> Any:
    """Load the replay executor (numpy, cryptography) only when one of its names is asked for."""
    if name in _EXECUTOR_NAMES:
        from learnops.client import replay_executor

        return getattr(replay_executor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
