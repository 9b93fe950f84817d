"""Read queries shared by the admin API and the console (one copy of each query)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import table_of
from app.models import DeliveryJob, LinkRequest, OptIn
from app.redaction import mask_url

opt_ins = table_of(OptIn)
link_requests = table_of(LinkRequest)
jobs = table_of(DeliveryJob)


@dataclass(frozen=True)
class OptInFilters:
    click_id: str | None = None
    contact: str | None = None
    utm_campaign: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.click_id:
            query = query.where(opt_ins.c.click_id == self.click_id)
        if self.contact:
            query = query.where(
                opt_ins.c.contact == self.contact.strip().lower()
                if "@" in self.contact
                else opt_ins.c.contact == self.contact.strip()
            )
        if self.utm_campaign:
            query = query.where(opt_ins.c.utm_campaign == self.utm_campaign)
        if self.since:
            query = query.where(opt_ins.c.received_at >= self.since)
        if self.until:
            query = query.where(opt_ins.c.received_at < self.until)
        return query


OPT_IN_COLUMNS = (
    opt_ins.c.id,
    opt_ins.c.webhook_id,
    opt_ins.c.contact,
    opt_ins.c.event,
    opt_ins.c.message_id,
    opt_ins.c.organization_id,
    opt_ins.c.click_id,
    opt_ins.c.utm_source,
    opt_ins.c.utm_medium,
    opt_ins.c.utm_campaign,
    opt_ins.c.utm_term,
    opt_ins.c.utm_content,
    opt_ins.c.params,
    opt_ins.c.language_code,
    opt_ins.c.language_name,
    opt_ins.c.route_key,
    opt_ins.c.consent_evidence,
    opt_ins.c.link_request_id,
    opt_ins.c.subscriber_id,
    opt_ins.c.received_at,
    opt_ins.c.erased_at,
)

CONSENT_COLUMNS = (
    link_requests.c.created_at.label("consent_time"),
    link_requests.c.client_ip.label("consent_ip"),
    link_requests.c.user_agent.label("consent_user_agent"),
    link_requests.c.page_url.label("consent_page_url"),
    link_requests.c.consent_text.label("consent_text"),
    link_requests.c.ref.label("consent_ref"),
)


def opt_in_query(filters: OptInFilters) -> Select[Any]:
    query = select(*OPT_IN_COLUMNS, *CONSENT_COLUMNS).select_from(
        opt_ins.outerjoin(link_requests, opt_ins.c.link_request_id == link_requests.c.id)
    )
    return filters.apply(query)


def opt_in_record(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    consent = {
        "evidence": data["consent_evidence"],
        "time": data.pop("consent_time"),
        "ip": data.pop("consent_ip"),
        "user_agent": data.pop("consent_user_agent"),
        "page_url": data.pop("consent_page_url"),
        "text": data.pop("consent_text"),
        "link_ref": data.pop("consent_ref"),
        "message_id": data["message_id"],
        "webhook_received_at": data["received_at"],
    }
    data["consent"] = consent
    return data


async def opt_in_batch(
    conn: AsyncConnection, filters: OptInFilters, limit: int, before_id: int | None
) -> list[dict[str, Any]]:
    """Up to `limit` opt-ins with ids below `before_id`, newest first (keyset paging)."""
    query = opt_in_query(filters)
    if before_id is not None:
        query = query.where(opt_ins.c.id < before_id)
    rows = await conn.execute(query.order_by(opt_ins.c.id.desc()).limit(limit))
    return [opt_in_record(row) for row in rows]


async def list_opt_ins(
    conn: AsyncConnection, filters: OptInFilters, limit: int, before_id: int | None
) -> tuple[list[dict[str, Any]], int, int | None]:
    """Newest first; returns (items, total matching, cursor for the next page)."""
    items = await opt_in_batch(conn, filters, limit + 1, before_id)
    total = (
        await conn.execute(filters.apply(select(func.count()).select_from(opt_ins)))
    ).scalar_one()
    next_cursor = items[limit - 1]["id"] if len(items) > limit else None
    return items[:limit], total, next_cursor


async def get_opt_in(conn: AsyncConnection, opt_in_id: int) -> dict[str, Any] | None:
    row = (
        await conn.execute(opt_in_query(OptInFilters()).where(opt_ins.c.id == opt_in_id))
    ).first()
    if row is None:
        return None
    record = opt_in_record(row)
    record["deliveries"] = await deliveries_of(conn, record["subscriber_id"], opt_in_id)
    return record


DELIVERY_COLUMNS = (
    jobs.c.id,
    jobs.c.kind,
    jobs.c.status,
    jobs.c.route_key,
    jobs.c.attempts,
    jobs.c.next_attempt_at,
    jobs.c.last_error,
    jobs.c.last_status_code,
    jobs.c.subscriber_id,
    jobs.c.opt_in_id,
    jobs.c.created_at,
    jobs.c.updated_at,
    jobs.c.completed_at,
    jobs.c.target_url,
)


def delivery_record(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    url = data.pop("target_url")
    data["target"] = mask_url(url) if url else None
    return data


async def deliveries_of(
    conn: AsyncConnection, subscriber_id: int | None, opt_in_id: int
) -> list[dict[str, Any]]:
    query = select(*DELIVERY_COLUMNS)
    if subscriber_id is not None:
        query = query.where(
            (jobs.c.opt_in_id == opt_in_id)
            | ((jobs.c.subscriber_id == subscriber_id) & jobs.c.opt_in_id.is_(None))
        )
    else:
        query = query.where(jobs.c.opt_in_id == opt_in_id)
    rows = await conn.execute(query.order_by(jobs.c.id))
    return [delivery_record(row) for row in rows]


async def list_deliveries(
    conn: AsyncConnection, status: str | None, limit: int, before_id: int | None
) -> tuple[list[dict[str, Any]], int | None]:
    query = select(*DELIVERY_COLUMNS)
    if status:
        query = query.where(jobs.c.status == status)
    if before_id is not None:
        query = query.where(jobs.c.id < before_id)
    rows = (await conn.execute(query.order_by(jobs.c.id.desc()).limit(limit + 1))).all()
    items = [delivery_record(row) for row in rows[:limit]]
    return items, (items[-1]["id"] if len(rows) > limit else None)
