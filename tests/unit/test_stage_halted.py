"""learnops_stage_halted: 0 for every stage of a worker, 1 once a stage stops for good."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from agents.app import create_app
from agents.crl import CRLStage
from agents.settings import Settings


def _halted(stage: str) -> float | None:
    return REGISTRY.get_sample_value("learnops_stage_halted", {"stage": stage})


async def test_a_stage_reports_0_until_its_internal_errors_reach_the_limit_then_1() -> None:
    settings = Settings(
        learnops_app_id="halted-test", learnops_web_enabled=False, learnops_max_internal_errors=3
    )
    stage = CRLStage(create_app(settings, stages=[]))
    assert _halted("crl") == 0.0
    await stage._internal_error()
    await stage._internal_error()
    assert _halted("crl") == 0.0
    third = asyncio.ensure_future(stage._internal_error())
    await asyncio.sleep(0.05)
    # The third in a row stops the stage where it is: it waits, its input unacked.
    assert not third.done()
    assert _halted("crl") == 1.0
    third.cancel()


def test_a_stage_has_a_failed_dead_letter_series_at_0_from_the_start() -> None:
    # The LearnopsDeadLetterNotWritten alert watches its increase: it needs a 0 first.
    settings = Settings(learnops_app_id="dlq-series-test", learnops_web_enabled=False)
    CRLStage(create_app(settings, stages=[]))
    assert REGISTRY.get_sample_value("learnops_dead_letters_failed_total", {"stage": "crl"}) == 0.0
