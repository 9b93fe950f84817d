"""Admin API additions: the CSV export, erasure (DELETE /v1/subscribers/{contact}) and the
LoopMessage audience delete on opt-out, all driven through HTTP against real databases."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.admin.export import HEADER, opt_ins_csv
from app.admin.queries import OptInFilters
from app.db import Base, table_of
from app.models import Erasure, LinkRequest, OptIn, Subscriber
from tests.conftest import (
    ADMIN_TOKEN,
    LOOP_API_KEY,
    VISITOR_IP,
    Api,
    ApiFactory,
    Fakes,
    opt_in_payload,
    wait_until,
)
from tests.fakes.servers import Scripted

UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"
PAGE = "https://landing.example/spring?x=1"


async def linked_opt_in(api: Api, contact: str, **parameters: str) -> dict[str, Any]:
    """A visitor asks for a link (consent evidence recorded), then completes the opt-in."""
    link = await api.client.post(
        "/v1/opt-in-links",
        json={"click_id": parameters.get("click_id"), "page_url": PAGE},
        headers={"User-Agent": UA},
    )
    assert link.status_code == 200, link.text
    payload = opt_in_payload(contact=contact, optin_ref=link.json()["ref"], **parameters)
    stored = await api.webhook(payload)
    assert stored.json()["status"] == "stored"
    return payload


async def get_csv(api: Api, **params: Any) -> list[dict[str, str]]:
    response = await api.admin_get("/v1/opt-ins.csv", **params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    reader = csv.DictReader(io.StringIO(response.text))
    assert tuple(reader.fieldnames or ()) == HEADER
    return list(reader)


# --- GET /v1/opt-ins.csv -------------------------------------------------------------------


async def test_csv_export_has_the_consent_columns(make_api: ApiFactory) -> None:
    api = await make_api(run_worker=False)
    payload = await linked_opt_in(
        api, "+15555550150", click_id="csv-1", utm_campaign="spring", first="Ada"
    )
    await api.webhook(opt_in_payload(contact="+15555550151", click_id="csv-2"))

    rows = await get_csv(api)
    assert [row["click_id"] for row in rows] == ["csv-2", "csv-1"]  # newest first
    linked = rows[1]
    assert linked["contact"] == "+15555550150"  # a plain number is not "formula-escaped"
    assert linked["webhook_id"] == payload["webhook_id"]
    assert linked["message_id"] == payload["message_id"]
    assert linked["utm_campaign"] == "spring"
    assert linked["consent_evidence"] == "link_request"
    assert linked["consent_ip"] == VISITOR_IP
    assert linked["consent_user_agent"] == UA
    assert linked["consent_page_url"] == PAGE
    assert linked["consent_text"] == api.settings.loop_optin_body
    assert linked["consent_link_ref"].startswith("lr_")
    consent_time = datetime.fromisoformat(linked["consent_time"])
    webhook_time = datetime.fromisoformat(linked["webhook_received_at"])
    assert consent_time <= webhook_time
    assert linked["received_at"] == linked["webhook_received_at"]
    assert '"first": "Ada"' in linked["params"]
    bare = rows[0]
    assert bare["consent_evidence"] == "webhook_only"
    assert bare["consent_ip"] == bare["consent_time"] == bare["consent_text"] == ""


async def test_csv_export_takes_the_list_filters(make_api: ApiFactory) -> None:
    api = await make_api(run_worker=False)
    await api.webhook(opt_in_payload(contact="+15555550152", click_id="f-1", utm_campaign="a"))
    await api.webhook(opt_in_payload(contact="+15555550153", click_id="f-2", utm_campaign="b"))
    await api.webhook(opt_in_payload(contact="Mixed.Case@iCloud.com", click_id="f-3"))

    for params in (
        {"utm_campaign": "b"},
        {"click_id": "f-1"},
        {"contact": "mixed.case@icloud.com"},
        {"contact": "+15555550152"},
    ):
        listed = (await api.admin_get("/v1/opt-ins", **params)).json()["items"]
        exported = await get_csv(api, **params)
        assert [str(item["id"]) for item in listed] == [row["id"] for row in exported], params
        assert len(exported) == 1

    now = datetime.now(UTC)
    assert len(await get_csv(api, since=(now - timedelta(hours=1)).isoformat())) == 3
    assert await get_csv(api, since=(now + timedelta(hours=1)).isoformat()) == []
    assert await get_csv(api, until=(now - timedelta(hours=1)).isoformat()) == []
    assert await get_csv(api, utm_campaign="nobody") == []


async def test_csv_export_needs_the_admin_token_and_valid_filters(api: Api) -> None:
    assert (await api.client.get("/v1/opt-ins.csv")).status_code == 401
    wrong = await api.client.get("/v1/opt-ins.csv", headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401
    bad = await api.admin_get("/v1/opt-ins.csv", since="yesterday-ish")
    assert bad.status_code == 422
    assert bad.json()["code"] == "validation_error"


async def test_csv_cells_cannot_run_as_spreadsheet_formulas(make_api: ApiFactory) -> None:
    api = await make_api(run_worker=False)
    await api.webhook(
        opt_in_payload(
            contact="+15555550154",
            utm_source='=HYPERLINK("http://evil.example","x")',
            utm_medium="@SUM(A1)",
            utm_term="-2+3",
            utm_content='plain, with comma and "quotes"\nand a newline',
        )
    )
    [row] = await get_csv(api)
    assert row["utm_source"] == '\'=HYPERLINK("http://evil.example","x")'
    assert row["utm_medium"] == "'@SUM(A1)"
    assert row["utm_term"] == "'-2+3"
    assert row["utm_content"] == 'plain, with comma and "quotes"\nand a newline'
    assert row["contact"] == "+15555550154"


async def test_csv_export_pages_through_every_batch(
    make_api: ApiFactory, db_engine: AsyncEngine
) -> None:
    api = await make_api(run_worker=False)
    for n in range(5):
        await api.webhook(opt_in_payload(contact=f"+1555555016{n}", click_id=f"b-{n}"))
    chunks = [chunk async for chunk in opt_ins_csv(db_engine, OptInFilters(), batch_size=2)]
    rows = list(csv.DictReader(io.StringIO("".join(chunks))))
    assert [row["click_id"] for row in rows] == ["b-4", "b-3", "b-2", "b-1", "b-0"]
    assert len(chunks) == 1 + 3  # the header, then three batches of at most two


# --- DELETE /v1/subscribers/{contact} ------------------------------------------------------


async def database_text(engine: AsyncEngine) -> str:
    """Every row of every table, as text: what a search of the database would find."""
    parts = []
    async with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = await conn.execute(select(table))
            parts.extend(repr(tuple(row)) for row in rows)
    return "\n".join(parts)


async def _done(api: Api, n: int) -> bool:
    return len(await api.deliveries("done")) == n


async def test_erasure_removes_personal_data_keeps_counts_and_opts_out(
    api: Api, fakes: Fakes, db_engine: AsyncEngine
) -> None:
    phone = "+15555550170"
    await linked_opt_in(api, phone, click_id="erase-1", utm_campaign="spring", first="Ada")
    await api.webhook(opt_in_payload(contact=phone, click_id="erase-2"))  # a repeat opt-in
    await api.webhook(opt_in_payload(contact="+15555550171", click_id="keep"))
    await wait_until(lambda: _done(api, 2))
    assert "5555550170" in await database_text(db_engine)

    response = await api.client.delete(
        f"/v1/subscribers/{phone}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "erased", "opt_ins_erased": 2, "opt_out_jobs": 1}

    # Call Loop is told through the outbox: /s/ with the number, once.
    [stop] = await wait_until(lambda: fakes.callloop.state.received("/s/"))
    assert b"phone=%2B15555550170" in stop.raw_query
    await wait_until(lambda: _done(api, 3))

    # Nothing personal is left anywhere in the database…
    everything = await database_text(db_engine)
    assert "5555550170" not in everything
    assert "Ada" not in everything
    assert UA not in everything and PAGE not in everything
    assert "5555550171" in everything  # …but other people's data is untouched
    # …while the anonymous counts remain.
    async with db_engine.connect() as conn:
        opt_ins = (await conn.execute(select(table_of(OptIn)).order_by(OptIn.id))).all()
        assert len(opt_ins) == 3
        erased = [row for row in opt_ins if row.erased_at is not None]
        assert {row.click_id for row in erased} == {"erase-1", "erase-2"}
        assert {row.utm_campaign for row in erased} == {"spring", None}
        assert all(row.contact is None and row.raw_payload is None for row in erased)
        [subscriber] = (
            await conn.execute(select(table_of(Subscriber)).where(Subscriber.status == "erased"))
        ).all()
        assert subscriber.contact is None
        [erasure] = (await conn.execute(select(table_of(Erasure)))).all()
        assert erasure.opt_ins_erased == 2
        assert erasure.subscriber_id == subscriber.id
        [link] = (await conn.execute(select(table_of(LinkRequest)))).all()
        assert link.client_ip is None and link.user_agent is None and link.page_url is None
        assert link.consent_text  # what was offered stays: it is not personal
    listing = (await api.admin_get("/v1/opt-ins")).json()
    assert listing["total"] == 3
    assert (await api.admin_get("/v1/opt-ins", contact=phone)).json()["total"] == 0
    rows = await get_csv(api, click_id="erase-1")
    assert rows[0]["contact"] == "" and rows[0]["erased_at"]

    again = await api.client.delete(
        f"/v1/subscribers/{phone}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert again.status_code == 404
    assert again.json()["code"] == "not_found"


async def test_erasure_of_unknown_contact_and_without_token(api: Api) -> None:
    unknown = await api.client.delete(
        "/v1/subscribers/+15555550199", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert unknown.status_code == 404
    assert (await api.client.delete("/v1/subscribers/+15555550199")).status_code == 401


async def test_erasure_also_deletes_from_loopmessage_audience_when_configured(
    make_api: ApiFactory, fakes: Fakes, db_engine: AsyncEngine
) -> None:
    api = await make_api(loop_audience_delete_on_optout=True)
    await api.webhook(opt_in_payload(contact="Someone@iCloud.com"))  # no Call Loop for emails
    response = await api.client.delete(
        "/v1/subscribers/someone@icloud.com", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 200
    [call] = await wait_until(lambda: fakes.loop.state.received("/audience/delete/"))
    assert call.path == "/api/v1/audience/delete/someone@icloud.com/"
    await wait_until(lambda: _done(api, 1))
    assert "someone@icloud.com" not in (await database_text(db_engine)).lower()


# --- POST /v1/subscribers/{contact}/opt-out with LOOP_AUDIENCE_DELETE_ON_OPTOUT -------------


@pytest.mark.parametrize("configured", [True, False])
async def test_opt_out_queues_loopmessage_audience_delete_only_when_configured(
    make_api: ApiFactory, fakes: Fakes, configured: bool
) -> None:
    api = await make_api(loop_audience_delete_on_optout=configured)
    phone = "+15555550180"
    await api.webhook(opt_in_payload(contact=phone))
    await wait_until(lambda: _done(api, 1))

    out = await api.admin_post(f"/v1/subscribers/{phone}/opt-out")
    assert out.status_code == 200
    assert out.json() == {"contact": phone, "status": "opted_out", "opt_out_jobs": 1}
    await wait_until(lambda: _done(api, 3 if configured else 2))
    kinds = sorted(job["kind"] for job in await api.deliveries("done"))
    deletes = fakes.loop.state.received("/audience/delete/")
    if configured:
        assert kinds == ["audience_delete", "opt_out", "subscribe"]
        [call] = deletes
        assert call.method == "DELETE"
        assert call.path == f"/api/v1/audience/delete/{phone}/"
        assert call.headers["authorization"] == LOOP_API_KEY
    else:
        assert kinds == ["opt_out", "subscribe"]
        assert deletes == []

    # A second opt-out of the same contact sends nothing new anywhere.
    again = await api.admin_post(f"/v1/subscribers/{phone}/opt-out")
    assert again.json()["opt_out_jobs"] == 0
    assert len(await api.deliveries()) == (3 if configured else 2)


async def test_audience_delete_is_retried_through_the_outbox(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    api = await make_api(loop_audience_delete_on_optout=True)
    await api.webhook(opt_in_payload(contact="+15555550181"))
    await wait_until(lambda: _done(api, 1))
    fakes.loop.state.then(Scripted(503, {"success": False}))
    await api.admin_post("/v1/subscribers/+15555550181/opt-out")
    await wait_until(lambda: _done(api, 3))
    [job] = [job for job in await api.deliveries("done") if job["kind"] == "audience_delete"]
    assert job["attempts"] == 2
    assert len(fakes.loop.state.received("/audience/delete/")) == 2


async def test_audience_delete_without_api_key_waits_in_the_outbox(
    make_api: ApiFactory, fakes: Fakes, db_engine: AsyncEngine
) -> None:
    api = await make_api(loop_audience_delete_on_optout=True, loop_api_key=None)
    await api.webhook(opt_in_payload(contact="+15555550182"))
    await wait_until(lambda: _done(api, 1))
    await api.admin_post("/v1/subscribers/+15555550182/opt-out")
    await wait_until(lambda: _done(api, 2))  # the Call Loop /s/
    async with db_engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT status, last_error FROM delivery_jobs WHERE kind = 'audience_delete'")
            )
        ).one()
    await wait_until(lambda: _has_error(db_engine))
    assert row.status in ("pending", "in_progress")
    assert fakes.loop.state.received("/audience/delete/") == []


async def _has_error(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        error = (
            await conn.execute(
                text("SELECT last_error FROM delivery_jobs WHERE kind = 'audience_delete'")
            )
        ).scalar()
    return bool(error and "LOOP_API_KEY" in error)
