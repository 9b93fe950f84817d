"""The outbox under several workers: no job sent twice, no job stranded by a dead worker."""

from __future__ import annotations

import asyncio
from collections import Counter

from sqlalchemy.ext.asyncio import AsyncEngine

from app.delivery import outbox
from tests.conftest import ApiFactory, Fakes, opt_in_payload, wait_until


async def test_two_workers_never_send_the_same_job(make_api: ApiFactory, fakes: Fakes) -> None:
    intake = await make_api(run_worker=False)
    phones = [f"+1555555{i:04d}" for i in range(30)]
    for phone in phones:
        assert (await intake.webhook(opt_in_payload(contact=phone))).status_code == 200
    await make_api(run_worker=True, delivery_concurrency=3)
    await make_api(run_worker=True, delivery_concurrency=3)

    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) >= len(phones), timeout=30)
    await asyncio.sleep(0.5)  # let any (wrong) second send arrive before counting
    sent = Counter(
        r.raw_query.decode().split("phone=")[1] for r in fakes.callloop.state.received("/r/")
    )
    assert len(sent) == len(phones)
    assert set(sent.values()) == {1}


async def test_job_held_by_a_dead_worker_is_taken_again(
    make_api: ApiFactory, fakes: Fakes, db_engine: AsyncEngine
) -> None:
    intake = await make_api(run_worker=False, delivery_lease_seconds=2)
    await intake.webhook(opt_in_payload(contact="+15555550140"))
    # A worker claims the job and dies before doing anything with it.
    async with db_engine.begin() as conn:
        [claimed] = await outbox.claim(conn, "worker-that-died", 10, 2)
    [held] = await intake.deliveries("in_progress")
    assert held["id"] == claimed.id

    await make_api(run_worker=True, delivery_lease_seconds=2, delivery_poll_interval_seconds=0.2)
    # The new worker's first claims come before the lease runs out (a busy worker looks for
    # expired leases at most every lease or EXPIRED_LOOK_SECONDS): a later one takes it.
    [still_held] = await intake.deliveries("in_progress")
    assert still_held["id"] == claimed.id
    await wait_until(lambda: fakes.callloop.state.received("/r/"), timeout=20)
    [done] = await wait_until(lambda: intake.deliveries("done"))
    assert done["attempts"] == 2  # the dead worker's attempt counts


async def test_lost_lease_cannot_overwrite_the_new_owner(
    db_engine: AsyncEngine, make_api: ApiFactory
) -> None:
    intake = await make_api(run_worker=False)
    await intake.webhook(opt_in_payload(contact="+15555550141"))
    async with db_engine.begin() as conn:
        [first] = await outbox.claim(conn, "slow-worker", 10, 0.01)
    await asyncio.sleep(0.05)
    async with db_engine.begin() as conn:
        [second] = await outbox.claim(conn, "new-worker", 10, 30)
        assert second.id == first.id
        assert not await outbox.mark_done(conn, first, "slow-worker", 200)
        assert await outbox.mark_done(conn, second, "new-worker", 200)
    [done] = await intake.deliveries("done")
    assert done["id"] == first.id
