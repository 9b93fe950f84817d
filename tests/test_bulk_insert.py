"""The bulk intake's driver-level inserts store rows exactly as SQLAlchemy's own inserts do."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import BulkInsert, insert_together, table_of, utcnow
from app.delivery.jobs import BULK_INSERT_JOBS, BULK_INSERT_MEMBERSHIPS
from app.models import Subscriber
from tests.conftest import ApiFactory, opt_in_payload

SQLITE_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")


async def raw_rows(engine: AsyncEngine, sql: str) -> list[dict[str, Any]]:
    """Rows as the driver returns them: no SQLAlchemy type conversion on the way out."""
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.exec_driver_sql(sql)]


def assert_stored_alike(bulk: dict[str, Any], alone: dict[str, Any], differ: set[str]) -> None:
    assert bulk.keys() == alone.keys()
    for column, value in bulk.items():
        other = alone[column]
        assert type(value) is type(other), column
        if isinstance(value, str) and SQLITE_TIMESTAMP.fullmatch(other):
            assert SQLITE_TIMESTAMP.fullmatch(value), (column, value)
        elif isinstance(value, datetime):
            assert value.tzinfo is not None and other.tzinfo is not None, column
        elif column not in differ:
            assert value == other, column


async def test_an_opt_in_stored_in_bulk_is_stored_as_one_stored_alone(
    make_api: ApiFactory, db_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A whole second: the value a careless conversion would store differently (no fraction).
    whole_second = utcnow().replace(microsecond=0)
    monkeypatch.setattr("app.webhooks.service.utcnow", lambda: whole_second)
    api = await make_api(run_worker=False)
    # One batch: a new contact (bulk path) and a contact seen twice (one by one, via ingest).
    fresh = opt_in_payload(contact="+15555550701", utm_source="ad", click_id="clk-1", first="Ann")
    twice = opt_in_payload(contact="+15555550702", utm_source="ad", click_id="clk-1", first="Ann")
    again = opt_in_payload(contact="+15555550702")
    responses = await asyncio.gather(*(api.webhook(p) for p in (fresh, twice, again)))
    assert [r.json()["status"] for r in responses] == ["stored"] * 3

    opt_ins = {
        row["webhook_id"]: row
        for row in await raw_rows(db_engine, "SELECT * FROM opt_ins ORDER BY id")
    }
    bulk, alone = opt_ins[fresh["webhook_id"]], opt_ins[twice["webhook_id"]]
    differ = {"id", "webhook_id", "subscriber_id", "contact", "message_id", "raw_payload"}
    assert_stored_alike(bulk, alone, differ)
    if isinstance(bulk["params"], str):  # JSON kept as text (SQLite): the same serialisation
        assert bulk["params"] == alone["params"]
        assert json.loads(bulk["raw_payload"]) == fresh

    subscribers = await raw_rows(db_engine, "SELECT * FROM subscribers ORDER BY id")
    assert [row["contact"] for row in subscribers] == ["+15555550701", "+15555550702"]
    assert_stored_alike(subscribers[0], subscribers[1], {"id", "contact"})

    jobs = await raw_rows(db_engine, "SELECT * FROM delivery_jobs ORDER BY id")
    assert [job["kind"] for job in jobs] == ["subscribe", "subscribe"]  # one add per contact
    by_subscriber = {job["subscriber_id"]: job for job in jobs}
    assert_stored_alike(
        by_subscriber[subscribers[0]["id"]],
        by_subscriber[subscribers[1]["id"]],
        {"id", "subscriber_id", "opt_in_id", "payload"},
    )
    payload = by_subscriber[subscribers[0]["id"]]["payload"]
    payload = json.loads(payload) if isinstance(payload, str) else payload
    assert payload == {"phone": "+15555550701", "first": "Ann"}

    memberships = await raw_rows(db_engine, "SELECT * FROM group_memberships ORDER BY id")
    assert len(memberships) == 2
    assert_stored_alike(memberships[0], memberships[1], {"id", "subscriber_id"})


async def test_rows_over_the_bound_value_limit_are_split_across_statements(
    db_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    columns = ("contact", "status", "first_opt_in_at", "last_opt_in_at")
    statement = BulkInsert(
        table_of(Subscriber), columns, ignore_conflict_on=("contact",), returning=("contact",)
    )
    monkeypatch.setattr(BulkInsert, "MAX_VALUES", 2 * len(statement.names))  # 2 rows a statement
    now = utcnow()
    rows = [
        {
            "contact": f"+1555555080{n}",
            "status": "active",
            "first_opt_in_at": now,
            "last_opt_in_at": now,
        }
        for n in range(5)
    ]
    async with db_engine.begin() as conn:
        returned = await statement.execute(conn, rows)
        again = await statement.execute(conn, rows[:1])  # a conflict: ignored, nothing returned
    assert sorted(row.contact for row in returned) == [row["contact"] for row in rows]
    assert again == []
    stored = await raw_rows(db_engine, "SELECT contact, created_at FROM subscribers")
    assert len(stored) == 5
    assert all(row["created_at"] is not None for row in stored)  # the model's default applied


async def test_a_row_with_a_key_the_statement_would_drop_is_refused(
    db_engine: AsyncEngine,
) -> None:
    statement = BulkInsert(table_of(Subscriber), ("contact", "status"))
    row = {"contact": "+15555550901", "status": "active", "unknown": 1}
    async with db_engine.begin() as conn:
        with pytest.raises(ValueError, match="subscribers"):
            await statement.execute(conn, [row])


def _memberships(subscriber_id: int, names: range) -> list[dict[str, Any]]:
    return [
        {
            "subscriber_id": subscriber_id,
            "group_hash": f"hash-{n}",
            "group_url": f"https://callloop.test/r/?group-{n}",
            "route_key": "default",
            "status": "active",
            "joined_at": utcnow(),
        }
        for n in names
    ]


def _jobs(subscriber_id: int, names: range, kind: str | None = "subscribe") -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "kind": kind,
            "subscriber_id": subscriber_id,
            "opt_in_id": None,
            "created_at": now,
            "updated_at": now,
            "next_attempt_at": now,
            "attempts": 0,
            "route_key": None,
            "target_url": f"https://callloop.test/r/?group-{n}",
            "follow_up_url": None,
            "lease_owner": None,
            "lease_expires_at": None,
            "payload": {"phone": "+15555550951"},
            "status": "pending",
            "completed_at": None,
            "last_error": None,
        }
        for n in names
    ]


async def _subscriber(engine: AsyncEngine, contact: str) -> int:
    async with engine.begin() as conn:
        [row] = await NEW_SUBSCRIBER.execute(conn, [{"contact": contact, "status": "active"}])
    return int(row.id)


NEW_SUBSCRIBER = BulkInsert(table_of(Subscriber), ("contact", "status"), returning=("id",))


async def test_inserts_made_together_are_one_statement_on_postgresql(
    db_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscriber_id = await _subscriber(db_engine, "+15555550951")
    postgres = db_engine.dialect.name == "postgresql"

    async def together(memberships: range, jobs: list[dict[str, Any]]) -> None:
        parts = (
            (BULK_INSERT_MEMBERSHIPS, _memberships(subscriber_id, memberships)),
            (BULK_INSERT_JOBS, jobs),
        )
        if not postgres:
            async with db_engine.begin() as conn:
                await insert_together(conn, *parts)
            return
        # No transaction: what one statement stores, it stores whole or not at all.
        async with db_engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await insert_together(autocommit, *parts)

    async def hashes() -> list[str]:
        rows = await raw_rows(db_engine, "SELECT group_hash FROM group_memberships ORDER BY id")
        return [row["group_hash"] for row in rows]

    await together(range(2), _jobs(subscriber_id, range(2)))
    assert await hashes() == ["hash-0", "hash-1"]
    assert len(await raw_rows(db_engine, "SELECT id FROM delivery_jobs")) == 2

    with pytest.raises(DBAPIError):  # a job without a kind: refused by the database
        await together(range(2, 3), _jobs(subscriber_id, range(1), kind=None))
    # PostgreSQL, outside a transaction: one statement, refused whole (SQLite: rolled back).
    assert await hashes() == ["hash-0", "hash-1"]

    # Past the bound-value limit: one statement each, so there the memberships' stands.
    monkeypatch.setattr(BulkInsert, "MAX_VALUES", len(BULK_INSERT_JOBS.names))
    with pytest.raises(DBAPIError):
        await together(range(3, 4), _jobs(subscriber_id, range(1), kind=None))
    assert ("hash-3" in await hashes()) == postgres
