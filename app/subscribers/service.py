"""A subscriber's life: first opt-in, repeat opt-ins, opt-out, re-opt-in, erasure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, insert, not_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import insert_ignore_returning, table_of
from app.delivery.jobs import UNSUBSCRIBE_KINDS, enqueue_audience_delete, enqueue_opt_outs
from app.models import DeliveryJob, Erasure, LinkRequest, OptIn, Subscriber
from app.settings import Settings

subscribers = table_of(Subscriber)
opt_ins = table_of(OptIn)
link_requests = table_of(LinkRequest)
jobs = table_of(DeliveryJob)
erasures = table_of(Erasure)


@dataclass(frozen=True)
class SubscriberRow:
    id: int
    status: str
    created: bool


async def upsert_subscriber(conn: AsyncConnection, contact: str, now: datetime) -> SubscriberRow:
    """The subscriber for `contact`, created on first sight; on PostgreSQL the row is locked
    for the rest of the transaction so concurrent webhooks for one contact take turns."""
    created = await conn.execute(
        insert_ignore_returning(conn.dialect.name, subscribers, ("contact",)),
        {
            "contact": contact,
            "status": "active",
            "first_opt_in_at": now,
            "last_opt_in_at": now,
            "created_at": now,
            "updated_at": now,
        },
    )
    new_id = created.scalar()
    if new_id is not None:
        return SubscriberRow(new_id, "active", True)
    query = select(subscribers.c.id, subscribers.c.status).where(subscribers.c.contact == contact)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).one()
    return SubscriberRow(row.id, row.status, False)


async def record_opt_in(conn: AsyncConnection, subscriber: SubscriberRow, now: datetime) -> None:
    """A repeat or renewed opt-in: an opted-out contact who opts in again is active again."""
    if subscriber.created:
        return
    await conn.execute(
        update(subscribers)
        .where(subscribers.c.id == subscriber.id)
        .values(
            status="active",
            # never backwards: an opt-in recovered from history may be older than the last one
            last_opt_in_at=case(
                (subscribers.c.last_opt_in_at < now, now), else_=subscribers.c.last_opt_in_at
            ),
            updated_at=now,
            opted_out_at=None,
            opt_out_source=None,
        )
    )


async def opted_out_since(conn: AsyncConnection, subscriber_id: int, moment: datetime) -> bool:
    """The subscriber is opted out, by an opt-out that came at or after `moment`."""
    row = (
        await conn.execute(
            select(subscribers.c.status, subscribers.c.opted_out_at).where(
                subscribers.c.id == subscriber_id
            )
        )
    ).one()
    return row.status == "opted_out" and row.opted_out_at is not None and row.opted_out_at >= moment


async def opted_in_since(conn: AsyncConnection, contact: str, moment: datetime) -> bool:
    """The contact's latest opt-in came at or after `moment`."""
    row = (
        await conn.execute(
            select(subscribers.c.last_opt_in_at).where(subscribers.c.contact == contact)
        )
    ).first()
    return row is not None and row.last_opt_in_at >= moment


async def find_subscriber(conn: AsyncConnection, contact: str) -> tuple[int, str] | None:
    row = (
        await conn.execute(
            select(subscribers.c.id, subscribers.c.status).where(subscribers.c.contact == contact)
        )
    ).first()
    return (row.id, row.status) if row else None


async def opt_out(
    conn: AsyncConnection,
    settings: Settings,
    *,
    contact: str,
    source: str,
    now: datetime,
    audience_delete: bool = False,
) -> tuple[int, int] | None:
    """Mark the contact opted out and queue the Call Loop `/s/` call for each of its groups.

    Returns (subscriber id, opt-out jobs queued), or None when the contact is unknown.
    """
    found = await find_subscriber(conn, contact)
    if found is None:
        return None
    subscriber_id, status = found
    if status != "opted_out":
        await conn.execute(
            update(subscribers)
            .where(subscribers.c.id == subscriber_id)
            .values(status="opted_out", opted_out_at=now, opt_out_source=source, updated_at=now)
        )
    queued = await enqueue_opt_outs(
        conn, settings, subscriber_id=subscriber_id, contact=contact, now=now
    )
    if audience_delete and status != "opted_out":
        await enqueue_audience_delete(conn, subscriber_id=subscriber_id, contact=contact, now=now)
    return subscriber_id, queued


@dataclass(frozen=True)
class ErasureResult:
    subscriber_id: int
    opt_ins_erased: int
    opt_out_jobs: int


async def erase_subscriber(
    conn: AsyncConnection, settings: Settings, *, contact: str, now: datetime
) -> ErasureResult | None:
    """Right to erasure: opt the contact out everywhere, then remove its personal data.

    Kept: anonymous counts (opt-ins, attribution, delivery history without phone numbers) and
    an `erasures` row saying that an erase happened and when. The opt-out jobs queued here keep
    the phone number until Call Loop has been told, since `/s/` cannot work without it.
    """
    found = await find_subscriber(conn, contact)
    if found is None:
        return None
    subscriber_id, _status = found
    opted = await opt_out(
        conn,
        settings,
        contact=contact,
        source="erase",
        now=now,
        audience_delete=settings.loop_audience_delete_on_optout,
    )
    queued = opted[1] if opted else 0
    erased_opt_ins = await conn.execute(
        update(opt_ins)
        .where(opt_ins.c.subscriber_id == subscriber_id)
        .values(contact=None, raw_payload=None, params={}, erased_at=now)
        .returning(opt_ins.c.link_request_id)
    )
    erased_rows = erased_opt_ins.all()
    link_ids = [row.link_request_id for row in erased_rows if row.link_request_id]
    if link_ids:
        await conn.execute(
            update(link_requests)
            .where(link_requests.c.id.in_(link_ids))
            .values(client_ip=None, user_agent=None, page_url=None, params={})
        )
    # Jobs that still have to tell a third party keep the contact until they are done
    # (outbox.mark_done clears it then); every other job's copy goes now.
    still_needed = and_(
        jobs.c.kind.in_(UNSUBSCRIBE_KINDS), jobs.c.status.in_(("pending", "in_progress", "dead"))
    )
    await conn.execute(
        update(jobs)
        .where(jobs.c.subscriber_id == subscriber_id, not_(still_needed))
        .values(payload={})
    )
    await conn.execute(
        update(subscribers)
        .where(subscribers.c.id == subscriber_id)
        .values(contact=None, status="erased", updated_at=now)
    )
    await conn.execute(
        insert(erasures).values(
            subscriber_id=subscriber_id,
            erased_at=now,
            opt_ins_erased=len(erased_rows),
            requested_by="admin",
        )
    )
    return ErasureResult(subscriber_id, len(erased_rows), queued)
