"""STOP sync: an inbound opt-out keyword opts the contact out of every Call Loop group it was
added to, through the outbox, exactly once per group; a later opt-in subscribes it again."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from app.models import Subscriber
from tests.conftest import Api, ApiFactory, Fakes, opt_in_payload, wait_until

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
