"""POST /v1/webhooks/loopmessage: verify, bound, parse, store once, then answer 200."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, OperationalError

from app.deps import Services, ServicesDep
from app.errors import ServiceError, not_configured
from app.observability import WEBHOOKS
from app.webhooks.parse import InvalidWebhook, parse_webhook
from app.webhooks.service import IntakeOutcome, store_live_webhooks

router = APIRouter(tags=["webhooks"])
log = logging.getLogger("optin.webhooks")

MAX_WEBHOOK_BYTES = 256 * 1024


def verify_authorization(header: str | None, secrets: list[str]) -> bool:
    """Constant-time comparison against the current secret and, during rotation, the old one."""
    presented = (header or "").encode()
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(presented, secret.encode())
    return matched and bool(presented)


# The body as LoopMessage documents it (read by hand, not by FastAPI: it is verified first).
WEBHOOK_BODY_SCHEMA = {
    "type": "object",
    "required": ["webhook_id"],
    "properties": {
        "webhook_id": {"type": "string", "maxLength": 200},
        "event": {"type": "string", "maxLength": 64},
        "type": {"type": "string", "maxLength": 64},
        "contact": {"type": "string", "maxLength": 320},
        "text": {"type": "string"},
        "message_id": {"type": "string", "maxLength": 200},
        "organization_id": {"type": "string", "maxLength": 200},
        "parameters": {"type": "object", "additionalProperties": {"type": "string"}},
        "language": {"type": "object"},
    },
    "additionalProperties": True,
}


class WebhookAck(BaseModel):
    status: str = Field(description="stored | duplicate | recorded | opted_out")
    webhook_id: str


def _no_constants(name: str) -> None:
    """NaN and Infinity are not JSON (and PostgreSQL's json type refuses them)."""
    raise ValueError(f"{name} is not valid JSON")


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, "payload_too_large", f"the body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, "payload_too_large", f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/v1/webhooks/loopmessage",
    response_model=WebhookAck,
    responses={
        400: {"description": "Malformed JSON"},
        401: {"description": "Missing or wrong Authorization"},
        413: {"description": "Body over 256 KB"},
        415: {"description": "Body not sent as application/json"},
        422: {"description": "JSON that is not a LoopMessage webhook"},
        503: {"description": "LOOP_WEBHOOK_SECRET unset, or the database is unavailable"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": WEBHOOK_BODY_SCHEMA}},
        }
    },
)
async def loopmessage_webhook(request: Request, services: ServicesDep) -> JSONResponse:
    """Receive a LoopMessage webhook. The 200 is sent only after the row is committed."""
    answer = await receive_webhook(
        services,
        request.headers.get("authorization"),
        lambda: read_limited(request, MAX_WEBHOOK_BYTES),
    )
    return JSONResponse(answer)


async def receive_webhook(
    services: Services, authorization: str | None, read_body: Callable[[], Awaitable[bytes]]
) -> dict[str, str]:
    """Verify, read, parse and store one webhook; the answer once it is committed.

    Raises ServiceError for every refusal. `read_body` is called only once the
    Authorization header is verified.
    """
    secrets = services.settings.webhook_secrets
    if not secrets:
        raise not_configured("LOOP_WEBHOOK_SECRET", "Webhook intake")
    if not verify_authorization(authorization, secrets):
        WEBHOOKS.labels("unknown", "unauthorized").inc()
        raise ServiceError(401, "unauthorized", "wrong or missing Authorization header")
    raw = await read_body()
    try:
        payload = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        WEBHOOKS.labels("unknown", "malformed").inc()
        raise ServiceError(400, "malformed_json", "the body is not valid JSON") from None
    try:
        parsed = parse_webhook(payload, raw)
    except InvalidWebhook as exc:
        WEBHOOKS.labels("unknown", "invalid").inc()
        raise ServiceError(422, "invalid_webhook", str(exc)) from None

    try:
        # Answered only after the commit that holds this webhook (shared with its neighbours).
        outcome: IntakeOutcome = await services.writer.run_batched(
            store_live_webhooks, (services.settings, parsed)
        )
    except (OperationalError, DBAPIError, OSError) as exc:
        WEBHOOKS.labels(parsed.event, "unavailable").inc()
        log.warning("webhook not stored: database unavailable", extra={"error": type(exc).__name__})
        raise ServiceError(
            503,
            "database_unavailable",
            "could not store the webhook; retry later",
            headers={"Retry-After": "30"},
        ) from None
    WEBHOOKS.labels(parsed.event, outcome.status).inc()
    if outcome.jobs_queued:
        services.wake_worker()
    return {"status": outcome.status, "webhook_id": parsed.webhook_id}
