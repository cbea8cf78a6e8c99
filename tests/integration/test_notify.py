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


def notify_app(app_id: str, webhooks: str, **settings: Any) -> Any:
    """An app with the notify stage alone, sending to ``webhooks``, three quick tries each."""
    app = create_app(
        Settings(
            learnops_app_id=app_id,
            learnops_web_enabled=False,
            learnops_alert_webhooks=webhooks,
            **settings,
        ),
        stages=["notify"],
    )
    app.outbox = []
    app.stages["notify"].retry = RetryPolicy(attempts=3, first_delay_s=0.01, max_delay_s=0.02)
    return app


def _alert(doer: str, kind: str = "crl_regression") -> Alert:
    return Alert(doer=doer, kind=kind, severity="warning", message="m", value=1.0, threshold=0.5)


async def test_each_receiver_gets_an_alert_once_in_its_format_and_a_dead_receiver_a_letter(
    receivers: Callable[[int], Any],
) -> None:
    json_hook = await receivers(200)
    am_hook = await receivers(202)
    down = await receivers(503)
    app = notify_app(
        "notify-test",
        f"json={json_hook.url},alertmanager={am_hook.url},slack={down.url}",
        learnops_dashboard_url="http://127.0.0.1:8080",
    )
    alert = _alert("NotifyDoer")
    async with app.agents["notify"].test_context() as agent:
        await agent.put(alert.to_json(), key=b"NotifyDoer", wait=False)
        # The same alert again (a redelivery, or a re-send after a restart).
        await agent.put(alert.to_json(), key=b"NotifyDoer", wait=False)
        letters = lambda: [e for t, e in app.outbox if t == "learning.dlq"]  # noqa: E731
        await _until(lambda: len(letters()) == 2)

    assert [b["event_id"] for b in json_hook.bodies] == [str(alert.event_id)]
    assert json_hook.bodies[0]["evidence_url"] == "http://127.0.0.1:8080/doers/NotifyDoer"
    (message,) = am_hook.bodies
    assert message["alerts"][0]["fingerprint"] == str(alert.event_id)
    assert message["alerts"][0]["labels"]["alertname"] == "crl_regression"
    # The receiver that stays down was tried three times, then dead-lettered, naming the
    # receiver by host only (the path of a webhook URL is its secret); then rested: the
    # second delivery is a letter at once.
    assert len(down.bodies) == 3
    assert all(b["text"].startswith("[warning] crl_regression NotifyDoer") for b in down.bodies)
    first, second = letters()
    assert "did not take the alert after 3 tries (last status: 503)" in first.reason
    assert "was down (last status: 503, after 3 tries at " in second.reason
    for letter in (first, second):
        assert isinstance(letter, DeadLetter)
        assert letter.error_type == "delivery"
        assert "slack:127.0.0.1" in letter.reason
        assert "secret-path" not in letter.reason


async def test_a_receiver_that_stays_down_holds_no_other_receivers_alerts_back(
    receivers: Callable[[int], Any],
) -> None:
    """A new operator's trial: with a dead Slack URL beside a live one, each alert waited for
    the dead one's five tries (7.5 s), and a regression alert reached the live one 71 s late.
    The receivers are tried side by side, and one that stayed down rests a while: of ten
    alerts it is tried for the first only (three tries, not thirty), the live one gets all."""
    live, dead = await receivers(200), await receivers(503)
    app = notify_app("notify-test-down", f"json={live.url},slack={dead.url}")
    stage = app.stages["notify"]
    alerts = [_alert("DownDoer", kind=f"k{i}") for i in range(10)]
    async with app.agents["notify"].test_context() as agent:
        for alert in alerts:
            await agent.put(alert.to_json(), key=b"DownDoer", wait=False)
        letters = lambda: [e for t, e in app.outbox if t == "learning.dlq"]  # noqa: E731
        await _until(lambda: len(live.bodies) == len(alerts) and len(letters()) == len(alerts))
    assert [b["event_id"] for b in live.bodies] == [str(a.event_id) for a in alerts]
    assert len(dead.bodies) == 3
    assert sum("was down" in letter.reason for letter in letters()) == len(alerts) - 1
    # Rested for cool_off_s, then tried again with its full tries.
    stage.cool_off_s = 0.0
    stage.down = {name: (0.0, since, last) for name, (_, since, last) in stage.down.items()}
    again = _alert("DownDoer", kind="after")
    async with app.agents["notify"].test_context() as agent:
        await agent.put(again.to_json(), key=b"DownDoer", wait=False)
        await _until(lambda: len(dead.bodies) == 6)


async def test_a_refused_request_is_not_retried(receivers: Callable[[int], Any]) -> None:
    refusing = await receivers(400)
    app = notify_app("notify-test-400", f"json={refusing.url}")
    async with app.agents["notify"].test_context() as agent:
        await agent.put(_alert("RefusedDoer").to_json(), key=b"RefusedDoer", wait=False)
        await _until(lambda: any(t == "learning.dlq" for t, _ in app.outbox))
    assert len(refusing.bodies) == 1


async def test_two_receivers_on_one_host_are_two() -> None:
    """A review: receivers were told apart by format and host, so two Slack hooks (both
    slack:hooks.slack.com) shared one dedup memory and one rest: the live one's delivery
    marked the alert sent for the dead one, and a 503 from one rested the other."""
    got: dict[str, int] = {"live": 0, "dead": 0}

    async def live(request: web.Request) -> web.Response:
        got["live"] += 1
        return web.Response(status=200)

    async def dead(request: web.Request) -> web.Response:
        got["dead"] += 1
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/live", live)
    app.router.add_post("/dead", dead)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        base = f"http://127.0.0.1:{port}"
        notify = notify_app("notify-test-same-host", f"slack={base}/dead,slack={base}/live")
        hooks = notify.stages["notify"].hooks
        assert hooks[0].name == hooks[1].name and hooks[0].key != hooks[1].key
        alerts = [_alert("SameHost", kind=f"k{i}") for i in range(3)]
        async with notify.agents["notify"].test_context() as agent:
            for alert in alerts:
                await agent.put(alert.to_json(), key=b"SameHost", wait=False)
            letters = lambda: [e for t, e in notify.outbox if t == "learning.dlq"]  # noqa: E731
            await _until(lambda: got["live"] == 3 and len(letters()) == 3)
        assert got["dead"] == 3  # tried for the first alert only (three tries), then rested
    finally:
        await runner.cleanup()
