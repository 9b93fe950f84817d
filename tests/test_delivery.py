"""Call Loop delivery through the outbox: byte-for-byte URLs, retries, dead jobs, no doubles."""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import parse_qs

import pytest

from tests.conftest import GROUP_KEY, Api, ApiFactory, Fakes, opt_in_payload, wait_until
from tests.fakes.servers import Scripted


async def test_new_subscriber_is_added_to_the_group(api: Api, fakes: Fakes) -> None:
    await api.webhook(
        opt_in_payload(
            contact="+15555550123", first="Ada", last="Lovelace", email="ada@example.com"
        )
    )
    [call] = await wait_until(lambda: fakes.callloop.state.received("/r/"))
    assert call.method == "POST"
    # The configured URL is kept byte for byte: the bare group key, then our variables.
    assert call.raw_query.startswith(f"{GROUP_KEY}&".encode())
    assert b"phone=%2B15555550123" in call.raw_query
    form = parse_qs(call.body.decode())
    assert form == {
        "phone": ["+15555550123"],
        "first": ["Ada"],
        "last": ["Lovelace"],
        "email": ["ada@example.com"],
    }
    done = await wait_until(lambda: _status(api, "done"))
    assert done[0]["kind"] == "subscribe"
    assert done[0]["target"].endswith("/r/…")  # masked


async def _status(api: Api, status: str) -> list[dict[str, object]]:
    return await api.deliveries(status)


async def test_get_method_sends_query_only(make_api: ApiFactory, fakes: Fakes) -> None:
    api = await make_api(callloop_method="GET")
    await api.webhook(opt_in_payload(contact="+15555550124"))
    [call] = await wait_until(lambda: fakes.callloop.state.received("/r/"))
    assert call.method == "GET"
    assert call.raw_query == f"{GROUP_KEY}&phone=%2B15555550124".encode()


async def test_trigger_fires_once_after_the_group_add(make_api: ApiFactory, fakes: Fakes) -> None:
    trigger = f"{fakes.callloop.base_url}/t/?trig789"
    api = await make_api(callloop_trigger_url=trigger)
    await api.webhook(opt_in_payload(contact="+15555550125"))
    await api.webhook(opt_in_payload(contact="+15555550125"))  # repeat opt-in: no second welcome
    [call] = await wait_until(lambda: fakes.callloop.state.received("/t/"))
    assert call.raw_query == b"trig789&phone=%2B15555550125"
    adds = fakes.callloop.state.received("/r/")
    assert len(adds) == 1
    assert adds[0].received_at <= call.received_at
    await wait_until(lambda: _count_status(api, "done", 2))
    assert len(fakes.callloop.state.received("/t/")) == 1


async def _count_status(api: Api, status: str, n: int) -> bool:
    return len(await api.deliveries(status)) == n


async def test_transient_failures_are_retried_then_delivered(api: Api, fakes: Fakes) -> None:
    fakes.callloop.state.then(Scripted(503, {}), Scripted(429, {}), Scripted(500, {}))
    await api.webhook(opt_in_payload(contact="+15555550126"))
    await wait_until(lambda: _count_status(api, "done", 1))
    calls = fakes.callloop.state.received("/r/")
    assert len(calls) == 4
    [job] = await api.deliveries("done")
    assert job["attempts"] == 4


async def test_permanent_4xx_is_dead_at_once_and_retry_delivers(api: Api, fakes: Fakes) -> None:
    fakes.callloop.state.then(Scripted(404, text="no such group"))
    await api.webhook(opt_in_payload(contact="+15555550127"))
    [dead] = await wait_until(lambda: _status(api, "dead"))
    assert dead["attempts"] == 1
    assert "HTTP 404" in dead["last_error"]
    assert GROUP_KEY not in dead["last_error"]
    assert dead["last_status_code"] == 404

    retried = await api.admin_post(f"/v1/deliveries/{dead['id']}/retry")
    assert retried.status_code == 200
    await wait_until(lambda: _count_status(api, "done", 1))
    assert len(fakes.callloop.state.received("/r/")) == 2


async def test_job_is_dead_after_max_attempts_and_bulk_retry(api: Api, fakes: Fakes) -> None:
    fakes.callloop.state.always(Scripted(500, text="down"))
    await api.webhook(opt_in_payload(contact="+15555550128"))
    [dead] = await wait_until(lambda: _status(api, "dead"))
    assert dead["attempts"] == api.settings.delivery_max_attempts
    assert "HTTP 500" in dead["last_error"]
    assert len(fakes.callloop.state.received("/r/")) == api.settings.delivery_max_attempts

    fakes.callloop.state.always(None)
    again = await api.admin_post("/v1/deliveries/retry-dead")
    assert again.json() == {"retried": 1}
    await wait_until(lambda: _count_status(api, "done", 1))


async def test_timeouts_and_refused_connections_are_transient(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    from tests.fakes.servers import free_port

    api = await make_api(callloop_timeout_seconds=0.3)
    fakes.callloop.state.then(Scripted(200, text="late", delay=1.0))
    await api.webhook(opt_in_payload(contact="+15555550129"))
    await wait_until(lambda: _count_status(api, "done", 1))
    assert len(fakes.callloop.state.received("/r/")) == 2

    refused = await make_api(callloop_group_url=f"http://127.0.0.1:{free_port()}/r/?{GROUP_KEY}")
    await refused.webhook(opt_in_payload(contact="+15555550130"))
    [dead] = await wait_until(lambda: _status(refused, "dead"))
    assert "connection error" in dead["last_error"]


async def test_email_contact_and_bad_number_are_skipped_not_sent(api: Api, fakes: Fakes) -> None:
    await api.webhook(opt_in_payload(contact="someone@icloud.com"))
    await api.webhook(opt_in_payload(contact="+1234"))
    skipped = await api.deliveries("skipped")
    assert len(skipped) == 2
    reasons = sorted(job["last_error"] for job in skipped)
    assert "email" in reasons[0] or "email" in reasons[1]
    assert fakes.callloop.state.received() == []


async def test_repeat_opt_in_makes_no_second_add(api: Api, fakes: Fakes) -> None:
    for _ in range(3):
        await api.webhook(opt_in_payload(contact="+15555550131"))
    await wait_until(lambda: _count_status(api, "done", 1))
    assert len(fakes.callloop.state.received("/r/")) == 1


async def test_opt_out_then_opt_in_again_subscribes_again(api: Api, fakes: Fakes) -> None:
    await api.webhook(opt_in_payload(contact="+15555550132"))
    await wait_until(lambda: _count_status(api, "done", 1))
    out = await api.admin_post("/v1/subscribers/+15555550132/opt-out")
    assert out.status_code == 200 and out.json()["opt_out_jobs"] == 1
    [stop] = await wait_until(lambda: fakes.callloop.state.received("/s/"))
    assert stop.raw_query == f"{GROUP_KEY}&phone=%2B15555550132".encode()

    await api.webhook(opt_in_payload(contact="+15555550132"))
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 2)


async def test_worker_on_separate_app_delivers_jobs_of_another(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    intake = await make_api(run_worker=False)
    await intake.webhook(opt_in_payload(contact="+15555550133"))
    assert await intake.deliveries("pending")
    await make_api(run_worker=True)  # another process's worker, same database
    await wait_until(lambda: fakes.callloop.state.received("/r/"))


@pytest.mark.parametrize("yield_seconds", [5.0, 0.0], ids=["gives way", "never"])
async def test_in_process_worker_gives_way_while_the_api_is_busy(
    make_api: ApiFactory, fakes: Fakes, yield_seconds: float
) -> None:
    """With 8 requests in flight the worker sends one claim's jobs, then pauses before the
    next (DELIVERY_YIELD_SECONDS=0: it never does)."""
    release = threading.Event()
    fakes.loop.state.always(Scripted(200, {"id": "l", "sms": "sms:x"}, hold=release))
    api = await make_api(
        delivery_concurrency=2, delivery_yield_seconds=yield_seconds, loop_timeout_seconds=20.0
    )
    busy = [asyncio.create_task(api.client.post("/v1/opt-in-links", json={})) for _ in range(8)]
    try:
        await wait_until(lambda: len(fakes.loop.state.received("/generate-url/")) == 8)
        for n in range(6):
            assert (await api.webhook(opt_in_payload(f"+1555555{n:04d}"))).status_code == 200
        added = lambda: fakes.callloop.state.received("/r/")  # noqa: E731
        if yield_seconds:
            await wait_until(added)
            await asyncio.sleep(0.5)  # a worker that did not pause would send the rest now
            assert 1 <= len(added()) <= 2  # one claim (of at most 2), then the pause
        else:
            await wait_until(lambda: len(added()) == 6)
        assert not any(task.done() for task in busy)
    finally:
        release.set()
    assert [(await task).status_code for task in busy] == [200] * 8
    # The API is idle: after the pause, the rest goes without another.
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 6)
    await wait_until(lambda: _count_status(api, "done", 6))
