"""Recovering webhooks missed during an outage from LoopMessage's webhook history.

Every opt-in (and every STOP message) in the window goes through the same parse and `ingest`
as a live webhook, so a webhook already stored is a `duplicate` and running this again changes
nothing. Items are fed oldest first, so an opt-in followed by a STOP ends opted out, and they
are applied in batches of `BATCH_SIZE`, one transaction each: the delivery worker never sees an
add that a later STOP in the same batch revokes, and no batch holds the database for long.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.clients.loopmessage import LoopMessageClient
from app.settings import Settings
from app.webhooks.parse import InvalidWebhook, is_stop_message, parse_webhook
from app.webhooks.service import ingest

log = logging.getLogger("optin.reconcile")

_LIST_KEYS = ("data", "results", "items", "webhooks")
BATCH_SIZE = 200


@dataclass
class ReconcileReport:
    pages: int = 0
    items: int = 0
    outside_window: int = 0
    undated: int = 0  # no readable create_date: fed anyway (intake is idempotent)
    invalid: int = 0  # `json` unreadable, or not a webhook
    ignored: int = 0  # other events (deliveries, reactions…): not recovered
    outcomes: dict[str, int] = field(default_factory=dict)  # stored | duplicate | opted_out | …
    truncated: bool = False  # stopped at max_pages before the end of the window

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HistoryItem:
    created_at: datetime | None
    payload: Any


def page_items(page: Any) -> list[Any]:
    """The list of items in one history page (a bare list, or under a usual key)."""
    if isinstance(page, list):
        return page
    if isinstance(page, dict):
        for key in _LIST_KEYS:
            if isinstance(page.get(key), list):
                return list(page[key])
    return []


def parse_create_date(value: Any) -> datetime | None:
    """ISO 8601 (with or without zone, `Z` allowed) or a Unix time in seconds or milliseconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str) and value.strip():
        try:
            moment = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def read_item(item: Any) -> HistoryItem:
    """`json` may be the webhook as a JSON string or as an object; None when unreadable."""
    if not isinstance(item, dict):
        return HistoryItem(None, None)
    raw = item.get("json")
    payload: Any = raw
    if isinstance(raw, str | bytes):
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
    if isinstance(payload, dict) and "event" not in payload and item.get("event_type"):
        payload = {**payload, "event": item["event_type"]}
    return HistoryItem(parse_create_date(item.get("create_date")), payload)


async def fetch_window(
    client: LoopMessageClient,
    since: datetime,
    until: datetime,
    report: ReconcileReport,
    *,
    per_page: int = 100,
    max_pages: int = 1000,
) -> list[HistoryItem]:
    """Every history item created in [since, until), oldest first (undated ones last)."""
    kept: list[HistoryItem] = []
    fetched = 0
    for page_number in range(1, max_pages + 1):
        page = await client.webhook_history(page_number, per_page)
        items = page_items(page)
        report.pages += 1
        if not items:
            return _oldest_first(kept)
        fetched += len(items)
        dates: list[datetime] = []
        for raw in items:
            report.items += 1
            item = read_item(raw)
            if item.created_at is None:
                report.undated += 1
                kept.append(item)
                continue
            dates.append(item.created_at)
            if since <= item.created_at < until:
                kept.append(item)
            else:
                report.outside_window += 1
        total = page.get("total") if isinstance(page, dict) else None
        newest_first = dates == sorted(dates, reverse=True)
        if (
            len(items) < per_page
            or (isinstance(total, int) and fetched >= total)
            or (dates and newest_first and dates[-1] < since)
        ):
            return _oldest_first(kept)
    report.truncated = True
    return _oldest_first(kept)


def _oldest_first(items: list[HistoryItem]) -> list[HistoryItem]:
    far_future = datetime.max.replace(tzinfo=UTC)
    return sorted(items, key=lambda item: item.created_at or far_future)


async def reconcile(
    engine: AsyncEngine,
    settings: Settings,
    client: LoopMessageClient,
    since: datetime,
    until: datetime,
    *,
    per_page: int = 100,
    max_pages: int = 1000,
) -> ReconcileReport:
    """Feed the window's opt-ins and STOP messages through the webhook intake, once each."""
    report = ReconcileReport()
    items = await fetch_window(client, since, until, report, per_page=per_page, max_pages=max_pages)
    for start in range(0, len(items), BATCH_SIZE):
        async with engine.begin() as conn:
            for item in items[start : start + BATCH_SIZE]:
                await _apply(conn, settings, item, report)
    if report.truncated:
        log.warning(
            "stopped at the page limit before the end of the window",
            extra={"max_pages": max_pages},
        )
    return report


async def _apply(
    conn: AsyncConnection, settings: Settings, item: HistoryItem, report: ReconcileReport
) -> None:
    try:
        parsed = parse_webhook(item.payload)
    except InvalidWebhook:
        report.invalid += 1
        return
    if not parsed.is_opt_in and not is_stop_message(parsed, settings.optout_keywords):
        report.ignored += 1
        return
    outcome = await ingest(conn, settings, parsed, occurred_at=item.created_at)
    report.outcomes[outcome.status] = report.outcomes.get(outcome.status, 0) + 1
    if outcome.status != "duplicate":
        log.info(
            "recovered a missed webhook",
            extra={"webhook_id": parsed.webhook_id, "outcome": outcome.status},
        )
