"""POST /v1/webhooks/loopmessage: verify, bound, parse, store once, answer 200 after commit."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.models import OptIn, Subscriber, WebhookEvent
from tests.conftest import ADMIN_TOKEN, WEBHOOK_SECRET, Api, ApiFactory, opt_in_payload


async def count(engine: object, table: object) -> int:
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_opt_in_is_stored_with_attribution(api: Api) -> None:
    payload = opt_in_payload(
        contact="+15555550123",
        click_id="clk-42",
        utm_source="google",
        utm_medium="cpc",
        utm_campaign="credit on card online",
        utm_term="t",
        utm_content="c",
        list="vip",
    )
    response = await api.webhook(payload)
    assert response.status_code == 200
    assert response.json()["status"] == "stored"

    listing = (await api.admin_get("/v1/opt-ins", click_id="clk-42")).json()
    assert listing["total"] == 1
    [item] = listing["items"]
    assert item["contact"] == "+15555550123"
    assert item["webhook_id"] == payload["webhook_id"]
    assert item["message_id"] == payload["message_id"]
    assert item["organization_id"] == payload["organization_id"]
    assert item["utm_source"] == "google" and item["utm_medium"] == "cpc"
    assert item["utm_campaign"] == "credit on card online"
    assert item["utm_term"] == "t" and item["utm_content"] == "c"
    assert item["params"] == {"list": "vip"}
    assert item["language_code"] == "en" and item["language_name"] == "English"
    assert item["consent_evidence"] == "webhook_only"

    detail = (await api.admin_get(f"/v1/opt-ins/{item['id']}")).json()
    assert detail["webhook_id"] == payload["webhook_id"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
async def test_opt_in_keeps_the_webhook_as_it_was_received(
    api: Api, db_engine: object, encoding: str
) -> None:
    """The consent evidence keeps LoopMessage's own text (spacing, key order, characters)
    when the body is UTF-8; a body in another encoding is kept as the same JSON value."""
    payload = opt_in_payload(contact="+15555550124", click_id="clk-é", utm_source="ads")
    text = json.dumps(payload, ensure_ascii=False, indent=1)
    response = await api.client.post(
        "/v1/webhooks/loopmessage",
        content=text.encode(encoding),
        headers={"Authorization": WEBHOOK_SECRET, "Content-Type": "application/json"},
    )
    assert response.status_code == 200 and response.json()["status"] == "stored"
    async with db_engine.connect() as conn:  # type: ignore[attr-defined]
        column = "raw_payload::text" if conn.dialect.name == "postgresql" else "raw_payload"
        stored = (await conn.exec_driver_sql(f"SELECT {column} FROM opt_ins")).scalar_one()  # noqa: S608
    assert json.loads(stored) == payload
    if encoding == "utf-8":
        assert stored == text


async def test_event_opt_in_name_is_also_an_opt_in(api: Api) -> None:
    payload = opt_in_payload(click_id="c-evt")
    payload["event"] = "opt-in"
    payload.pop("type")
    assert (await api.webhook(payload)).json()["status"] == "stored"
    assert (await api.admin_get("/v1/opt-ins", click_id="c-evt")).json()["total"] == 1


async def test_retried_webhook_is_stored_once(api: Api, db_engine: object) -> None:
    payload = opt_in_payload(click_id="dup")
    first = await api.webhook(payload)
    second = await api.webhook(payload)
    assert first.status_code == second.status_code == 200
    assert second.json()["status"] == "duplicate"
    assert (await api.admin_get("/v1/opt-ins", click_id="dup")).json()["total"] == 1
    assert await count(db_engine, OptIn.__table__) == 1


async def test_repeat_opt_in_of_same_contact_is_one_subscriber(api: Api, db_engine: object) -> None:
    await api.webhook(opt_in_payload(contact="+15555550188", click_id="a"))
    await api.webhook(opt_in_payload(contact="+15555550188", click_id="b"))
    assert await count(db_engine, OptIn.__table__) == 2
    assert await count(db_engine, Subscriber.__table__) == 1


@pytest.mark.parametrize(
    "secret", [None, "", "wrong", WEBHOOK_SECRET + "x", ADMIN_TOKEN, f"Bearer {WEBHOOK_SECRET}"]
)
async def test_wrong_or_missing_authorization_is_401(
    api: Api, db_engine: object, secret: str | None
) -> None:
    response = await api.webhook(opt_in_payload(), secret=secret)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert await count(db_engine, OptIn.__table__) == 0


async def test_admin_token_cannot_call_admin_as_webhook_secret(api: Api) -> None:
    response = await api.client.get(
        "/v1/opt-ins", headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"}
    )
    assert response.status_code == 401


async def test_unset_secret_disables_intake(make_api: ApiFactory) -> None:
    api = await make_api(loop_webhook_secret=None)
    response = await api.webhook(opt_in_payload(), secret="")
    assert response.status_code == 503
    assert "LOOP_WEBHOOK_SECRET" in response.json()["detail"]


async def test_oversize_body_is_413(api: Api, db_engine: object) -> None:
    payload = opt_in_payload()
    payload["text"] = "x" * (256 * 1024)
    response = await api.webhook(payload)
    assert response.status_code == 413
    assert await count(db_engine, OptIn.__table__) == 0


async def test_malformed_json_is_400(api: Api) -> None:
    response = await api.client.post(
        "/v1/webhooks/loopmessage",
        content=b'{"webhook_id": "x",',
        headers={"Authorization": WEBHOOK_SECRET, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2],
        {"event": "opt-in", "contact": "+15555550123"},  # no webhook_id
        {"event": "opt-in", "webhook_id": "w1"},  # opt-in without contact
        {"event": "opt-in", "webhook_id": "w2", "contact": "+15555550123", "parameters": [1]},
        {"event": "opt-in", "webhook_id": 5, "contact": "+15555550123"},
        {"event": "opt-in", "webhook_id": "w" * 201, "contact": "+15555550123"},
    ],
)
async def test_wrong_shapes_are_422(api: Api, db_engine: object, payload: object) -> None:
    response = await api.webhook(payload)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_webhook"
    assert await count(db_engine, OptIn.__table__) == 0


@pytest.mark.parametrize(
    "event", ["message_delivered", "message_failed", "something_new", "message_inbound"]
)
async def test_other_events_are_recorded_and_answered_200(
    api: Api, db_engine: object, event: str
) -> None:
    payload = {
        "event": event,
        "webhook_id": f"w-{event}",
        "contact": "+15555550123",
        "text": "hello",
        "unexpected": {"nested": True},
    }
    response = await api.webhook(payload)
    assert response.status_code == 200
    assert response.json()["status"] == "recorded"
    assert await count(db_engine, OptIn.__table__) == 0
    assert await count(db_engine, WebhookEvent.__table__) == 1


async def test_email_contact_is_stored_lower_case(api: Api) -> None:
    await api.webhook(opt_in_payload(contact="Jane.Doe@Example.com", click_id="mail"))
    [item] = (await api.admin_get("/v1/opt-ins", click_id="mail")).json()["items"]
    assert item["contact"] == "jane.doe@example.com"
