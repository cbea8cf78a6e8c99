"""A slice of the fault suite in `make test`: three kills -9 and a 2,000-message fuzz corpus.

The full suite (`make faults`) runs the same code with its own services and
larger numbers; here it runs on the session's broker and database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.fuzz import fuzz
from tests.faults.kill9 import kill9
from tests.faults.rig import Services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def found(
    kafka_bootstrap: str, database_url: str, topics: Any, tmp_path_factory: Any
) -> Services:
    """The session's services, which the fault scripts may use but not restart."""
    return Services(
        kafka_bootstrap, database_url, own=False, state_dir=Path(tmp_path_factory.mktemp("faults"))
    )


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[Any]:
    from storage.pool import create_pool

    opened = await create_pool(database_url, min_size=1, max_size=4)
    yield opened
    await opened.close()


async def test_three_kills_lose_nothing_and_count_nothing_twice(found: Services, pool: Any) -> None:
    # A static group member (LEARNOPS_GROUP_INSTANCE_ID): each restart takes the
    # partitions back at once instead of waiting out the killed worker's session (6 s
    # here, the broker's shortest); `make faults` kills both kinds of member, 20 times
    # each. No experiments here: a kill between two of their steps leaves the next to the
    # stage's timer 30 s later (tests/integration/test_experiments_in_process.py covers
    # those paths); `make faults` runs them under its 20 kills.
    report = await kill9(
        found,
        pool,
        kills=3,
        seed=7,
        max_up_s=2.0,
        session_timeout_s=6.0,
        experiment_every=0,
        static=True,
    )
    assert report.ok, report.render()


async def test_every_fuzzed_message_is_processed_or_dead_lettered_exactly_once(
    found: Services, pool: Any
) -> None:
    report = await fuzz(found, pool, messages=2_000, seed=7)
    assert report.ok, report.render()
