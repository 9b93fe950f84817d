"""A worker leases at most DELIVERY_CONCURRENCY jobs at a time (never the whole queue), and
leasing them costs the same whatever the backlog."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import table_of, utcnow
from app.delivery import outbox
from app.models import DeliveryJob
from tests.conftest import ApiFactory, Fakes, opt_in_payload, wait_until
from tests.fakes.servers import Scripted


async def test_worker_claims_no_more_than_its_concurrency(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    release = threading.Event()
    fakes.callloop.state.always(Scripted(200, text="OK", hold=release))
    intake = await make_api(run_worker=False)
    for n in range(5):
        response = await intake.webhook(opt_in_payload(contact=f"+1202555{n:04d}"))
        assert response.status_code == 200
    try:
        await make_api(run_worker=True, delivery_concurrency=2)
        # Both leased adds are held at Call Loop: the worker cannot claim again meanwhile.
        await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 2)
        assert len(await intake.deliveries("in_progress")) == 2
        assert len(await intake.deliveries("pending")) == 3
    finally:
        release.set()
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 5)


async def _queue_pending_jobs(engine: AsyncEngine, count: int) -> None:
    """`count` due adds, written straight into the outbox (the backlog a Call Loop outage
    leaves behind)."""
    now = utcnow()
    row = {
        "kind": "subscribe",
        "target_url": "https://callloop.example/r/?group",
        "payload": {},
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
    async with engine.begin() as conn:
        await conn.execute(insert(table_of(DeliveryJob)), [row] * count)


async def _work_to_claim_and_finish(engine: AsyncEngine) -> int:
    """The database's work for one worker leasing 8 due jobs and recording them done, counted
    the same on any machine: SQLite's virtual-machine steps; on PostgreSQL, the delivery jobs
    the transaction read (through any index or by scanning the table)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    async with engine.begin() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        if conn.dialect.name == "sqlite":
            await driver.set_progress_handler(count, 1)
        claimed = await outbox.claim(conn, "worker-1", 8, 30, expired_too=False)
        kept = await outbox.mark_done_many(conn, [(job, "worker-1", 200) for job in claimed])
        if conn.dialect.name == "sqlite":
            await driver.set_progress_handler(None, 1)
        else:
            read = await conn.execute(
                text(
                    "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)"
                    " FROM pg_stat_xact_user_tables WHERE relname = 'delivery_jobs'"
                )
            )
            steps[0] = int(read.scalar_one())
    assert len(claimed) == 8 and all(kept)
    return steps[0]


async def test_leasing_jobs_reads_those_jobs_not_the_whole_backlog(db_engine: AsyncEngine) -> None:
    """Without statistics, both databases judged the status index cheaper than 8 ids: every
    claim then read each due job of the backlog (milliseconds per claim with tens of thousands
    queued, most of a worker's time while it caught up)."""
    await _queue_pending_jobs(db_engine, 20)
    small_backlog = await _work_to_claim_and_finish(db_engine)
    await _queue_pending_jobs(db_engine, 5000)
    large_backlog = await _work_to_claim_and_finish(db_engine)
    assert large_backlog < 2 * small_backlog, (small_backlog, large_backlog)
