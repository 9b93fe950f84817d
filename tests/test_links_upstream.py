"""LoopMessage failing for the link endpoint: bounded, mapped to 502/503/504, never blocking."""

from __future__ import annotations

import asyncio
import threading

from tests.conftest import Api, ApiFactory, Fakes, wait_until
from tests.fakes.servers import Scripted


async def test_service_answers_while_an_upstream_call_is_pending(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    release = threading.Event()
    fakes.loop.state.then(Scripted(200, {"id": "late", "sms": "sms:x"}, hold=release))
    api = await make_api(loop_timeout_seconds=20.0)
    pending = asyncio.create_task(api.client.post("/v1/opt-in-links", json={}))
    try:
        await wait_until(lambda: fakes.loop.state.received("/generate-url/"))
        # The upstream call is held open; the rest of the service still answers.
        assert (await api.client.get("/healthz")).status_code == 200
        webhook = await api.webhook({"webhook_id": "w-during", "event": "message_sent"})
        assert webhook.status_code == 200
        other = await api.client.post("/v1/opt-in-links", json={})
        assert other.status_code == 200  # a second link request is not queued behind the first
        assert not pending.done()
    finally:
        release.set()
    response = await pending
    assert response.status_code == 200
    assert response.json()["id"] == "late"


async def test_hung_upstream_is_cut_at_the_timeout(make_api: ApiFactory, fakes: Fakes) -> None:
    never = threading.Event()  # never set: LoopMessage accepts the request and never answers
    fakes.loop.state.then(Scripted(200, {}, hold=never, hold_timeout=10.0))
    api = await make_api(loop_timeout_seconds=0.3)
    response = await api.client.post("/v1/opt-in-links", json={})
    assert response.status_code == 504
    assert response.json()["code"] == "upstream_timeout"


async def test_upstream_5xx_passes_its_retry_after_on(api: Api, fakes: Fakes) -> None:
    fakes.loop.state.then(Scripted(503, {"error": "maintenance"}, headers={"Retry-After": "12"}))
    response = await api.client.post("/v1/opt-in-links", json={})
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_error"
    assert response.headers["Retry-After"] == "12"


async def test_upstream_429_without_retry_after_gets_a_default(api: Api, fakes: Fakes) -> None:
    fakes.loop.state.then(Scripted(429, {}))
    response = await api.client.post("/v1/opt-in-links", json={})
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
