"""Storing a webhook exactly once, with its subscriber and outbox jobs, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import insert_ignore, insert_ignore_returning, table_of, utcnow
from app.delivery.jobs import enqueue_subscribe
from app.delivery.routing import resolve_route
from app.models import LinkRequest, OptIn, WebhookEvent
from app.settings import Settings
from app.subscribers.service import (
    opt_out,
    opted_in_since,
    opted_out_since,
    record_opt_in,
    upsert_subscriber,
)
from app.webhooks.parse import ParsedWebhook, is_stop_message

opt_ins = table_of(OptIn)
webhook_events = table_of(WebhookEvent)
link_requests = table_of(LinkRequest)


@dataclass(frozen=True)
class IntakeOutcome:
    status: str  # stored | duplicate | recorded | opted_out
    opt_in_id: int | None = None
    jobs_queued: bool = False


async def _link_request_id(conn: AsyncConnection, ref: str | None) -> int | None:
    if not ref:
        return None
    row = await conn.execute(select(link_requests.c.id).where(link_requests.c.ref == ref))
    return row.scalar()


async def store_opt_in(
    conn: AsyncConnection,
    settings: Settings,
    parsed: ParsedWebhook,
    now: datetime,
    occurred_at: datetime | None = None,
) -> IntakeOutcome:
    assert parsed.contact is not None
    opted_in_at = occurred_at or now
    subscriber = await upsert_subscriber(conn, parsed.contact, opted_in_at)
    link_request_id = await _link_request_id(conn, parsed.ref)
    route = resolve_route(settings, parsed.params.get("list"), parsed.utm.get("utm_campaign"))
    inserted = await conn.execute(
        insert_ignore_returning(conn.dialect.name, opt_ins, ("webhook_id",)),
        {
            "webhook_id": parsed.webhook_id,
            "subscriber_id": subscriber.id,
            "link_request_id": link_request_id,
            "consent_evidence": "link_request" if link_request_id else "webhook_only",
            "contact": parsed.contact,
            "event": parsed.event,
            "message_id": parsed.message_id,
            "organization_id": parsed.organization_id,
            "click_id": parsed.click_id,
            "params": parsed.params,
            "language_code": parsed.language_code,
            "language_name": parsed.language_name,
            "route_key": route.key if route else None,
            "raw_payload": parsed.raw,
            "received_at": now,
            **parsed.utm,
        },
    )
    opt_in_id = inserted.scalar()
    if opt_in_id is None:
        return IntakeOutcome("duplicate")
    if occurred_at is not None and await opted_out_since(conn, subscriber.id, occurred_at):
        # A recovered opt-in older than the contact's opt-out: kept as history, not acted on.
        return IntakeOutcome("superseded", opt_in_id)
    await record_opt_in(conn, subscriber, opted_in_at)
    queued = await enqueue_subscribe(
        conn,
        settings,
        subscriber_id=subscriber.id,
        opt_in_id=opt_in_id,
        contact=parsed.contact,
        params=parsed.params,
        route=route,
        now=now,
    )
    return IntakeOutcome("stored", opt_in_id, queued == "queued")


async def store_other_event(
    conn: AsyncConnection,
    settings: Settings,
    parsed: ParsedWebhook,
    now: datetime,
    occurred_at: datetime | None = None,
) -> IntakeOutcome:
    stop = is_stop_message(parsed, settings.optout_keywords)
    if stop and occurred_at is not None and parsed.contact:
        # A recovered STOP older than the contact's latest opt-in does not undo that opt-in.
        stop = not await opted_in_since(conn, parsed.contact, occurred_at)
    inserted = await conn.execute(
        insert_ignore(conn.dialect.name, webhook_events, "webhook_id")
        .values(
            webhook_id=parsed.webhook_id,
            event=parsed.event,
            type=parsed.type,
            action="opted_out" if stop else "recorded",
            received_at=now,
        )
        .returning(webhook_events.c.id)
    )
    if inserted.scalar() is None:
        return IntakeOutcome("duplicate")
    if stop and parsed.contact:
        result = await opt_out(
            conn, settings, contact=parsed.contact, source="stop_keyword", now=occurred_at or now
        )
        if result is not None:
            return IntakeOutcome("opted_out", jobs_queued=result[1] > 0)
    return IntakeOutcome("recorded")


async def ingest(
    conn: AsyncConnection,
    settings: Settings,
    parsed: ParsedWebhook,
    occurred_at: datetime | None = None,
) -> IntakeOutcome:
    """Everything one webhook changes, inside the caller's transaction.

    `occurred_at` is given for webhooks recovered from LoopMessage's history (reconcile): an
    old opt-in then never overrides a newer opt-out, nor an old STOP a newer opt-in.
    """
    now = utcnow()
    if parsed.is_opt_in:
        return await store_opt_in(conn, settings, parsed, now, occurred_at)
    return await store_other_event(conn, settings, parsed, now, occurred_at)
