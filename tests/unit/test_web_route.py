"""The worker's /crl/{doer}/ view is routed by the doer's name as the input topics key it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.exceptions import SameNode

from agents.app import create_app
from agents.settings import Settings
from agents.web import doer_route


async def test_the_route_hashes_the_doers_name_not_its_json() -> None:
    """Found by an operator trial with two workers: Faust's table_route hashed the key
    as JSON ('"SchemaMigrator"', partition 7 of 8) while the doer's state is on the
    partition of its name (2), so the view answered from a worker without it."""
    app = create_app(Settings(learnops_app_id="route-test", learnops_web_enabled=False), stages=[])
    asked: list[tuple[str, Any]] = []
    local: list[str] = []
    known: list[str] = []

    async def route_req(table: str, key: Any, web: Any, request: Any) -> Any:
        assert len(known) == len(asked) + 1  # the changelog's metadata first
        asked.append((table, key))
        if key == b"Here":
            raise SameNode()
        return "routed"

    app.router.route_req = route_req  # type: ignore[method-assign]

    async def know_topic(topic: str) -> None:
        known.append(topic)

    app.producer.know_topic = know_topic  # type: ignore[method-assign]
    changelog = SimpleNamespace(get_topic_name=lambda: "route-test-crl-daily-doer-changelog")
    table = SimpleNamespace(table=SimpleNamespace(name="crl-daily-doer", changelog_topic=changelog))

    async def view(web_view: Any, request: Any, doer: str) -> Any:
        local.append(doer)
        return "local"

    routed = doer_route(app, table)(view)
    web_view = SimpleNamespace(web=None)
    for doer, answer in (("SchemaMigrator", "routed"), ("Here", "local")):
        request = SimpleNamespace(match_info={"doer": doer})
        assert await routed(web_view, request, doer=doer) == answer
    assert asked == [("crl-daily-doer", b"SchemaMigrator"), ("crl-daily-doer", b"Here")]
    assert local == ["Here"]
    # The router reads the producer's metadata of the changelog: fetched before each
    # routing, or a producer that had not sent to it yet raised a TypeError (a 500).
    assert known == ["route-test-crl-daily-doer-changelog"] * 2
