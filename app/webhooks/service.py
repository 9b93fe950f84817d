"""Storing a webhook exactly once, with its subscriber and outbox jobs, in one transaction."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import (
    BulkInsert,
    JsonText,
    insert_ignore,
    insert_ignore_returning,
    insert_together,
    table_of,
    utcnow,
)
from app.delivery.jobs import (
    BULK_INSERT_JOBS,
    BULK_INSERT_MEMBERSHIPS,
    enqueue_subscribe,
    plan_subscribe,
)
from app.delivery.routing import resolve_route
from app.models import LinkRequest, OptIn, WebhookEvent
from app.settings import CallLoopRoute, Settings
from app.subscribers.service import (
    opt_out,
    opted_in_since,
    opted_out_since,
    record_opt_in,
    subscribers,
    upsert_subscriber,
)
from app.webhooks.parse import UTM_FIELDS, ParsedWebhook, is_stop_message

opt_ins = table_of(OptIn)
webhook_events = table_of(WebhookEvent)
link_requests = table_of(LinkRequest)

# The bulk intake's statements (first opt-ins of new contacts, many per group commit).
NEW_SUBSCRIBER_COLUMNS = (
    "contact",
    "status",
    "first_opt_in_at",
    "last_opt_in_at",
    "created_at",
    "updated_at",
)
BULK_INSERT_SUBSCRIBERS = BulkInsert(
    subscribers,
    NEW_SUBSCRIBER_COLUMNS,
    ignore_conflict_on=("contact",),
    returning=("id", "contact"),
)
BULK_INSERT_OPT_INS = BulkInsert(
    opt_ins,
    (
        "webhook_id",
        "subscriber_id",
        "link_request_id",
        "consent_evidence",
        "contact",
        "event",
        "message_id",
        "organization_id",
        "click_id",
        "params",
        "language_code",
        "language_name",
        "route_key",
        "raw_payload",
        "received_at",
        *UTM_FIELDS,
    ),
    ignore_conflict_on=("webhook_id",),
    returning=("id", "webhook_id"),
)


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


def route_of(settings: Settings, parsed: ParsedWebhook) -> CallLoopRoute | None:
    return resolve_route(settings, parsed.params.get("list"), parsed.utm.get("utm_campaign"))


def opt_in_values(
    parsed: ParsedWebhook,
    subscriber_id: int,
    link_request_id: int | None,
    route: CallLoopRoute | None,
    now: datetime,
) -> dict[str, Any]:
    return {
        "webhook_id": parsed.webhook_id,
        "subscriber_id": subscriber_id,
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
        "raw_payload": JsonText(parsed.raw_text) if parsed.raw_text is not None else parsed.raw,
        "received_at": now,
        **{name: parsed.utm.get(name) for name in UTM_FIELDS},
    }


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
    route = route_of(settings, parsed)
    inserted = await conn.execute(
        insert_ignore_returning(conn.dialect.name, opt_ins, ("webhook_id",)),
        opt_in_values(parsed, subscriber.id, link_request_id, route, now),
    )
    opt_in_id = inserted.scalar()
    if opt_in_id is None:
        return IntakeOutcome("duplicate")
    if occurred_at is not None and await opted_out_since(conn, subscriber.id, occurred_at):
        # A recovered opt-in older than the contact's opt-out: kept as history, not acted on.
        return IntakeOutcome("superseded", opt_in_id)
    await record_opt_in(conn, subscriber, opted_in_at)
    planned = plan_subscribe(
        settings,
        subscriber_id=subscriber.id,
        opt_in_id=opt_in_id,
        contact=parsed.contact,
        params=parsed.params,
        route=route,
        now=now,
    )
    queued = await enqueue_subscribe(conn, planned, now)
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


async def ingest_many(
    conn: AsyncConnection, settings: Settings, batch: list[ParsedWebhook]
) -> list[IntakeOutcome]:
    """`ingest` for a batch of live webhooks (one group commit), in a few multi-row statements.

    The common case, the first opt-in of a contact seen once in the batch, is stored in bulk:
    one insert each for the subscribers, opt-ins, memberships and jobs. Everything else (other
    events, a contact already known or seen twice in the batch) goes through `ingest` one by
    one, after the bulk part; they concern other contacts, so the order between them is free.
    """
    now = utcnow()
    outcomes: list[IntakeOutcome | None] = [None] * len(batch)
    seen = Counter(parsed.contact for parsed in batch)
    bulk = [
        index
        for index, parsed in enumerate(batch)
        if parsed.is_opt_in and parsed.contact is not None and seen[parsed.contact] == 1
    ]
    if bulk:
        stored = await _store_new_contacts(conn, settings, [batch[i] for i in bulk], now)
        for index, outcome in zip(bulk, stored, strict=True):
            outcomes[index] = outcome
    for index, parsed in enumerate(batch):
        if outcomes[index] is None:
            outcomes[index] = await ingest(conn, settings, parsed)
    return [outcome for outcome in outcomes if outcome is not None]


async def _store_new_contacts(
    conn: AsyncConnection, settings: Settings, batch: list[ParsedWebhook], now: datetime
) -> list[IntakeOutcome | None]:
    """Opt-ins of distinct contacts: those new to the service are stored here, in bulk; None
    for the others (already subscribers: left to `ingest`)."""
    created = await BULK_INSERT_SUBSCRIBERS.execute(
        conn,
        [
            {
                "contact": parsed.contact,
                "status": "active",
                "first_opt_in_at": now,
                "last_opt_in_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for parsed in batch
        ],
    )
    subscriber_ids = {contact: subscriber_id for subscriber_id, contact in created}
    new = [parsed for parsed in batch if parsed.contact in subscriber_ids]
    if not new:
        return [None] * len(batch)
    refs = {parsed.ref for parsed in new if parsed.ref}
    link_request_ids: dict[str, int] = {}
    if refs:
        found = await conn.execute(
            select(link_requests.c.ref, link_requests.c.id).where(link_requests.c.ref.in_(refs))
        )
        link_request_ids = {row.ref: row.id for row in found}
    routes = {parsed.webhook_id: route_of(settings, parsed) for parsed in new}
    inserted = await BULK_INSERT_OPT_INS.execute(
        conn,
        [
            opt_in_values(
                parsed,
                subscriber_ids[parsed.contact],
                link_request_ids.get(parsed.ref) if parsed.ref else None,
                routes[parsed.webhook_id],
                now,
            )
            for parsed in new
            if parsed.contact is not None
        ],
    )
    opt_in_ids = {webhook_id: opt_in_id for opt_in_id, webhook_id in inserted}
    plans = {
        parsed.webhook_id: plan_subscribe(
            settings,
            subscriber_id=subscriber_ids[parsed.contact],
            opt_in_id=opt_in_ids[parsed.webhook_id],
            contact=parsed.contact,
            params=parsed.params,
            route=routes[parsed.webhook_id],
            now=now,
        )
        for parsed in new
        if parsed.contact is not None and parsed.webhook_id in opt_in_ids
    }
    await insert_together(
        conn,
        (
            BULK_INSERT_MEMBERSHIPS,
            [plan.membership for plan in plans.values() if plan.membership is not None],
        ),
        (BULK_INSERT_JOBS, [plan.job for plan in plans.values()]),
    )
    outcomes: list[IntakeOutcome | None] = []
    for parsed in batch:
        if parsed.contact not in subscriber_ids:
            outcomes.append(None)
        elif parsed.webhook_id not in opt_in_ids:
            # A webhook stored before for a contact since erased: only the new subscriber row
            # is kept, as `ingest` would.
            outcomes.append(IntakeOutcome("duplicate"))
        else:
            queued = plans[parsed.webhook_id].membership is not None
            outcomes.append(IntakeOutcome("stored", opt_in_ids[parsed.webhook_id], queued))
    return outcomes


async def store_live_webhooks(
    conn: AsyncConnection, units: list[tuple[Settings, ParsedWebhook]]
) -> list[IntakeOutcome]:
    """The webhook route's batch for the group commit (`GroupCommitter.run_batched`): every
    unit of one app's writer carries that app's settings. (Listening workers are told by the
    database: see JOBS_CHANNEL.)"""
    settings = units[0][0]
    return await ingest_many(conn, settings, [parsed for _, parsed in units])
