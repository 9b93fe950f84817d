"""GET /v1/opt-in (the no-JS link) and the drop-in script's static serving, over HTTP."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import LinkRequest
from tests.conftest import LOOP_API_KEY, VISITOR_IP, Api, ApiFactory, Fakes
from tests.fakes.servers import Scripted
from tests.test_links import ANDROID, DESKTOP, IPHONE_17

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def get_unfollowed(api: Api, url: str, **kwargs: object) -> httpx.Response:
    """GET through the app's transport alone: httpx's client parses every Location for its
    redirect logic and cannot parse sms:/imessage: targets, which browsers follow fine."""
    transport = httpx.ASGITransport(app=api.app, client=(VISITOR_IP, 40000))
    request = api.client.build_request("GET", url, **kwargs)  # type: ignore[arg-type]
    response = await transport.handle_async_request(request)
    await response.aread()
    return response


async def link_rows(db_engine: AsyncEngine) -> list[object]:
    async with db_engine.connect() as conn:
        return list((await conn.execute(select(LinkRequest.__table__))).all())


@pytest.mark.parametrize(
    ("user_agent", "scheme"),
    [(IPHONE_17, "imessage://"), (ANDROID, "sms:"), (DESKTOP, "https://opt-in.imsg.link/")],
)
async def test_redirects_to_the_link_for_the_device(
    api: Api, fakes: Fakes, db_engine: AsyncEngine, user_agent: str, scheme: str
) -> None:
    response = await get_unfollowed(
        api,
        "/v1/opt-in",
        params={"click_id": "clk-9", "utm_source": "print", "utm_campaign": "poster"},
        headers={"User-Agent": user_agent, "Referer": "https://landing.example/poster"},
    )
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(scheme)
    assert response.headers["cache-control"] == "no-store"

    [call] = fakes.loop.state.received("/generate-url/")
    sent = call.json()
    assert call.headers["authorization"] == LOOP_API_KEY
    assert sent["click_id"] == "clk-9"
    assert sent["utm_source"] == "print" and sent["utm_campaign"] == "poster"
    assert sent["body"] == api.settings.loop_optin_body

    [row] = await link_rows(db_engine)
    assert row.channel == "redirect"  # type: ignore[attr-defined]
    assert row.ref == sent["optin_ref"]  # type: ignore[attr-defined]
    assert row.click_id == "clk-9"  # type: ignore[attr-defined]
    assert row.client_ip == VISITOR_IP  # type: ignore[attr-defined]
    assert row.user_agent == user_agent  # type: ignore[attr-defined]
    assert row.page_url == "https://landing.example/poster"  # type: ignore[attr-defined]


async def test_ad_click_ids_stand_in_for_click_id_and_other_names_are_params(
    api: Api, fakes: Fakes
) -> None:
    response = await api.client.get(
        "/v1/opt-in?fbclid=fb-1&gclid=g-1&utm_medium=cpc&list=vip&first=Ada&utm_medium=dup"
    )
    assert response.status_code == 302, response.text
    sent = fakes.loop.state.received("/generate-url/")[0].json()
    assert sent["click_id"] == "g-1"  # the first in the order click_id, gclid, fbclid, ttclid
    assert sent["utm_medium"] == "cpc"  # a repeated name keeps its first value
    assert sent["list"] == "vip" and sent["first"] == "Ada"
    assert "gclid" not in sent and "fbclid" not in sent


async def test_click_id_wins_over_ad_click_ids(api: Api, fakes: Fakes) -> None:
    response = await api.client.get("/v1/opt-in?ttclid=tt-1&click_id=mine")
    assert response.status_code == 302
    assert fakes.loop.state.received("/generate-url/")[0].json()["click_id"] == "mine"


@pytest.mark.parametrize(
    "query",
    [
        "click_id=" + "x" * 501,
        "body=Join%20us",  # no [opt-in-code]
        "sender_type=shared",  # reserved name
        "optin_ref=forged",
        "bad%20key=v",
        "&".join(f"k{i}=v" for i in range(21)),
    ],
)
async def test_bad_links_are_422_json_and_nothing_is_stored(
    api: Api, fakes: Fakes, db_engine: AsyncEngine, query: str
) -> None:
    response = await api.client.get(f"/v1/opt-in?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert isinstance(response.json()["detail"], list)
    assert fakes.loop.state.received() == []
    assert await link_rows(db_engine) == []


async def test_a_browser_gets_a_small_html_page_for_errors(api: Api, fakes: Fakes) -> None:
    response = await api.client.get(
        "/v1/opt-in?sender_type=<script>x</script>", headers={"Accept": BROWSER_ACCEPT}
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")
    assert "This sign-up link is not valid" in response.text
    assert "<script>" not in response.text  # the query is escaped, never echoed raw
    assert "script-src" not in response.headers["content-security-policy"]
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert fakes.loop.state.received() == []


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (Scripted(500, {"error": "boom"}), 502, "upstream_error"),
        (Scripted(429, {}, headers={"Retry-After": "9"}), 503, "upstream_rate_limited"),
        (Scripted(200, {"id": "only-an-id"}), 502, "upstream_error"),
    ],
)
async def test_upstream_failures_are_gateway_errors_in_json_or_html(
    api: Api, fakes: Fakes, answer: Scripted, status: int, code: str
) -> None:
    fakes.loop.state.then(answer)
    response = await api.client.get("/v1/opt-in?click_id=c")
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert LOOP_API_KEY not in response.text

    fakes.loop.state.then(answer)
    page = await api.client.get("/v1/opt-in?click_id=c", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == status
    assert "Sign-up is briefly unavailable" in page.text
    assert LOOP_API_KEY not in page.text
    if status == 503:
        assert page.headers["retry-after"] == "9"


async def test_redirect_shares_the_rate_limit_with_the_post(make_api: ApiFactory) -> None:
    api = await make_api(rate_limit_links="2/minute")
    assert (await api.client.post("/v1/opt-in-links", json={})).status_code == 200
    assert (await api.client.get("/v1/opt-in")).status_code == 302
    limited = await api.client.get("/v1/opt-in")
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    page = await api.client.get("/v1/opt-in", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 429
    assert "Please wait a moment" in page.text


async def test_without_a_loopmessage_key_the_link_says_so(make_api: ApiFactory) -> None:
    api = await make_api(loop_api_key=None)
    response = await api.client.get("/v1/opt-in")
    assert response.status_code == 503
    assert response.json()["code"] == "not_configured"


async def test_drop_in_script_is_served_for_a_year(api: Api) -> None:
    response = await api.client.get("/static/optin-v1.js")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "javascript" in response.headers["content-type"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "/v1/opt-in-links" in response.text
    # A script is not a document: the default CSP it carries does not stop pages running it.
    assert "cross-origin-resource-policy" not in response.headers

    missing = await api.client.get("/static/nope.js")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
