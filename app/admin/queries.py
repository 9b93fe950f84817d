"""Read queries shared by the admin API and the console (one copy of each query)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, Select, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import table_of
from app.models import DeliveryJob, LinkRequest, OptIn, Subscriber
from app.redaction import hide_url_secrets, mask_url

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
    if url and data["last_error"]:
        data["last_error"] = hide_url_secrets(data["last_error"], url)
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


# --- the funnel: link requests -> completed opt-ins -> Call Loop, per campaign ----------------

subscribers = table_of(Subscriber)

FUNNEL_KEYS = ("utm_campaign", "utm_source", "utm_medium")
OPTED_OUT_STATUSES = ("opted_out", "erased")


@dataclass
class FunnelRow:
    """One campaign (or campaign/source/medium) over a window.

    `conversion_rate` is completed opt-ins / link requests (None without link requests; it can
    exceed 1 when opt-ins arrive without a link request of ours, e.g. a shared QR code).
    `delivered`/`pending`/`dead` count the opt-ins by the state of their Call Loop group add;
    `opted_out` counts the opt-ins whose subscriber has since opted out (or was erased).
    """

    key: dict[str, str | None]
    link_requests: int = 0
    opt_ins: int = 0
    delivered: int = 0
    pending: int = 0
    dead: int = 0
    opted_out: int = 0

    @property
    def conversion_rate(self) -> float | None:
        if not self.link_requests:
            return None
        return round(self.opt_ins / self.link_requests, 4)

    def add(self, other: FunnelRow) -> None:
        for name in ("link_requests", "opt_ins", "delivered", "pending", "dead", "opted_out"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.key,
            "link_requests": self.link_requests,
            "opt_ins": self.opt_ins,
            "conversion_rate": self.conversion_rate,
            "delivered": self.delivered,
            "pending": self.pending,
            "dead": self.dead,
            "opted_out": self.opted_out,
        }


@dataclass
class Funnel:
    since: datetime
    until: datetime
    by: tuple[str, ...]
    rows: list[FunnelRow]
    totals: FunnelRow
    opt_ins_per_day: list[tuple[date, int]]


def _count_where(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _utc_day(conn: AsyncConnection, column: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


async def funnel(
    conn: AsyncConnection,
    since: datetime,
    until: datetime,
    by: tuple[str, ...] = FUNNEL_KEYS,
) -> Funnel:
    """Per campaign key (`by`, a subset of utm_campaign/utm_source/utm_medium) over
    [since, until): link requests, completed opt-ins and what became of them; with totals and
    completed opt-ins per UTC day. Used by `GET /v1/stats` and the console overview."""
    if not by or any(name not in FUNNEL_KEYS for name in by):
        raise ValueError(f"funnel keys must be among {FUNNEL_KEYS}")
    rows: dict[tuple[str | None, ...], FunnelRow] = {}

    def row_for(values: tuple[str | None, ...]) -> FunnelRow:
        if values not in rows:
            rows[values] = FunnelRow(key=dict(zip(by, values, strict=True)))
        return rows[values]

    link_keys = [link_requests.c[name] for name in by]
    requested = await conn.execute(
        select(*link_keys, func.count())
        .where(link_requests.c.created_at >= since, link_requests.c.created_at < until)
        .group_by(*link_keys)
    )
    for *values, count in requested:
        row_for(tuple(values)).link_requests = int(count)

    opt_in_keys = [opt_ins.c[name] for name in by]
    status = jobs.c.status
    completed = await conn.execute(
        select(
            *opt_in_keys,
            func.count(func.distinct(opt_ins.c.id)),
            _count_where(status == "done"),
            _count_where(status.in_(("pending", "in_progress"))),
            _count_where(status == "dead"),
            _count_where(subscribers.c.status.in_(OPTED_OUT_STATUSES)),
        )
        .select_from(
            opt_ins.outerjoin(
                jobs, (jobs.c.opt_in_id == opt_ins.c.id) & (jobs.c.kind == "subscribe")
            ).outerjoin(subscribers, subscribers.c.id == opt_ins.c.subscriber_id)
        )
        .where(opt_ins.c.received_at >= since, opt_ins.c.received_at < until)
        .group_by(*opt_in_keys)
    )
    for *values, count, delivered, pending, dead, opted_out in completed:
        row = row_for(tuple(values[: len(by)]))
        row.opt_ins = int(count)
        row.delivered, row.pending, row.dead = int(delivered), int(pending), int(dead)
        row.opted_out = int(opted_out)

    day = _utc_day(conn, opt_ins.c.received_at)
    per_day = await conn.execute(
        select(day, func.count())
        .where(opt_ins.c.received_at >= since, opt_ins.c.received_at < until)
        .group_by(day)
        .order_by(day)
    )
    counted = {_as_date(value): int(count) for value, count in per_day}
    days = []
    current = since.astimezone(UTC).date()
    last = (until - timedelta(microseconds=1)).astimezone(UTC).date()
    while current <= last:
        days.append((current, counted.get(current, 0)))
        current += timedelta(days=1)

    ordered = sorted(
        rows.values(),
        key=lambda row: (-row.opt_ins, -row.link_requests, [v or "" for v in row.key.values()]),
    )
    totals = FunnelRow(key=dict.fromkeys(by))
    for row in ordered:
        totals.add(row)
    return Funnel(since, until, by, ordered, totals, days)
