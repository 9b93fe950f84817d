"""STOP sync: an inbound opt-out keyword opts the contact out of every Call Loop group it was
added to, through the outbox, exactly once per group; a later opt-in subscribes it again."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from app.models import Subscriber
from tests.conftest import Api, ApiFactory, Fakes, opt_in_payload, wait_until
from tests.fakes.servers import Scripted

SPRING_KEY = "grpSpring71"
FALL_KEY = "grpFall82"


def two_routes(fakes: Fakes) -> str:
    return json.dumps(
        {
            "spring": {"group_url": f"{fakes.callloop.base_url}/r/?{SPRING_KEY}"},
            "fall": {"group_url": f"{fakes.callloop.base_url}/r/?{FALL_KEY}"},
        }
    )


def inbound(contact: str, text: str, webhook_id: str | None = None) -> dict[str, Any]:
    """An ordinary inbound message (not an opt-in) as LoopMessage sends it."""
    return {
        "event": "message_inbound",
        "webhook_id": webhook_id or str(uuid.uuid4()),
        "contact": contact,
        "text": text,
        "message_id": str(uuid.uuid4()),
    }


def calls(fakes: Fakes, marker: str) -> list[bytes]:
    return sorted(call.raw_query for call in fakes.callloop.state.received(marker))


async def jobs_of(api: Api, kind: str, status: str | None = None) -> list[dict[str, Any]]:
    return [job for job in await api.deliveries(status) if job["kind"] == kind]


async def subscriber_status(db_engine: Any, contact: str) -> str:
    async with db_engine.connect() as conn:
        query = select(Subscriber.__table__.c.status).where(
            Subscriber.__table__.c.contact == contact
        )
        return str((await conn.execute(query)).scalar_one())


async def test_stop_sends_one_opt_out_per_group_and_a_repeat_sends_nothing_more(
    make_api: ApiFactory, fakes: Fakes, db_engine: Any
) -> None:
    api = await make_api(callloop_routes=two_routes(fakes))
    contact = "+15555550401"
    await api.webhook(opt_in_payload(contact=contact, utm_campaign="spring"))
    await api.webhook(opt_in_payload(contact=contact, utm_campaign="fall"))
    await api.webhook(opt_in_payload(contact=contact, utm_campaign="spring"))  # repeat
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 2)

    stop = inbound(contact, "STOP")
    response = await api.webhook(stop)
    assert response.status_code == 200
    assert response.json()["status"] == "opted_out"
    assert await subscriber_status(db_engine, contact) == "opted_out"
    await wait_until(lambda: len(fakes.callloop.state.received("/s/")) == 2)
    assert calls(fakes, "/s/") == sorted(
        [f"{SPRING_KEY}&phone=%2B15555550401".encode(), f"{FALL_KEY}&phone=%2B15555550401".encode()]
    )

    # LoopMessage retries the same webhook, and the contact texts "stop" once more.
    assert (await api.webhook(stop)).json()["status"] == "duplicate"
    again = await api.webhook(inbound(contact, "stop"))
    assert again.status_code == 200
    assert len(await jobs_of(api, "opt_out")) == 2
    await wait_until(lambda: _all_done(api))
    assert len(fakes.callloop.state.received("/s/")) == 2


async def _all_done(api: Api) -> bool:
    jobs = await api.deliveries()
    return bool(jobs) and all(job["status"] == "done" for job in jobs)


@pytest.mark.parametrize(
    "text", ["STOP", "stop", "  Stop \n", "STOPALL", "Unsubscribe", "cancel", "End", "quit"]
)
async def test_each_default_keyword_in_any_case_opts_out(make_api: ApiFactory, text: str) -> None:
    api = await make_api(run_worker=False)
    await api.webhook(opt_in_payload(contact="+15555550402"))
    response = await api.webhook(inbound("+15555550402", text))
    assert response.status_code == 200
    assert response.json()["status"] == "opted_out"
    [job] = await jobs_of(api, "opt_out", "pending")
    assert job["target"].endswith("/s/…")


@pytest.mark.parametrize(
    "text",
    [
        "Please STOP texting me",
        "can I stop by tomorrow?",
        "nonstop deals!",
        "STOP STOP",
        "",
    ],
)
async def test_stop_inside_other_text_is_not_an_opt_out(
    make_api: ApiFactory, db_engine: Any, text: str
) -> None:
    api = await make_api(run_worker=False)
    await api.webhook(opt_in_payload(contact="+15555550403"))
    response = await api.webhook(inbound("+15555550403", text))
    assert response.status_code == 200
    assert response.json()["status"] == "recorded"
    assert await jobs_of(api, "opt_out") == []
    assert await subscriber_status(db_engine, "+15555550403") == "active"


async def test_opt_out_keywords_are_configurable(make_api: ApiFactory) -> None:
    api = await make_api(run_worker=False, optout_keywords="ARRET, baja")
    await api.webhook(opt_in_payload(contact="+15555550404"))
    await api.webhook(opt_in_payload(contact="+15555550405"))
    kept = await api.webhook(inbound("+15555550404", "STOP"))  # not configured any more
    assert kept.json()["status"] == "recorded"
    assert (await api.webhook(inbound("+15555550405", "Baja"))).json()["status"] == "opted_out"
    assert len(await jobs_of(api, "opt_out")) == 1
    assert (await api.webhook(inbound("+15555550404", " arret "))).json()["status"] == "opted_out"
    assert len({job["subscriber_id"] for job in await jobs_of(api, "opt_out")}) == 2


async def test_stop_from_an_unknown_contact_is_recorded_and_sends_nothing(api: Api) -> None:
    response = await api.webhook(inbound("+15555550406", "STOP"))
    assert response.status_code == 200
    assert await api.deliveries() == []


async def test_re_opt_in_after_stop_subscribes_again_with_new_consent(
    api: Api, fakes: Fakes, db_engine: Any
) -> None:
    contact = "+15555550407"
    first_link = (
        await api.client.post("/v1/opt-in-links", json={"page_url": "https://landing.example/1"})
    ).json()
    await api.webhook(opt_in_payload(contact=contact, optin_ref=first_link["ref"]))
    await wait_until(lambda: fakes.callloop.state.received("/r/"))
    await api.webhook(inbound(contact, "STOP"))
    await wait_until(lambda: fakes.callloop.state.received("/s/"))

    second_link = (
        await api.client.post("/v1/opt-in-links", json={"page_url": "https://landing.example/2"})
    ).json()
    again = await api.webhook(opt_in_payload(contact=contact, optin_ref=second_link["ref"]))
    assert again.json()["status"] == "stored"
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 2)
    assert await subscriber_status(db_engine, contact) == "active"

    listing = (await api.admin_get("/v1/opt-ins", contact=contact)).json()
    assert listing["total"] == 2
    newest, oldest = listing["items"]
    assert newest["consent"]["link_ref"] == second_link["ref"]
    assert newest["consent"]["page_url"] == "https://landing.example/2"
    assert oldest["consent"]["link_ref"] == first_link["ref"]  # the first record is kept

    # Subscribed again means a later STOP reaches the group again, once.
    await api.webhook(inbound(contact, "stop"))
    await wait_until(lambda: len(fakes.callloop.state.received("/s/")) == 2)


async def test_re_opt_in_before_the_opt_out_is_sent_supersedes_it(
    make_api: ApiFactory, fakes: Fakes, db_engine: Any
) -> None:
    contact = "+15555550408"
    intake = await make_api(run_worker=False)
    await intake.webhook(opt_in_payload(contact=contact))
    await intake.webhook(inbound(contact, "STOP"))
    await intake.webhook(opt_in_payload(contact=contact))
    [opt_out] = await jobs_of(intake, "opt_out")
    assert opt_out["status"] == "cancelled"

    await make_api(run_worker=True)
    await wait_until(lambda: _all_sent(intake))
    # Call Loop never hears an opt-out that could land after the new add and undo it.
    assert fakes.callloop.state.received("/s/") == []
    assert len(fakes.callloop.state.received("/r/")) == 1
    assert await subscriber_status(db_engine, contact) == "active"


async def _all_sent(api: Api) -> bool:
    jobs = await api.deliveries()
    return not any(job["status"] in ("pending", "in_progress") for job in jobs)


async def test_stop_during_the_add_waits_for_it_and_no_welcome_follows(
    make_api: ApiFactory, fakes: Fakes, db_engine: Any
) -> None:
    contact = "+15555550409"
    stop_arrived = threading.Event()
    # The group add is held at Call Loop until the opt-out reaches Call Loop too (which must
    # not happen while the add is in flight) or 1.5 s have passed.
    fakes.callloop.state.then(Scripted(200, text="OK", hold=stop_arrived, hold_timeout=1.5))
    trigger = f"{fakes.callloop.base_url}/t/?welcome55"
    first = await make_api(callloop_trigger_url=trigger)
    await first.webhook(opt_in_payload(contact=contact))
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 1)

    # A second instance, with its own idle worker, takes the STOP while the add is held.
    second = await make_api(callloop_trigger_url=trigger)
    response = await second.webhook(inbound(contact, "STOP"))
    assert response.json()["status"] == "opted_out"
    await wait_until(lambda: len(fakes.callloop.state.received("/s/")) == 1)
    stop_arrived.set()
    await wait_until(lambda: _all_sent(second))

    [opt_out_call] = fakes.callloop.state.received("/s/")
    [add] = await jobs_of(second, "subscribe", "done")
    # The /s/ left only after the add had finished: Call Loop cannot end with the contact in.
    assert opt_out_call.received_at >= datetime.fromisoformat(add["completed_at"]).timestamp()
    # And the welcome text never goes to a contact who has just said STOP.
    assert fakes.callloop.state.received("/t/") == []
    assert all(job["status"] != "pending" for job in await jobs_of(second, "trigger"))
    assert await subscriber_status(db_engine, contact) == "opted_out"


async def test_an_add_that_fails_after_a_stop_is_not_retried(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    contact = "+15555550410"
    stop_taken = threading.Event()
    fakes.callloop.state.then(Scripted(500, text="busy", hold=stop_taken, hold_timeout=10.0))
    first = await make_api(delivery_backoff_base_seconds=0.05)
    await first.webhook(opt_in_payload(contact=contact))
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 1)

    second = await make_api(delivery_backoff_base_seconds=0.05)
    assert (await second.webhook(inbound(contact, "STOP"))).json()["status"] == "opted_out"
    stop_taken.set()  # the held add now fails, after the STOP was stored
    await wait_until(lambda: len(fakes.callloop.state.received("/s/")) == 1)
    await wait_until(lambda: _all_sent(second))

    [add] = await jobs_of(second, "subscribe")
    assert add["status"] == "cancelled"  # not rescheduled to be sent after the /s/
    assert len(fakes.callloop.state.received("/r/")) == 1


async def test_retrying_dead_jobs_never_re_adds_a_contact_who_opted_out(
    api: Api, fakes: Fakes
) -> None:
    contact = "+15555550411"
    fakes.callloop.state.then(Scripted(404, text="no such group"))
    await api.webhook(opt_in_payload(contact=contact))
    [dead] = await wait_until(lambda: jobs_of(api, "subscribe", "dead"))
    assert (await api.webhook(inbound(contact, "STOP"))).json()["status"] == "opted_out"

    single = await api.admin_post(f"/v1/deliveries/{dead['id']}/retry")
    assert single.status_code == 409
    assert (await api.admin_post("/v1/deliveries/retry-dead")).json() == {"retried": 0}
    [add] = await jobs_of(api, "subscribe")
    assert add["status"] == "cancelled"
    assert len(fakes.callloop.state.received("/r/")) == 1
