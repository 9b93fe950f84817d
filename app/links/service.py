"""Creating an opt-in link: call LoopMessage, record the link request with consent evidence."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from app.clients.loopmessage import LoopMessageError
from app.db import BulkInsert, table_of, utcnow
from app.deps import Services
from app.errors import ServiceError
from app.links.device import recommend
from app.links.schemas import OptInLinkRequest, OptInLinks
from app.models import LinkRequest
from app.observability import LINK_REQUESTS
from app.webhooks.parse import REF_PARAM, UTM_FIELDS

link_requests = table_of(LinkRequest)
LINKS_MADE = LINK_REQUESTS.labels("ok")
ATTRIBUTION_FIELDS = ("click_id", *UTM_FIELDS)
INSERT_LINK_REQUESTS = BulkInsert(
    link_requests,
    (
        "ref",
        "loop_link_id",
        "created_at",
        "params",
        "consent_text",
        "client_ip",
        "user_agent",
        "page_url",
        "recommended",
        "channel",
        *ATTRIBUTION_FIELDS,
    ),
)


_ERROR_STATUS = {
    "rejected": (502, "upstream_rejected"),
    "upstream_error": (502, "upstream_error"),
    "rate_limited": (503, "upstream_rate_limited"),
    "unreachable": (503, "upstream_unreachable"),
    "timeout": (504, "upstream_timeout"),
}


@dataclass(frozen=True)
class Visitor:
    ip: str | None
    user_agent: str | None
    page_url: str | None


def new_ref(now_ns: int | None = None) -> str:
    """`lr_`, the time in milliseconds (12 hex digits), then 128 random bits (22 characters):
    unguessable like a random token, and refs made one after another sort together, so each
    batch of link requests adds to the end of the `ref` index instead of to one page in the
    middle per row (measured on SQLite: half the pages written per commit, link throughput
    +5 % under `make bench`)."""
    millis = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    return f"lr_{millis:012x}{secrets.token_urlsafe(16)}"


def upstream_failure(exc: LoopMessageError) -> ServiceError:
    status, code = _ERROR_STATUS.get(exc.kind, (502, "upstream_error"))
    headers = None
    if exc.retry_after is not None:  # LoopMessage said when: pass it on, whatever the status
        headers = {"Retry-After": str(exc.retry_after)}
    elif status == 503:
        headers = {"Retry-After": "30"}
    return ServiceError(status, code, exc.detail, headers=headers)


async def create_link(
    services: Services, request: OptInLinkRequest, visitor: Visitor, channel: str = "api"
) -> OptInLinks:
    client = services.require_loopmessage()
    settings = services.settings
    body = request.body or settings.loop_optin_body
    ref = new_ref()
    attribution = request.attribution()
    fields: dict[str, Any] = {"body": body, **attribution, **request.params, REF_PARAM: ref}
    if settings.loop_sender_type:
        fields["sender_type"] = settings.loop_sender_type
    try:
        links = await client.generate_url(fields)
    except LoopMessageError as exc:
        LINK_REQUESTS.labels(exc.kind).inc()
        raise upstream_failure(exc) from None
    available = {"imessage": links.imessage, "sms": links.sms, "url": links.url}
    recommended = recommend(visitor.user_agent, available)
    values = {
        "ref": ref,
        "loop_link_id": links.id[:100],
        "created_at": utcnow(),
        "params": request.params,
        "consent_text": body,
        "client_ip": visitor.ip,
        "user_agent": (visitor.user_agent or "")[:1000] or None,
        "page_url": (request.page_url or visitor.page_url or "")[:2000] or None,
        "recommended": recommended,
        "channel": channel,
        **{name: attribution.get(name) for name in ATTRIBUTION_FIELDS},
    }
    # Stored (with the link requests made alongside) before the link is handed out.
    await services.writer.insert(INSERT_LINK_REQUESTS, values)
    LINKS_MADE.inc()
    return OptInLinks(
        id=links.id,
        ref=ref,
        imessage=links.imessage,
        sms=links.sms,
        url=links.url,
        whatsapp=links.whatsapp,
        recommended=recommended,
    )
