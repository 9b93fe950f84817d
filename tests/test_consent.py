"""Consent evidence: captured with the link request, joined to the opt-in by our reference
(never by click_id), shown in the opt-in's consent block, and kept."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.conftest import VISITOR_IP, Api, ApiFactory, Fakes, opt_in_payload

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
CUSTOM_BODY = "  Oui! Text me the Spring deals 🌷 (msg&data rates apply) [opt-in-code]  "


async def request_link(
    api: Api, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    response = await api.client.post("/v1/opt-in-links", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def complete_opt_in(api: Api, **parameters: str) -> dict[str, Any]:
    """LoopMessage's webhook for a completed opt-in; returns the stored opt-in's detail."""
    payload = opt_in_payload(contact="+15555550301", **parameters)
    response = await api.webhook(payload)
    assert response.status_code == 200 and response.json()["status"] == "stored"
    listing = (await api.admin_get("/v1/opt-ins", limit=1)).json()
    [item] = listing["items"]
    assert item["webhook_id"] == payload["webhook_id"]
    detail = (await api.admin_get(f"/v1/opt-ins/{item['id']}")).json()
    assert detail["consent"]["message_id"] == payload["message_id"]
    return dict(detail)


async def test_evidence_is_stored_with_the_link_and_joined_to_the_opt_in(
    api: Api, fakes: Fakes
) -> None:
    link = await request_link(
        api,
        {
            "body": CUSTOM_BODY,
            "click_id": "clk-consent",
            "utm_campaign": "spring",
            "page_url": "https://landing.example/spring?src=ad",
        },
        headers={"User-Agent": IPHONE, "Referer": "https://elsewhere.example/"},
    )
    # The reference that makes the join possible travelled to LoopMessage with the link.
    [upstream] = fakes.loop.state.received("generate-url")
    assert upstream.json()["optin_ref"] == link["ref"]
    assert upstream.json()["body"] == CUSTOM_BODY

    # LoopMessage returns every link field in `parameters`, our reference among them.
    opt_in = await complete_opt_in(
        api, click_id="clk-consent", utm_campaign="spring", optin_ref=link["ref"]
    )
    assert opt_in["consent_evidence"] == "link_request"
    assert opt_in["link_request_id"] is not None
    assert "optin_ref" not in opt_in["params"]
    consent = opt_in["consent"]
    assert consent["evidence"] == "link_request"
    assert consent["link_ref"] == link["ref"]
    assert consent["ip"] == VISITOR_IP
    assert consent["user_agent"] == IPHONE
    assert consent["page_url"] == "https://landing.example/spring?src=ad"
    assert consent["text"] == CUSTOM_BODY  # byte for byte, spaces and emoji included
    link_time = datetime.fromisoformat(consent["time"])
    assert link_time.utcoffset() == timedelta(0)  # stored and shown in UTC
    assert consent["webhook_received_at"] == opt_in["received_at"]
    assert link_time <= datetime.fromisoformat(consent["webhook_received_at"])


async def test_default_body_is_the_consent_text_when_none_is_sent(api: Api) -> None:
    link = await request_link(api, {})
    opt_in = await complete_opt_in(api, optin_ref=link["ref"])
    assert opt_in["consent"]["text"] == api.settings.loop_optin_body
    assert opt_in["consent"]["page_url"] is None


@pytest.mark.parametrize(
    ("body", "headers", "page"),
    [
        pytest.param(
            {"page_url": "https://landing.example/a"},
            {"Referer": "https://landing.example/b", "Origin": "https://landing.example"},
            "https://landing.example/a",
            id="page_url-first",
        ),
        pytest.param(
            {},
            {"Referer": "https://landing.example/b", "Origin": "https://landing.example"},
            "https://landing.example/b",
            id="then-referer",
        ),
        pytest.param(
            {}, {"Origin": "https://landing.example"}, "https://landing.example", id="then-origin"
        ),
    ],
)
async def test_page_is_page_url_else_referer_else_origin(
    api: Api, body: dict[str, str], headers: dict[str, str], page: str
) -> None:
    link = await request_link(api, body, headers)
    opt_in = await complete_opt_in(api, optin_ref=link["ref"])
    assert opt_in["consent"]["page_url"] == page


@pytest.mark.parametrize(
    ("trusted_proxies", "forwarded", "expected_ip"),
    [
        pytest.param("", "198.51.100.23", VISITOR_IP, id="no-trusted-proxies"),
        pytest.param("192.0.2.0/24", "198.51.100.23", VISITOR_IP, id="peer-not-trusted"),
        pytest.param("203.0.113.0/24", "198.51.100.23", "198.51.100.23", id="peer-trusted"),
        pytest.param(
            "203.0.113.0/24",
            "10.9.9.9, 198.51.100.23, 203.0.113.50",
            "198.51.100.23",
            id="rightmost-untrusted-hop",
        ),
    ],
)
async def test_client_ip_comes_from_forwarded_for_only_via_a_trusted_proxy(
    make_api: ApiFactory, trusted_proxies: str, forwarded: str, expected_ip: str
) -> None:
    api = await make_api(trusted_proxies=trusted_proxies)  # the peer is VISITOR_IP
    link = await request_link(api, {}, {"X-Forwarded-For": forwarded})
    opt_in = await complete_opt_in(api, optin_ref=link["ref"])
    assert opt_in["consent"]["ip"] == expected_ip


def _assert_webhook_only(opt_in: dict[str, Any]) -> None:
    assert opt_in["consent_evidence"] == "webhook_only"
    assert opt_in["link_request_id"] is None
    consent = opt_in["consent"]
    assert consent["evidence"] == "webhook_only"
    assert consent["link_ref"] is None
    assert consent["time"] is None and consent["ip"] is None and consent["text"] is None
    # What the webhook itself proves is still there.
    assert consent["message_id"] and consent["webhook_received_at"]


async def test_opt_in_without_reference_is_webhook_only(api: Api) -> None:
    await request_link(api, {"click_id": "clk-shared"})
    # Same click_id as the link request, but no reference: a click_id is never enough to join.
    opt_in = await complete_opt_in(api, click_id="clk-shared")
    _assert_webhook_only(opt_in)
    assert opt_in["click_id"] == "clk-shared"


async def test_opt_in_with_unknown_reference_is_webhook_only(api: Api) -> None:
    await request_link(api, {"click_id": "clk-other"})
    opt_in = await complete_opt_in(api, click_id="clk-other", optin_ref="lr_made-elsewhere")
    _assert_webhook_only(opt_in)


async def test_opt_in_and_consent_are_kept_after_the_contact_opts_out(api: Api) -> None:
    link = await request_link(api, {"page_url": "https://landing.example/keep"})
    opt_in = await complete_opt_in(api, optin_ref=link["ref"])
    stop = {
        "event": "message_inbound",
        "webhook_id": "stop-keep",
        "contact": opt_in["contact"],
        "text": "STOP",
    }
    assert (await api.webhook(stop)).json()["status"] == "opted_out"
    kept = (await api.admin_get(f"/v1/opt-ins/{opt_in['id']}")).json()
    assert kept["contact"] == opt_in["contact"]
    assert kept["erased_at"] is None
    assert kept["consent"] == opt_in["consent"]
