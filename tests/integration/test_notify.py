"""The notify stage in process against real local HTTP receivers: delivered once, or a letter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from agents.app import create_app
from agents.settings import Settings
from learning.alerting import RetryPolicy
from models.events import Alert, DeadLetter
from tests.services import free_port


class Receiver:
    """A webhook receiver on loopback that answers with ``status`` and keeps what it got."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[Any] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook/secret-path"

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(status=self.status)


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[[int], Any]]:
    runners: list[web.AppRunner] = []

    async def start(status: int) -> Receiver:
        receiver = Receiver(status)
        app = web.Application()
        app.router.add_post("/hook/secret-path", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
        runners.append(runner)
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def _alert(doer: str, kind: str = "crl_regression") -> Alert:
    return Alert(doer=doer, kind=kind, severity="warning", message="m", value=1.0, threshold=0.5)


async def test_each_receiver_gets_an_alert_once_in_its_format_and_a_dead_receiver_a_letter(
    receivers: Callable[[int], Any],
) -> None:
    json_hook = await receivers(200)
    am_hook = await receivers(202)
    down = await receivers(503)
    settings = Settings(
        learnops_app_id="notify-test",
        learnops_web_enabled=False,
        learnops_alert_webhooks=(
            f"json={json_hook.url},alertmanager={am_hook.url},slack={down.url}"
        ),
        learnops_dashboard_url="http://127.0.0.1:8080",
    )
    app = create_app(settings, stages=["notify"])
    app.outbox = []
    stage = app.stages["notify"]
    stage.retry = RetryPolicy(attempts=3, first_delay_s=0.01, max_delay_s=0.02)
    alert = _alert("NotifyDoer")
    async with app.agents["notify"].test_context() as agent:
        await agent.put(alert.to_json(), key=b"NotifyDoer", wait=False)
        # The same alert again (a redelivery, or a re-send after a restart).
        await agent.put(alert.to_json(), key=b"NotifyDoer", wait=False)
        letters = lambda: [e for t, e in app.outbox if t == "learning.dlq"]  # noqa: E731
        await _until(lambda: len(letters()) == 2 and len(down.bodies) == 6)

    assert [b["event_id"] for b in json_hook.bodies] == [str(alert.event_id)]
    assert json_hook.bodies[0]["evidence_url"] == "http://127.0.0.1:8080/doers/NotifyDoer"
    (message,) = am_hook.bodies
    assert message["alerts"][0]["fingerprint"] == str(alert.event_id)
    assert message["alerts"][0]["labels"]["alertname"] == "crl_regression"
    # The receiver that stays down was tried three times per delivery, then dead-lettered,
    # naming the receiver by host only: the path of a webhook URL is its secret.
    assert all(b["text"].startswith("[warning] crl_regression NotifyDoer") for b in down.bodies)
    for letter in letters():
        assert isinstance(letter, DeadLetter)
        assert letter.error_type == "delivery"
        assert "slack:127.0.0.1" in letter.reason and "503" in letter.reason
        assert "secret-path" not in letter.reason


async def test_a_refused_request_is_not_retried(receivers: Callable[[int], Any]) -> None:
    refusing = await receivers(400)
    settings = Settings(
        learnops_app_id="notify-test-400",
        learnops_web_enabled=False,
        learnops_alert_webhooks=f"json={refusing.url}",
    )
    app = create_app(settings, stages=["notify"])
    app.outbox = []
    async with app.agents["notify"].test_context() as agent:
        await agent.put(_alert("RefusedDoer").to_json(), key=b"RefusedDoer", wait=False)
        await _until(lambda: any(t == "learning.dlq" for t, _ in app.outbox))
    assert len(refusing.bodies) == 1
