"""POST /v1/opt-in-links: the CORS-safe proxy to LoopMessage generate-url."""

from __future__ import annotations

import httpx
import pytest

from app.links.endpoint import CorsHeaders
from app.links.service import new_ref
from tests.conftest import ALLOWED_ORIGIN, LOOP_API_KEY, VISITOR_IP, Api, ApiFactory, Fakes
from tests.fakes.servers import Scripted
from tests.test_ops import scrape, value

IPHONE_17 = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
IPHONE_12 = "Mozilla/5.0 (iPhone; CPU iPhone OS 12_5_7 like Mac OS X) AppleWebKit/605.1.15"
ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120 Mobile"
DESKTOP = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36"


async def test_link_forwards_key_body_and_attribution(api: Api, fakes: Fakes) -> None:
    response = await api.client.post(
        "/v1/opt-in-links",
        json={
            "click_id": "clk-1",
            "utm_source": "google",
            "utm_medium": "cpc",
            "utm_campaign": "spring sale",
            "utm_term": "sms",
            "utm_content": "hero",
            "params": {"list": "vip", "first": "Ada"},
        },
        headers={"User-Agent": IPHONE_17},
    )
    assert response.status_code == 200, response.text
    links = response.json()
    assert links["recommended"] == "imessage"
    assert links["imessage"].startswith("imessage://")
    assert links["sms"].startswith("sms:")
    assert links["url"].startswith("https://")
    assert links["ref"].startswith("lr_")

    [call] = fakes.loop.state.received("/generate-url/")
    assert call.method == "POST"
    assert call.headers["authorization"] == LOOP_API_KEY  # raw key, no Bearer prefix
    sent = call.json()
    assert sent["body"] == api.settings.loop_optin_body
    assert "[opt-in-code]" in sent["body"]
    assert sent["click_id"] == "clk-1"
    assert sent["utm_campaign"] == "spring sale"
    assert sent["utm_term"] == "sms" and sent["utm_content"] == "hero"
    assert sent["list"] == "vip" and sent["first"] == "Ada"  # params flattened at top level
    assert sent["optin_ref"] == links["ref"]


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [(IPHONE_17, "imessage"), (IPHONE_12, "sms"), (ANDROID, "sms"), (DESKTOP, "url"), ("", "url")],
)
async def test_recommended_link_fits_device(api: Api, user_agent: str, expected: str) -> None:
    response = await api.client.post(
        "/v1/opt-in-links", json={}, headers={"User-Agent": user_agent}
    )
    assert response.status_code == 200
    assert response.json()["recommended"] == expected


async def test_custom_body_must_hold_opt_in_code(api: Api, fakes: Fakes) -> None:
    response = await api.client.post("/v1/opt-in-links", json={"body": "Join us!"})
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert fakes.loop.state.received() == []

    ok = await api.client.post("/v1/opt-in-links", json={"body": "Join! [opt-in-code]"})
    assert ok.status_code == 200
    assert fakes.loop.state.received()[0].json()["body"] == "Join! [opt-in-code]"


@pytest.mark.parametrize(
    "body",
    [
        {"click_id": "x" * 501},
        {"utm_campaign": 5},
        {"params": {"body": "override"}},
        {"params": {"optin_ref": "forged"}},
        {"params": {"bad key": "v"}},
        {"params": {f"k{i}": "v" for i in range(21)}},
        {"unknown_field": "x"},
        [],
    ],
)
async def test_bad_link_requests_are_422(api: Api, fakes: Fakes, body: object) -> None:
    response = await api.client.post("/v1/opt-in-links", json=body)
    assert response.status_code == 422
    assert fakes.loop.state.received() == []


async def test_link_request_is_recorded_with_consent_evidence(
    api: Api, fakes: Fakes, db_engine: object
) -> None:
    from sqlalchemy import select

    from app.models import LinkRequest

    response = await api.client.post(
        "/v1/opt-in-links",
        json={"click_id": "clk-ev", "page_url": "https://landing.example/spring"},
        headers={"User-Agent": ANDROID},
    )
    assert response.status_code == 200
    async with db_engine.connect() as conn:  # type: ignore[attr-defined]
        row = (await conn.execute(select(LinkRequest.__table__))).one()
    assert row.ref == response.json()["ref"]
    assert row.click_id == "clk-ev"
    assert row.client_ip == VISITOR_IP
    assert row.user_agent == ANDROID
    assert row.page_url == "https://landing.example/spring"
    assert row.consent_text == api.settings.loop_optin_body
    assert row.created_at.tzinfo is not None


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (
            Scripted(400, {"success": False, "code": 130, "message": "Invalid key"}),
            502,
            "upstream_rejected",
        ),
        (Scripted(500, {"error": "boom"}), 502, "upstream_error"),
        (Scripted(429, {}, headers={"Retry-After": "7"}), 503, "upstream_rate_limited"),
        (
            Scripted(200, {"success": False, "code": 550, "message": "limit"}),
            502,
            "upstream_rejected",
        ),
        (Scripted(200, text="not json"), 502, "upstream_error"),
        (Scripted(200, delay=3.0), 504, "upstream_timeout"),
    ],
)
async def test_upstream_failures_map_to_gateway_errors(
    api: Api, fakes: Fakes, answer: Scripted, status: int, code: str
) -> None:
    fakes.loop.state.then(answer)
    response = await api.client.post("/v1/opt-in-links", json={"click_id": "c"})
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert LOOP_API_KEY not in response.text
    if status == 503:
        assert response.headers["Retry-After"] == "7"


async def test_unreachable_upstream_is_503(make_api: ApiFactory) -> None:
    from tests.fakes.servers import free_port

    api = await make_api(loop_api_base_url=f"http://127.0.0.1:{free_port()}")
    response = await api.client.post("/v1/opt-in-links", json={})
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unreachable"
    assert "Retry-After" in response.headers


async def test_missing_api_key_disables_links_only(make_api: ApiFactory) -> None:
    api = await make_api(loop_api_key=None)
    response = await api.client.post("/v1/opt-in-links", json={})
    assert response.status_code == 503
    assert response.json()["code"] == "not_configured"
    assert "LOOP_API_KEY" in response.json()["detail"]
    assert (await api.client.get("/healthz")).status_code == 200


async def test_rate_limit_answers_429_with_retry_after(make_api: ApiFactory) -> None:
    api = await make_api(rate_limit_links="2/minute")
    for _ in range(2):
        assert (await api.client.post("/v1/opt-in-links", json={})).status_code == 200
    limited = await api.client.post("/v1/opt-in-links", json={})
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


async def test_cors_allows_only_configured_origins(api: Api) -> None:
    preflight = await api.client.options(
        "/v1/opt-in-links",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN

    allowed = await api.client.post("/v1/opt-in-links", json={}, headers={"Origin": ALLOWED_ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN

    other = await api.client.post(
        "/v1/opt-in-links", json={}, headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers
    bad_preflight = await api.client.options(
        "/v1/opt-in-links",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert bad_preflight.headers.get("access-control-allow-origin") is None


CORS_HEADERS = (
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "vary",
)


def cors_of(response: httpx.Response) -> dict[str, list[str]]:
    return {name: response.headers.get_list(name) for name in CORS_HEADERS}


@pytest.mark.parametrize("remembered", [1024, 1], ids=["remembered", "forgotten-each-time"])
async def test_answered_link_has_the_cors_headers_of_the_app_middleware(
    api: Api, monkeypatch: pytest.MonkeyPatch, remembered: int
) -> None:
    # The link endpoint answers a well-formed request itself, with the CORS headers Starlette's
    # middleware gave the first request from that Origin; a refused body goes through the
    # middleware itself. Both must carry the same, from cache or not, for every kind of Origin.
    monkeypatch.setattr(CorsHeaders, "MAX_ORIGINS", remembered)
    for _ in range(2):
        for origin in (ALLOWED_ORIGIN, "https://evil.example", None):
            headers = {"Origin": origin} if origin else {}
            answered = await api.client.post(
                "/v1/opt-in-links", json={"click_id": "clk-cors"}, headers=headers
            )
            refused = await api.client.post(
                "/v1/opt-in-links", json={"click_id": 5}, headers=headers
            )
            assert (answered.status_code, refused.status_code) == (200, 422)
            assert cors_of(answered) == cors_of(refused), origin
            assert cors_of(answered)["vary"] == ["Origin"]
            allowed = [ALLOWED_ORIGIN] if origin == ALLOWED_ORIGIN else []
            assert cors_of(answered)["access-control-allow-origin"] == allowed


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        # The body the model refuses: handed to the FastAPI route, which lists the field errors.
        (b'{"click_id": 5}', {"Content-Type": "application/json"}, 422, "validation_error"),
        (b"{not json", {"Content-Type": "application/json"}, 422, "validation_error"),
        (b"click_id=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, None),
        (b"{}" + b" " * 17_000, {"Content-Type": "application/json"}, 413, None),
    ],
)
async def test_refused_link_requests_get_one_answer_with_cors_headers(
    api: Api,
    fakes: Fakes,
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    response = await api.client.post(
        "/v1/opt-in-links", content=content, headers={**headers, "Origin": ALLOWED_ORIGIN}
    )
    assert response.status_code == status
    if code:
        assert response.json()["code"] == code
    # CORS headers once (a browser refuses a doubled Access-Control-Allow-Origin), and the
    # request id and security headers as on every answer.
    assert response.headers.get_list("access-control-allow-origin") == [ALLOWED_ORIGIN]
    assert len(response.headers.get_list("x-request-id")) == 1
    assert response.headers["x-content-type-options"] == "nosniff"
    assert fakes.loop.state.requests == []  # nothing reached LoopMessage


async def test_chunked_link_request_is_answered_like_any_other(api: Api, fakes: Fakes) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"click_id": '
        yield b'"clk-chunked"}'

    response = await api.client.post(
        "/v1/opt-in-links",
        content=chunks(),
        headers={"Content-Type": "application/json", "Origin": ALLOWED_ORIGIN},
    )
    assert response.status_code == 200
    assert response.headers.get_list("access-control-allow-origin") == [ALLOWED_ORIGIN]
    assert fakes.loop.state.requests[-1].json()["click_id"] == "clk-chunked"


async def test_link_answer_carries_cors_request_id_and_is_counted(api: Api) -> None:
    counted = {"method": "POST", "route": "/v1/opt-in-links", "status": "200"}
    before = value(await scrape(api), "optin_http_requests_total", **counted)
    response = await api.client.post(
        "/v1/opt-in-links",
        json={"click_id": "clk-metrics"},
        headers={"Origin": ALLOWED_ORIGIN, "X-Request-ID": "req-link-1"},
    )
    assert response.status_code == 200
    assert response.headers.get_list("access-control-allow-origin") == [ALLOWED_ORIGIN]
    assert response.headers["x-request-id"] == "req-link-1"
    assert value(await scrape(api), "optin_http_requests_total", **counted) == before + 1


def test_link_refs_sort_in_the_order_they_were_made() -> None:
    """Refs made one after another add to the end of the `ref` index (time first), and stay
    unguessable and unique within the same millisecond (128 random bits after it)."""
    start = 1_764_000_000_000 * 1_000_000  # a moment in 2025, in nanoseconds
    moments = [start + step * 400_000 for step in range(50)]  # 0.4 ms apart: some share a ms
    refs = [new_ref(moment) for moment in moments]
    by_ms = [moment // 1_000_000 for moment in moments]
    assert [by_ms[refs.index(ref)] for ref in sorted(refs)] == sorted(by_ms)
    assert len(set(refs)) == len(refs)
    assert all(ref.startswith("lr_") and len(ref) <= 40 for ref in refs)  # the column's width
    assert new_ref(start) != new_ref(start)
