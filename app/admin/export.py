"""The opt-ins as CSV, one row per opt-in with its consent evidence; shared by the admin API
(`GET /v1/opt-ins.csv`) and the CLI (`optin-backend export`)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.admin.queries import OptInFilters, opt_in_batch

BATCH_SIZE = 500

Reader = Callable[[dict[str, Any]], Any]


def _field(name: str) -> Reader:
    return lambda record: record[name]


def _consent(name: str) -> Reader:
    return lambda record: record["consent"][name]


OPT_IN_FIELDS = (
    "id",
    "received_at",
    "webhook_id",
    "event",
    "contact",
    "click_id",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "params",
    "language_code",
    "language_name",
    "route_key",
    "organization_id",
    "subscriber_id",
    "erased_at",
)
CONSENT_FIELDS = {
    "consent_evidence": "evidence",
    "consent_time": "time",
    "consent_ip": "ip",
    "consent_user_agent": "user_agent",
    "consent_page_url": "page_url",
    "consent_text": "text",
    "consent_link_ref": "link_ref",
    "message_id": "message_id",
    "webhook_received_at": "webhook_received_at",
}
# (column header, how to read it from an opt-in record as admin.queries builds it)
COLUMNS: tuple[tuple[str, Reader], ...] = (
    *((name, _field(name)) for name in OPT_IN_FIELDS),
    *((header, _consent(key)) for header, key in CONSENT_FIELDS.items()),
)
HEADER = tuple(name for name, _ in COLUMNS)

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?[\d\s().-]+$")


def csv_cell(value: Any) -> str:
    """Text for one cell. Spreadsheets run a cell starting with = + - @ as a formula, and UTM
    fields, user agents and page URLs come from visitors, so such a cell gets a leading `'`;
    a plain number such as `+15555550123` cannot run anything and is kept as it is."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    else:
        text = str(value)
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(text):
        return "'" + text
    return text


def _encode(rows: list[tuple[str, ...]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


async def opt_ins_csv(
    engine: AsyncEngine, filters: OptInFilters, batch_size: int = BATCH_SIZE
) -> AsyncIterator[str]:
    """The header, then the matching opt-ins newest first, a batch at a time. Each batch uses
    its own short connection, so a slow reader never holds a database connection."""
    yield _encode([HEADER])
    before_id: int | None = None
    while True:
        async with engine.connect() as conn:
            records = await opt_in_batch(conn, filters, batch_size, before_id)
        if not records:
            return
        yield _encode([tuple(csv_cell(read(record)) for _, read in COLUMNS) for record in records])
        if len(records) < batch_size:
            return
        before_id = records[-1]["id"]
