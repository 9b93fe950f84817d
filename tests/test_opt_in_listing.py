"""GET /v1/opt-ins: admin auth, filters, cursor paging; GET /v1/opt-ins/{id}."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import ADMIN_TOKEN, Api, opt_in_payload


async def test_requires_the_admin_bearer_token(api: Api) -> None:
    assert (await api.client.get("/v1/opt-ins")).status_code == 401
    wrong = await api.client.get("/v1/opt-ins", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = await api.client.get("/v1/opt-ins", headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
    assert basic.status_code == 401
    assert (await api.admin_get("/v1/opt-ins")).status_code == 200


async def test_filters_and_cursor_paging(api: Api) -> None:
    for i in range(5):
        await api.webhook(
            opt_in_payload(
                contact=f"+1555555020{i}",
                click_id=f"c{i}",
                utm_campaign="spring" if i % 2 else "fall",
            )
        )
    first = (await api.admin_get("/v1/opt-ins", limit=2)).json()
    assert first["total"] == 5
    assert [item["click_id"] for item in first["items"]] == ["c4", "c3"]  # newest first
    second = (await api.admin_get("/v1/opt-ins", limit=2, cursor=first["next_cursor"])).json()
    assert [item["click_id"] for item in second["items"]] == ["c2", "c1"]
    third = (await api.admin_get("/v1/opt-ins", limit=2, cursor=second["next_cursor"])).json()
    assert [item["click_id"] for item in third["items"]] == ["c0"]
    assert third["next_cursor"] is None

    spring = (await api.admin_get("/v1/opt-ins", utm_campaign="spring")).json()
    assert spring["total"] == 2 and {i["click_id"] for i in spring["items"]} == {"c1", "c3"}
    by_contact = (await api.admin_get("/v1/opt-ins", contact="+15555550202")).json()
    assert [i["click_id"] for i in by_contact["items"]] == ["c2"]

    now = datetime.now(UTC)
    later = (
        await api.admin_get("/v1/opt-ins", since=(now + timedelta(hours=1)).isoformat())
    ).json()
    assert later["total"] == 0
    window = (
        await api.admin_get(
            "/v1/opt-ins",
            since=(now - timedelta(hours=1)).isoformat(),
            until=(now + timedelta(hours=1)).isoformat(),
        )
    ).json()
    assert window["total"] == 5


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"cursor": "abc"},
        {"since": "yesterday"},
        {"click_id": "x" * 501},
    ],
)
async def test_bad_query_parameters_are_422(api: Api, params: dict[str, object]) -> None:
    response = await api.admin_get("/v1/opt-ins", **params)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_one_opt_in_and_unknown_id(api: Api) -> None:
    await api.webhook(opt_in_payload(click_id="solo"))
    [item] = (await api.admin_get("/v1/opt-ins", click_id="solo")).json()["items"]
    detail = await api.admin_get(f"/v1/opt-ins/{item['id']}")
    assert detail.status_code == 200
    body = detail.json()
    assert body["click_id"] == "solo"
    assert body["consent"]["evidence"] == "webhook_only"
    assert [d["kind"] for d in body["deliveries"]] == ["subscribe"]
    missing = await api.admin_get("/v1/opt-ins/999999")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
