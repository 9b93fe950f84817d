"""Input that only an attacker or a broken client sends: a clear 4xx or a clean store, never 5xx.

Found by fuzzing on PostgreSQL: NUL characters (text columns cannot hold them), ids beyond a
BIGINT, JSON nested past Python's recursion limit, NaN.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import OptIn
from tests.conftest import WEBHOOK_SECRET, Api, opt_in_payload

HEADERS = {"Authorization": WEBHOOK_SECRET, "Content-Type": "application/json"}


async def test_nul_characters_in_a_webhook_are_dropped_and_it_is_stored(api: Api) -> None:
    payload = opt_in_payload(contact="+1202555\u00001234", first="A\u0000da")
    payload["text"] = "yes\u0000"
    response = await api.webhook(payload)
    assert response.status_code == 200, response.text
    [opt_in] = (await api.admin_get("/v1/opt-ins")).json()["items"]
    assert opt_in["contact"].endswith("1234") and "\u0000" not in opt_in["contact"]


async def test_a_webhook_stored_as_parsed_keeps_numbers_beyond_64_bits(
    api: Api, db_engine: AsyncEngine
) -> None:
    """A body that needed cleaning (a NUL) is stored as parsed; JSON values the fast encoder
    refuses (an integer beyond 64 bits) are still written, exactly (app/jsontext.py)."""
    payload = opt_in_payload(contact="+12025550188")
    payload["text"] = "yes\u0000"
    payload["sequence"] = 2**70
    response = await api.webhook(payload)
    assert response.status_code == 200, response.text
    async with db_engine.connect() as conn:
        raw = (await conn.execute(select(OptIn.raw_payload))).scalar_one()
    assert raw["sequence"] == 2**70 and raw["text"] == "yes"


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000 + b"]" * 100_000, b'{"webhook_id": "w", "x": NaN}', b'{"a": Infinity}'],
)
async def test_unparseable_webhooks_are_400(api: Api, raw: bytes) -> None:
    response = await api.client.post("/v1/webhooks/loopmessage", content=raw, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"


async def test_webhook_nested_too_deep_is_422(api: Api) -> None:
    payload = opt_in_payload()
    nested: dict[str, object] = {}
    payload["extra"] = nested
    for _ in range(40):
        nested["n"] = {}
        nested = nested["n"]  # type: ignore[assignment]
    response = await api.webhook(payload)
    assert response.status_code == 422
    assert "nested" in response.json()["detail"]


def nested_opt_in(levels: int, text: str) -> dict[str, object]:
    """An opt-in whose `extra` field nests `levels` objects, the innermost holding a string;
    no other object in it (so its text has `levels` + 1 opening braces, plus the text's)."""
    payload = opt_in_payload()
    del payload["language"], payload["parameters"]
    payload["text"] = text
    innermost: dict[str, object] = {"leaf": "x"}
    for _ in range(levels - 1):
        innermost = {"n": innermost}
    payload["extra"] = innermost
    return payload


@pytest.mark.parametrize("braces_in_text", [0, 40], ids=["compact", "braces in the text"])
@pytest.mark.parametrize(("levels", "status"), [(31, 200), (32, 422)])
async def test_webhook_nesting_limit_is_the_same_however_the_body_reads(
    api: Api, levels: int, status: int, braces_in_text: int
) -> None:
    """A string 32 objects deep is accepted and 33 deep refused, whether the body has few
    enough braces to skip the cleaning pass (32 for the deepest accepted) or braces in its
    text as well."""
    payload = nested_opt_in(levels, "yes" + "{" * braces_in_text)
    response = await api.webhook(payload)
    assert response.status_code == status, response.text
    if status == 200:
        [opt_in] = (await api.admin_get("/v1/opt-ins")).json()["items"]
        assert opt_in["webhook_id"] == payload["webhook_id"]


@pytest.mark.parametrize(
    "body",
    [
        {"click_id": "a\u0000b"},
        {"utm_source": "\u0000"},
        {"params": {"first": "x\u0000"}},
        {"page_url": "https://x\u0000"},
        {"body": "Hi [opt-in-code]\u0000"},
    ],
)
async def test_nul_in_link_requests_is_422(api: Api, body: dict[str, object]) -> None:
    response = await api.client.post("/v1/opt-in-links", json=body)
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/opt-ins/99999999999999999999"),
        ("GET", "/v1/opt-ins/0"),
        ("POST", "/v1/deliveries/9223372036854775808/retry"),
        ("GET", "/v1/opt-ins?contact=%00"),
        ("POST", "/v1/subscribers/%2B1202%005550000/opt-out"),
    ],
)
async def test_admin_inputs_out_of_range_are_422(api: Api, method: str, path: str) -> None:
    response = await api.client.request(
        method,
        path,
        headers={"Authorization": f"Bearer {api.settings.admin_token.get_secret_value()}"},  # type: ignore[union-attr]
    )
    assert response.status_code == 422, response.text
