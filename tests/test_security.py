"""Who gets in: secrets, client IPs, CORS, headers, body limits, JSON only."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from app.models import LinkRequest
from app.settings import Settings
from tests.conftest import (
    ADMIN_TOKEN,
    ALLOWED_ORIGIN,
    VISITOR_IP,
    WEBHOOK_SECRET,
    Api,
    ApiFactory,
    Fakes,
    opt_in_payload,
)

WEBHOOK = "/v1/webhooks/loopmessage"
LINKS = "/v1/opt-in-links"


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# --- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["loop_webhook_secret", "loop_webhook_secret_previous"])
def test_webhook_and_admin_secrets_may_not_be_equal(name: str) -> None:
    values = {"loop_webhook_secret": "whsec-other", name: "same-value", "admin_token": "same-value"}
    with pytest.raises(ValidationError, match="ADMIN_TOKEN must differ"):
        settings(**values)


async def test_webhook_secret_does_not_open_the_admin_api(api: Api) -> None:
    for header in (f"Bearer {WEBHOOK_SECRET}", WEBHOOK_SECRET, f"Bearer {ADMIN_TOKEN}x", "Bearer "):
        response = await api.client.get("/v1/deliveries", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_admin_token_is_not_a_webhook_secret(api: Api, db_engine: Any) -> None:
    for header in (ADMIN_TOKEN, f"Bearer {ADMIN_TOKEN}", f"Bearer {WEBHOOK_SECRET}", ""):
        response = await api.webhook(opt_in_payload(), secret=header)
        assert response.status_code == 401, header
    assert (await api.webhook(opt_in_payload(), secret=WEBHOOK_SECRET[:-1])).status_code == 401
    assert (await api.webhook(opt_in_payload(), secret=WEBHOOK_SECRET + "x")).status_code == 401
    assert (await api.admin_get("/v1/opt-ins")).json()["total"] == 0


async def test_rotation_accepts_old_and_new_webhook_secret(make_api: ApiFactory) -> None:
    api = await make_api(loop_webhook_secret="whsec-new", loop_webhook_secret_previous="whsec-old")
    assert (await api.webhook(opt_in_payload(), secret="whsec-new")).status_code == 200
    assert (await api.webhook(opt_in_payload(), secret="whsec-old")).status_code == 200
    assert (await api.webhook(opt_in_payload(), secret="whsec-older")).status_code == 401


async def test_unset_secrets_disable_their_endpoint(make_api: ApiFactory) -> None:
    api = await make_api(loop_webhook_secret=None, admin_token=None, run_worker=False)
    for header in ("", "None", "null", WEBHOOK_SECRET):
        webhook = await api.webhook(opt_in_payload(), secret=header)
        assert webhook.status_code == 503
        assert webhook.json()["code"] == "not_configured"
        admin = await api.client.get("/v1/opt-ins", headers={"Authorization": f"Bearer {header}"})
        assert admin.status_code == 503
        assert admin.json()["code"] == "not_configured"


# --- client IP ---------------------------------------------------------------------------------


async def _recorded_ips(db_engine: Any) -> list[str]:
    async with db_engine.connect() as conn:
        rows = await conn.execute(select(LinkRequest.client_ip).order_by(LinkRequest.id))
        return [row[0] for row in rows]


async def test_forwarded_for_is_ignored_from_untrusted_peers(
    make_api: ApiFactory, db_engine: Any
) -> None:
    api = await make_api(rate_limit_links="2/minute")
    spoofed = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(3)]
    statuses = [(await api.client.post(LINKS, json={}, headers=h)).status_code for h in spoofed]
    # Three different forged addresses are still one visitor: the socket peer.
    assert statuses == [200, 200, 429]
    assert await _recorded_ips(db_engine) == [VISITOR_IP, VISITOR_IP]


async def test_forwarded_for_is_honoured_from_a_trusted_proxy(
    make_api: ApiFactory, db_engine: Any
) -> None:
    api = await make_api(trusted_proxies=f"{VISITOR_IP}/32,10.0.0.0/8", rate_limit_links="1/minute")
    first = await api.client.post(
        LINKS, json={}, headers={"X-Forwarded-For": "192.0.2.1, 198.51.100.9, 10.1.2.3"}
    )
    second = await api.client.post(LINKS, json={}, headers={"X-Forwarded-For": "192.0.2.77"})
    assert first.status_code == 200 and second.status_code == 200  # two visitors, two budgets
    # The right-most address that is not a trusted proxy is the visitor; what a client
    # prepends on its own (192.0.2.1) is not believed.
    assert await _recorded_ips(db_engine) == ["198.51.100.9", "192.0.2.77"]


# --- CORS and headers --------------------------------------------------------------------------


@pytest.mark.parametrize("origins", ["*", "https://*.example.com", "https://a.example,*"])
def test_cors_wildcards_are_refused(origins: str) -> None:
    with pytest.raises(ValidationError, match="CORS_ALLOW_ORIGINS"):
        settings(cors_allow_origins=origins)


async def test_no_response_allows_every_origin(api: Api) -> None:
    for origin in (ALLOWED_ORIGIN, "https://evil.example", "null"):
        for method, path in (("POST", LINKS), ("OPTIONS", LINKS), ("GET", "/healthz")):
            response = await api.client.request(
                method,
                path,
                json={} if method == "POST" else None,
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            )
            assert response.headers.get("access-control-allow-origin") in (None, ALLOWED_ORIGIN)
            assert response.headers.get("access-control-allow-credentials") is None


async def _every_kind_of_response(api: Api, fakes: Fakes) -> list[httpx.Response]:
    from tests.fakes.servers import Scripted

    fakes.loop.state.then(Scripted(500, {}))
    c = api.client
    return [
        await c.get("/healthz"),
        await c.get("/readyz"),
        await c.get("/openapi.json"),
        await c.get("/nowhere"),
        await c.put("/healthz"),
        await c.post(LINKS, json={"body": "no code"}),
        await c.post(LINKS, json={}),  # upstream 500 -> 502
        await c.post(LINKS, content=b"x" * 20_000, headers={"Content-Type": "application/json"}),
        await c.post(LINKS, content=b"a=b", headers={"Content-Type": "text/plain"}),
        await c.options(
            LINKS, headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"}
        ),
        await api.webhook(opt_in_payload(), secret="wrong"),
        await api.webhook(opt_in_payload()),
        await c.get("/v1/opt-ins"),
        await api.admin_get("/v1/opt-ins"),
    ]


async def test_security_headers_on_every_response(api: Api, fakes: Fakes) -> None:
    responses = await _every_kind_of_response(api, fakes)
    statuses = {response.status_code for response in responses}
    assert {200, 401, 404, 405, 413, 415, 422, 502} <= statuses
    for response in responses:
        where = f"{response.request.method} {response.request.url.path} {response.status_code}"
        assert response.headers["x-content-type-options"] == "nosniff", where
        assert response.headers["x-frame-options"] == "DENY", where
        assert response.headers["referrer-policy"] == "no-referrer", where
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], where
        assert response.headers["x-request-id"], where
        assert "server" not in response.headers or "uvicorn" not in response.headers["server"]


# --- bodies ------------------------------------------------------------------------------------


async def test_link_body_over_16_kb_is_413(api: Api, fakes: Fakes) -> None:
    big = b'{"click_id": "' + b"x" * 17_000 + b'"}'
    response = await api.client.post(
        LINKS, content=big, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"

    async def chunks() -> Any:  # no Content-Length: the limit still holds
        for _ in range(20):
            yield b" " * 1024

    chunked = await api.client.post(
        LINKS, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    assert fakes.loop.state.received() == []


async def test_chunked_body_under_the_limit_still_works(api: Api, fakes: Fakes) -> None:
    async def chunks() -> Any:
        yield b'{"click_id": '
        yield b'"chunky"}'

    response = await api.client.post(
        LINKS, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert fakes.loop.state.received()[0].json()["click_id"] == "chunky"


async def test_webhook_over_256_kb_is_413_and_nothing_is_stored(api: Api) -> None:
    payload = opt_in_payload(note="x" * (300 * 1024))
    response = await api.webhook(payload)
    assert response.status_code == 413
    assert (await api.admin_get("/v1/opt-ins")).json()["total"] == 0


async def test_chunked_webhook_is_read_up_to_256_kb(api: Api) -> None:
    headers = {"Content-Type": "application/json", "Authorization": WEBHOOK_SECRET}
    payload = json.dumps(opt_in_payload(contact="+15555550801")).encode()

    async def in_pieces() -> Any:  # no Content-Length
        for start in range(0, len(payload), 100):
            yield payload[start : start + 100]

    stored = await api.client.post(WEBHOOK, content=in_pieces(), headers=headers)
    assert stored.status_code == 200, stored.text
    assert stored.json()["status"] == "stored"

    async def endless() -> Any:
        yield payload[:-1]
        for _ in range(300):
            yield b" " * 1024

    refused = await api.client.post(WEBHOOK, content=endless(), headers=headers)
    assert refused.status_code == 413
    assert refused.json() == {
        "code": "payload_too_large",
        "detail": f"the body is over {256 * 1024} bytes",
    }
    assert (await api.admin_get("/v1/opt-ins")).json()["total"] == 1


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        (LINKS, "text/plain"),
        (LINKS, "application/x-www-form-urlencoded"),
        (LINKS, "multipart/form-data; boundary=x"),
        (WEBHOOK, "text/plain;charset=UTF-8"),
        (WEBHOOK, "application/xml"),
    ],
)
async def test_non_json_bodies_are_415(
    api: Api, fakes: Fakes, path: str, content_type: str
) -> None:
    # text/plain and forms are what a cross-site page can send without a CORS preflight.
    response = await api.client.post(
        path,
        content=b'{"webhook_id": "x", "event": "message_sent"}',
        headers={"Content-Type": content_type, "Authorization": WEBHOOK_SECRET},
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert fakes.loop.state.received() == []


async def test_json_media_types_are_accepted(api: Api) -> None:
    for content_type in ("application/json", "application/json; charset=utf-8"):
        response = await api.client.post(
            WEBHOOK,
            content=b'{"webhook_id": "w-%d", "event": "message_sent"}' % len(content_type),
            headers={"Content-Type": content_type, "Authorization": WEBHOOK_SECRET},
        )
        assert response.status_code == 200, content_type


async def test_even_an_unexpected_500_carries_the_headers(
    make_api: ApiFactory, db_engine: Any
) -> None:
    from sqlalchemy import text

    api = await make_api(run_worker=False)
    # Schema drift: a table the admin API reads is gone (renamed back afterwards).
    async with db_engine.begin() as conn:
        await conn.execute(text("ALTER TABLE delivery_jobs RENAME TO delivery_jobs_away"))
    try:
        transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get(
                "/v1/deliveries", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
    finally:
        async with db_engine.begin() as conn:
            await conn.execute(text("ALTER TABLE delivery_jobs_away RENAME TO delivery_jobs"))
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"]
    assert response.headers["x-request-id"]
    assert "Traceback" not in response.text and "delivery_jobs" not in response.text


async def test_rate_limit_storage_down_fails_open(make_api: ApiFactory) -> None:
    from tests.fakes.servers import free_port

    api = await make_api(
        rate_limit_links="1/minute", rate_limit_storage_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    for _ in range(2):  # over the limit, but the limit cannot be counted: sign-ups go on
        assert (await api.client.post(LINKS, json={})).status_code == 200
