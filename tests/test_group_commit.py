"""Group commit of the hot write paths: concurrent webhooks share a transaction, each one is
answered only after the commit that holds it, and one failing unit does not fail its batch."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
import pytest
from sqlalchemy import Engine, event, func, insert, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import utcnow
from app.groupcommit import GroupCommitter
from app.links.service import ATTRIBUTION_FIELDS, INSERT_LINK_REQUESTS
from app.models import DeliveryJob, Erasure, LinkRequest, OptIn, Subscriber
from tests.conftest import Api, ApiFactory, Fakes, opt_in_payload, wait_until


async def count(engine: AsyncEngine, model: object, *where: object) -> int:
    query = select(func.count()).select_from(model)  # type: ignore[arg-type]
    if where:
        query = query.where(*where)  # type: ignore[arg-type]
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def test_concurrent_webhooks_are_all_stored_once(
    api: Api, db_engine: AsyncEngine, fakes: Fakes
) -> None:
    payloads = [opt_in_payload(contact=f"+1555555{n:04d}") for n in range(40)]
    payloads += [opt_in_payload(contact="+15555550999") for _ in range(5)]  # one contact, 5 times
    responses = await asyncio.gather(*(api.webhook(p) for p in payloads))

    assert [r.status_code for r in responses] == [200] * len(payloads)
    assert {r.json()["status"] for r in responses} == {"stored"}
    assert await count(db_engine, OptIn) == 45
    assert await count(db_engine, Subscriber) == 41
    # one subscribe job per new membership: 40 contacts + the repeated one once
    assert await count(db_engine, DeliveryJob, DeliveryJob.kind == "subscribe") == 41
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 41)
    # Jobs finishing together are recorded together, each one done with Call Loop's status.
    await wait_until(lambda: _all_done(api, 41))
    assert {job["last_status_code"] for job in await api.deliveries()} == {200}


async def _all_done(api: Api, expected: int) -> bool:
    jobs = await api.deliveries()
    return len(jobs) == expected and all(job["status"] == "done" for job in jobs)


async def test_duplicate_and_new_webhook_in_one_batch(api: Api, db_engine: AsyncEngine) -> None:
    stored = opt_in_payload(contact="+15555550101")
    assert (await api.webhook(stored)).json()["status"] == "stored"

    fresh = opt_in_payload(contact="+15555550102")
    retried, new, same_twice_a, same_twice_b = await asyncio.gather(
        api.webhook(stored), api.webhook(fresh), api.webhook(fresh), api.webhook(stored)
    )
    assert retried.json()["status"] == "duplicate"
    assert same_twice_b.json()["status"] == "duplicate"
    assert sorted([new.json()["status"], same_twice_a.json()["status"]]) == [
        "duplicate",
        "stored",
    ]
    assert await count(db_engine, OptIn) == 2
    assert await count(db_engine, OptIn, OptIn.webhook_id == fresh["webhook_id"]) == 1


async def test_concurrent_stop_and_opt_in_keep_their_meaning(
    api: Api, db_engine: AsyncEngine
) -> None:
    contact = "+15555550177"
    await api.webhook(opt_in_payload(contact=contact))
    stop = {
        "contact": contact,
        "event": "message_inbound",
        "type": "message",
        "text": "STOP",
        "webhook_id": "stop-in-batch",
        "message_id": "m-stop",
    }
    others = [opt_in_payload(contact=f"+1555555{n:04d}") for n in range(300, 310)]
    responses = await asyncio.gather(api.webhook(stop), *(api.webhook(p) for p in others))
    assert responses[0].json()["status"] == "opted_out"
    assert {r.json()["status"] for r in responses[1:]} == {"stored"}
    async with db_engine.connect() as conn:
        status = (
            await conn.execute(select(Subscriber.status).where(Subscriber.contact == contact))
        ).scalar_one()
    assert status == "opted_out"


async def test_a_failing_unit_does_not_fail_its_batch(db_engine: AsyncEngine) -> None:
    committer = GroupCommitter(db_engine, writers=1)  # one batch, whatever the database
    erasures = Erasure.__table__

    def add(subscriber_id: int):  # type: ignore[no-untyped-def]
        async def work(conn: AsyncConnection) -> int:
            await conn.execute(
                insert(erasures).values(
                    subscriber_id=subscriber_id,
                    erased_at=utcnow(),
                    opt_ins_erased=0,
                    requested_by="test",
                )
            )
            return subscriber_id

        return work

    async def broken(conn: AsyncConnection) -> int:
        await conn.execute(select(1))
        raise ValueError("this unit is bad")

    try:
        results = await asyncio.gather(
            committer.run(add(1)),
            committer.run(broken),
            committer.run(add(2)),
            return_exceptions=True,
        )
    finally:
        await committer.stop()
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ValueError)
    assert committer.replays == 1  # the three were one batch, rolled back and replayed
    assert await count(db_engine, Erasure) == 2


async def test_a_bad_argument_of_a_batched_unit_fails_alone(db_engine: AsyncEngine) -> None:
    committer = GroupCommitter(db_engine, writers=1)
    erasures = Erasure.__table__
    calls: list[list[int]] = []

    async def add_all(conn: AsyncConnection, subscriber_ids: list[int]) -> list[int]:
        calls.append(subscriber_ids)
        if -1 in subscriber_ids:
            raise ValueError("a bad argument")
        await conn.execute(
            insert(erasures),
            [
                {
                    "subscriber_id": n,
                    "erased_at": utcnow(),
                    "opt_ins_erased": 0,
                    "requested_by": "test",
                }
                for n in subscriber_ids
            ],
        )
        return [n * 10 for n in subscriber_ids]

    try:
        results = await asyncio.gather(
            *(committer.run_batched(add_all, n) for n in (1, -1, 2, 3)),
            return_exceptions=True,
        )
    finally:
        await committer.stop()
    assert results[0] == 10 and results[2] == 20 and results[3] == 30
    assert isinstance(results[1], ValueError)
    assert calls[0] == [1, -1, 2, 3]  # one call for the batch, then each argument alone
    assert sorted(calls[1:]) == [[-1], [1], [2], [3]]
    assert await count(db_engine, Erasure) == 3


@pytest.mark.parametrize("units", [1, 50])
async def test_every_caller_gets_its_own_result(db_engine: AsyncEngine, units: int) -> None:
    committer = GroupCommitter(db_engine, max_batch=16)

    def echo(n: int):  # type: ignore[no-untyped-def]
        async def work(conn: AsyncConnection) -> int:
            return int((await conn.execute(select(n))).scalar_one())

        return work

    try:
        results = await asyncio.gather(*(committer.run(echo(n)) for n in range(units)))
    finally:
        await committer.stop()
    assert results == list(range(units))
    assert committer.items == units


async def test_units_handed_over_a_few_loop_turns_apart_share_one_commit(
    db_engine: AsyncEngine,
) -> None:
    committer = GroupCommitter(db_engine)  # one writer on SQLite, several on PostgreSQL
    try:
        results = await asyncio.gather(*(_late_caller(committer, turns) for turns in range(6)))
        assert results == list(range(6))
        assert (committer.batches, committer.items) == (1, 6)
        # A lone unit is not held back waiting for company.
        assert await asyncio.wait_for(committer.run(lambda conn: _scalar(conn, 7)), 5) == 7
        assert (committer.batches, committer.items) == (2, 7)
    finally:
        await committer.stop()


async def test_a_committer_cancelled_while_gathering_leaves_no_caller_waiting(
    db_engine: AsyncEngine,
) -> None:
    committer = GroupCommitter(db_engine)  # one writer on SQLite, several on PostgreSQL
    callers = [asyncio.create_task(_late_caller(committer, turns)) for turns in range(6)]
    for _ in range(3):  # the writer has the first units and is waiting for the others
        await asyncio.sleep(0)
    # The event loop shuts down (as at the end of asyncio.run): its tasks are cancelled.
    writers = [task for task in asyncio.all_tasks() if task.get_name().startswith("group-commit")]
    assert writers
    for task in writers:
        task.cancel()
    for _ in range(6):  # every caller has handed its unit over
        await asyncio.sleep(0)
    await asyncio.wait_for(committer.stop(), 5)
    # No caller is left waiting: the unit the writer held gets the cancellation, the units
    # still queued an error of their own.
    outcomes = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 5)
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes[1:])


async def _late_caller(committer: GroupCommitter, turns: int) -> int:
    """Hands over a unit `turns` loop turns from now (a request still being parsed)."""
    for _ in range(turns):
        await asyncio.sleep(0)
    return await committer.run(lambda conn: _scalar(conn, turns))


async def _scalar(conn: AsyncConnection, value: int) -> int:
    return int((await conn.execute(select(value))).scalar_one())


async def test_a_batch_mixing_every_kind_of_webhook_stores_each_as_if_alone(
    make_api: ApiFactory, db_engine: AsyncEngine
) -> None:
    api = await make_api(run_worker=False)
    known, leaving = "+15555550601", "+15555550602"
    for contact in (known, leaving):
        assert (await api.webhook(opt_in_payload(contact=contact))).status_code == 200
    retried = opt_in_payload(contact="+15555550603")
    assert (await api.webhook(retried)).json()["status"] == "stored"
    link = await api.client.post("/v1/opt-in-links", json={"click_id": "clk-batch"})
    ref = link.json()["ref"]

    new_contacts = [opt_in_payload(contact=f"+1555556{n:04d}", utm_source="ad") for n in range(20)]
    with_ref = opt_in_payload(contact="+15555550604", click_id="clk-batch", optin_ref=ref)
    by_email = opt_in_payload(contact="someone@example.com")
    stop = {
        "event": "message_inbound",
        "webhook_id": "stop-mixed",
        "contact": leaving,
        "text": "STOP",
        "message_id": "m-stop-mixed",
    }
    twice = opt_in_payload(contact="+15555550605")
    batch = [
        *new_contacts,
        with_ref,
        by_email,
        opt_in_payload(contact=known),
        stop,
        retried,
        twice,
        opt_in_payload(contact="+15555550605"),
    ]
    responses = await asyncio.gather(*(api.webhook(payload) for payload in batch))

    assert [r.status_code for r in responses] == [200] * len(batch)
    statuses = [r.json()["status"] for r in responses]
    assert statuses == ["stored"] * 23 + ["opted_out", "duplicate", "stored", "stored"]
    listing = (await api.admin_get("/v1/opt-ins", limit=100)).json()
    by_webhook = {item["webhook_id"]: item for item in listing["items"]}
    assert listing["total"] == 3 + 20 + 3 + 2
    assert by_webhook[with_ref["webhook_id"]]["consent_evidence"] == "link_request"
    assert by_webhook[with_ref["webhook_id"]]["click_id"] == "clk-batch"
    assert by_webhook[new_contacts[0]["webhook_id"]]["utm_source"] == "ad"
    assert by_webhook[new_contacts[0]["webhook_id"]]["consent_evidence"] == "webhook_only"
    # One add per contact and group: the known contact and the second "twice" add nothing.
    jobs = await api.deliveries()
    subscribe = [job for job in jobs if job["kind"] == "subscribe"]
    assert sorted(job["status"] for job in subscribe).count("skipped") == 1  # the email
    # Pending: the 20 new ones, with_ref, twice, known's first add; leaving's add was cancelled.
    assert sorted(job["status"] for job in subscribe).count("pending") == 20 + 1 + 1 + 2
    assert [job["status"] for job in jobs if job["kind"] == "opt_out"] == ["pending"]
    assert await count(db_engine, Subscriber) == 3 + 20 + 3


@pytest.mark.parametrize("what", ["webhook", "link request"])
async def test_sqlite_writer_waits_for_another_writer_instead_of_refusing(
    make_api: ApiFactory, db_url: str, db_engine: AsyncEngine, what: str
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's single write lock")
    api = await make_api(run_worker=False)

    async def send(n: int) -> httpx.Response:
        if what == "webhook":
            return await api.webhook(opt_in_payload(contact=f"+155555508{n:02d}"))
        return await api.client.post("/v1/opt-in-links", json={})  # a row without a transaction

    assert (await send(1)).status_code == 200
    # Another process (say, the CLI) holds the write lock.
    other = sqlite3.connect(make_url(db_url).database or "", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        waiting = asyncio.create_task(send(2))
        # The service keeps answering while its writer waits for the lock...
        for _ in range(5):
            assert (await api.client.get("/healthz")).status_code == 200
        assert not waiting.done()
    finally:
        other.execute("COMMIT")
        other.close()
    # ...and the webhook or link request is stored once the lock is free, not refused.
    response = await waiting
    assert response.status_code == 200
    if what == "webhook":
        assert response.json()["status"] == "stored"
    assert await count(db_engine, OptIn if what == "webhook" else LinkRequest) == 2


async def test_sqlite_connections_keep_temporary_data_in_memory(
    db_url: str, db_engine: AsyncEngine
) -> None:
    """The writer's batches and the app's other connections never spill statement journals or
    sorts to temporary files (see app/db.py)."""
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's temp_store")
    committer = GroupCommitter(db_engine)

    async def temp_store(conn: AsyncConnection) -> int:
        return int((await conn.exec_driver_sql("PRAGMA temp_store")).scalar())

    try:
        assert await committer.run(temp_store) == 2  # MEMORY, on the writer's connection
    finally:
        await committer.stop()
    async with db_engine.connect() as conn:
        assert await temp_store(conn) == 2


async def end_other_connections(db_engine: AsyncEngine) -> None:
    """The server goes away under every other connection (a restart, an idle timeout)."""
    async with db_engine.connect() as conn:
        ended = await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        assert ended.all()


async def test_writer_replaces_a_connection_the_server_dropped(
    make_api: ApiFactory, db_url: str, db_engine: AsyncEngine
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's writers keep a connection each")
    api = await make_api(run_worker=False)
    # One at a time: each writer in turn takes a webhook, so each opens its connection.
    for n in range(8):
        assert (await api.webhook(opt_in_payload(contact=f"+1555555081{n}"))).status_code == 200
    # The server goes away under the writers' connections (a restart, an idle timeout).
    await end_other_connections(db_engine)
    for n in range(8):
        response = await api.webhook(opt_in_payload(contact=f"+1555555082{n}"))
        assert response.status_code == 200 and response.json()["status"] == "stored"
    assert await count(db_engine, OptIn) == 16


async def test_link_requests_are_stored_after_the_server_dropped_the_connections(
    make_api: ApiFactory, db_url: str, db_engine: AsyncEngine
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's writers keep a connection each")
    api = await make_api(run_worker=False)
    for _ in range(8):  # each writer in turn stores a link request: each opens its connection
        assert (await api.client.post("/v1/opt-in-links", json={})).status_code == 200
    replays_before = api.app.state.services.writer.replays
    await end_other_connections(db_engine)
    responses = await asyncio.gather(
        *(api.client.post("/v1/opt-in-links", json={}) for _ in range(8))
    )
    assert [r.status_code for r in responses] == [200] * 8
    for _ in range(8):
        assert (await api.client.post("/v1/opt-in-links", json={})).status_code == 200
    assert await count(db_engine, LinkRequest) == 24
    # A writer's dropped connection costs one batch replayed, then the new one is used.
    writer = api.app.state.services.writer
    assert writer.replays - replays_before <= writer.writers


def link_row(ref: str, n: int = 0) -> dict[str, object]:
    return {
        "ref": ref,
        "loop_link_id": f"link-{n}",
        "created_at": utcnow(),
        "params": {"n": n},
        "consent_text": "Yes, send me texts",
        "client_ip": "203.0.113.9",
        "user_agent": "test",
        "page_url": None,
        "recommended": "sms",
        "channel": "api",
        **{name: None for name in ATTRIBUTION_FIELDS},
    }


def writer_sync_engine(committer: GroupCommitter, db_engine: AsyncEngine) -> Engine:
    """The engine whose connection the committer writes with (SQLite: its own stdlib one)."""
    return committer._sync_engine or db_engine.sync_engine


async def test_rows_alone_go_in_one_statement_without_a_transaction(
    db_engine: AsyncEngine,
) -> None:
    committer = GroupCommitter(db_engine, writers=1)
    begins: list[object] = []
    engine = writer_sync_engine(committer, db_engine)

    def began(conn: object) -> None:
        begins.append(conn)

    event.listen(engine, "begin", began)
    try:
        await committer.insert(INSERT_LINK_REQUESTS, link_row("lr_first"))  # connects
        begins.clear()
        await asyncio.gather(
            *(committer.insert(INSERT_LINK_REQUESTS, link_row(f"lr_{n}", n)) for n in range(12))
        )
    finally:
        await committer.stop()
        event.remove(engine, "begin", began)
    assert begins == []  # no BEGIN / COMMIT around them
    assert (committer.batches, committer.items) == (2, 13)
    async with db_engine.connect() as conn:
        stored = (await conn.execute(select(LinkRequest.ref, LinkRequest.params))).all()
    assert sorted(stored) == sorted(
        [("lr_first", {"n": 0})] + [(f"lr_{n}", {"n": n}) for n in range(12)]
    )


async def test_a_failing_row_in_a_batch_of_rows_fails_alone(db_engine: AsyncEngine) -> None:
    committer = GroupCommitter(db_engine, writers=1)
    try:
        await committer.insert(INSERT_LINK_REQUESTS, link_row("lr_taken"))
        results = await asyncio.gather(
            *(
                committer.insert(INSERT_LINK_REQUESTS, link_row(ref))
                for ref in ("lr_a", "lr_taken", "lr_b")  # the second breaks `ref`'s uniqueness
            ),
            return_exceptions=True,
        )
    finally:
        await committer.stop()
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], Exception)
    assert committer.replays == 1
    async with db_engine.connect() as conn:
        refs = (await conn.execute(select(LinkRequest.ref))).scalars().all()
    assert sorted(refs) == ["lr_a", "lr_b", "lr_taken"]


async def test_rows_batched_with_other_work_share_its_transaction(db_engine: AsyncEngine) -> None:
    committer = GroupCommitter(db_engine, writers=1)

    async def fails(conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT 1"))
        raise ValueError("this unit fails")

    try:
        results = await asyncio.gather(
            committer.insert(INSERT_LINK_REQUESTS, link_row("lr_with_work")),
            committer.run(lambda conn: _scalar(conn, 5)),
            committer.run(fails),
            return_exceptions=True,
        )
    finally:
        await committer.stop()
    assert results[0] is None and results[1] == 5 and isinstance(results[2], ValueError)
    assert committer.replays == 1  # one transaction for the three, then each alone
    assert await count(db_engine, LinkRequest) == 1


async def _refuse_opt_ins_with_click_id(engine: AsyncEngine, click_id: str) -> None:
    """A trigger that makes the database itself refuse one opt-in row (a driver error)."""
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_opt_in BEFORE INSERT ON opt_ins "
                f"WHEN NEW.click_id = '{click_id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            await conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION refuse_opt_in() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN "
                f"IF NEW.click_id = '{click_id}' THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$"
            )
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_opt_in BEFORE INSERT ON opt_ins "
                "FOR EACH ROW EXECUTE FUNCTION refuse_opt_in()"
            )


async def test_a_webhook_the_database_refuses_is_a_503_and_its_neighbours_are_stored(
    api: Api, db_engine: AsyncEngine
) -> None:
    """The bulk intake's statements (on SQLite sent to the driver below SQLAlchemy) fail with
    SQLAlchemy's DBAPIError like any other statement: the webhook is refused with a 503 (sent
    again later by LoopMessage), nothing of it is kept, and the webhooks batched with it are
    stored."""
    await _refuse_opt_ins_with_click_id(db_engine, "refused-click")
    refused = opt_in_payload(contact="+15555550300", click_id="refused-click")
    fine = [opt_in_payload(contact=f"+1555555031{n}") for n in range(5)]
    responses = await asyncio.gather(*(api.webhook(p) for p in [*fine[:2], refused, *fine[2:]]))

    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 503, 200, 200, 200]
    assert responses[2].json()["code"] == "database_unavailable"
    assert await count(db_engine, OptIn) == 5
    assert await count(db_engine, Subscriber, Subscriber.contact == "+15555550300") == 0
