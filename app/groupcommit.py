"""Group commit: concurrent units of work share one transaction and one commit (one fsync).

Each caller hands over `work(conn)` and awaits its own result, which is delivered only after the
commit that holds its changes, so "answered means stored" still holds. One writer runs the
batches, which is also what SQLite wants (one writer, no lock waits between requests).

Work that is cheaper done for many at once (`run_batched`: the webhook intake, the worker's job
results) is handed over as an argument for a batch function, called once per batch with the
arguments of every unit that named it.

Rows for a `BulkInsert` (`insert`: the link requests) are the cheapest unit: the rows of a batch
go in one multi-row statement, and a batch of nothing else runs that statement alone, without
BEGIN and COMMIT (one statement is atomic by itself), straight on the driver's connection: one
round trip on PostgreSQL instead of three.

If a unit raises inside a batch, the batch is rolled back and every unit of it is run again in
its own transaction: the one that fails gets its error, the others are stored as if alone.
If the commit itself fails, every unit of that batch gets the error (nothing was stored).

On SQLite the batch uses the stdlib driver: the units are the same async domain functions
(`ingest`, …), driven to completion against a synchronous connection on the event loop thread
(see `_commit_sqlite`), which waits for a lock only in the writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import SQLITE_BUSY_TIMEOUT_MS, BulkInsert, create_sqlite_writer_engine, is_sqlite

log = logging.getLogger("optin.groupcommit")

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[Any]]


BatchWork = Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]]

GATHER_TURNS = 8  # loop turns a writer waits at most for more units (see `_gather`)


class _Item:
    """One unit: `work(conn)`, or `argument` for a `batch_work(conn, arguments)` shared by
    every unit of the batch that names the same `batch_work`, or a row for `insert`."""

    __slots__ = ("argument", "batch_work", "future", "insert", "work")

    def __init__(
        self,
        future: asyncio.Future[Any],
        work: Work | None = None,
        batch_work: BatchWork | None = None,
        argument: Any = None,
        insert: BulkInsert | None = None,
    ) -> None:
        self.future = future
        self.work = work
        self.batch_work = batch_work
        self.argument = argument
        self.insert = insert


async def _run_units(conn: AsyncConnection, units: list[_Item]) -> list[Any]:
    """Each unit's result, in order; units of one `batch_work` are run by a single call."""
    results: list[Any] = [None] * len(units)
    groups: dict[BatchWork, list[int]] = {}
    for index, unit in enumerate(units):
        if unit.batch_work is not None:
            groups.setdefault(unit.batch_work, []).append(index)
        elif unit.work is not None:
            results[index] = await unit.work(conn)
    rows: dict[BulkInsert, list[Any]] = {}
    for unit in units:
        if unit.insert is not None:
            rows.setdefault(unit.insert, []).append(unit.argument)
    for insert, its_rows in rows.items():
        await insert.execute(conn, its_rows)
    for batch_work, indexes in groups.items():
        values = await batch_work(conn, [units[index].argument for index in indexes])
        for index, value in zip(indexes, values, strict=True):
            results[index] = value
    return results


class _Outcome:
    __slots__ = ("error", "value")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error


class _SyncConnection:
    """What the domain functions use of an AsyncConnection (`execute`, `exec_driver_sql`,
    `dialect`), answered by a synchronous connection: their awaits complete at once.

    `execute_on_driver` is for the bulk inserts' multi-row statements (`BulkInsert`), whose
    SQL and values are already the driver's: it sends them straight to the sqlite3 connection
    under SQLAlchemy's, inside the transaction SQLAlchemy began. SQLAlchemy's work around each
    statement (execution context, cursor result, row objects) was ~13 µs of a webhook's CPU
    with batches of 8. A driver error is raised as the DBAPIError SQLAlchemy would have raised,
    so callers handle both paths alike."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def dialect(self) -> Dialect:
        return self._conn.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        return self._conn.exec_driver_sql(statement, parameters)

    def execute_on_driver(self, statement: str, parameters: tuple[Any, ...]) -> list[Any]:
        """`statement` on the sqlite3 connection; the rows it returned, as tuples."""
        driver: Any = self._conn.connection.driver_connection
        try:
            cursor = driver.execute(statement, parameters)
            try:
                return cast(list[Any], cursor.fetchall())
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            raise DBAPIError.instance(
                statement, parameters, exc, sqlite3.Error, dialect=self._conn.dialect
            ) from exc


def _drive(awaitable: Awaitable[T]) -> T:
    """Run a coroutine that never really suspends (it only awaits a _SyncConnection)."""
    coroutine = cast(Coroutine[Any, Any, T], awaitable)
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coroutine.close()
    raise RuntimeError("a group-commit unit awaited something other than the database")


def _set_busy_timeout(connection: Connection, milliseconds: int) -> None:
    # On the driver's connection: through SQLAlchemy, the PRAGMA would begin a transaction.
    driver_connection: Any = connection.connection.driver_connection
    driver_connection.execute(f"PRAGMA busy_timeout={int(milliseconds)}")


def _is_locked(exc: OperationalError | sqlite3.OperationalError) -> bool:
    """SQLite's answer when another connection holds the write lock (SQLAlchemy's or the
    driver's exception)."""
    message = str(getattr(exc, "orig", exc))
    return "database is locked" in message or "database is busy" in message


class GroupCommitter:
    def __init__(self, engine: AsyncEngine, max_batch: int = 256, writers: int = 4) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._forming = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._sync_engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._sync_connection: Connection | None = None
        self._held: dict[int, AsyncConnection] = {}  # PostgreSQL: each writer's connection
        self._held_driver: dict[int, Any] = {}  # and the driver's (asyncpg) connection under it
        # SQLite has one writer; PostgreSQL overlaps a few batches' round trips (row locks
        # order them; a deadlock between two batches just replays their units one by one).
        # Either way one writer at a time forms its batch (see `_gather`).
        self.writers = writers
        if is_sqlite(engine.url.render_as_string(hide_password=False)):
            self._sync_engine = create_sqlite_writer_engine(
                engine.url.render_as_string(hide_password=False)
            )
            self.writers = 1
        self.batches = 0  # committed batches
        self.items = 0  # units committed in those batches
        self.replays = 0  # batches rolled back and replayed one unit at a time

    def start(self) -> None:
        if not self._tasks:
            if self._sync_engine is not None and self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            self._tasks = [
                asyncio.create_task(self._run(n), name=f"group-commit-{n}")
                for n in range(self.writers)
            ]

    async def stop(self) -> None:
        """Finish what is queued, then stop. (Units left queued with no writer to run them,
        the writers having been cancelled with the event loop, get an error.)"""
        if self._tasks:
            if not all(task.done() for task in self._tasks):
                await self._queue.join()
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("the database writer has stopped"))
                self._queue.task_done()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._tasks = []
        for slot in list(self._held):
            await self._drop_connection(slot)
        if self._thread is not None:
            if self._sync_connection is not None:
                await self._in_thread(self._sync_connection.close)
                self._sync_connection = None
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `work(conn)` in the next batch; return its result once that batch is committed."""
        if not self._tasks:
            self.start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(future, work=work))
        return await future

    async def run_batched(self, batch_work: BatchWork, argument: Any) -> Any:
        """Like `run`, for work that is cheaper per unit when done for many at once: the units
        of a batch that name the same `batch_work` go to one `batch_work(conn, arguments)`,
        which returns one result per argument, in order."""
        if not self._tasks:
            self.start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(future, batch_work=batch_work, argument=argument))
        return await future

    async def insert(self, insert: BulkInsert, row: dict[str, Any]) -> None:
        """Store `row` with `insert` in the next batch; return once that batch is committed.
        The rows of a batch go in one statement; a batch of rows only runs without BEGIN and
        COMMIT (see the module's docstring)."""
        if not self._tasks:
            self.start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(future, insert=insert, argument=row))
        await future

    async def _gather(self) -> None:
        """Let units about to be handed over join the batch being formed.

        Requests arrive a few loop turns apart (on SQLite, those that came during a COMMIT,
        which runs on the event loop, are parsed only after it); committing at the first of
        them made batches of a handful. This gives the loop one turn at a time while that
        brings new units, at most GATHER_TURNS: no wait on a timer, so a lone request is
        delayed by one loop turn. One writer forms a batch at a time (`_forming`); the others
        meanwhile run theirs. Measured under 16 concurrent webhooks on SQLite: batches of ~6
        grew to ~16 and the intake's throughput rose by a third. On PostgreSQL, where each of
        the 4 writers used to take the next unit as soon as it was free: batches of webhooks
        grew from ~5 to ~11 and of link requests from ~3 to ~6; throughput +4-18 % (intake)
        and +21-37 % (links), with 15-30 % less CPU a request (paired runs)."""
        waiting = self._queue.qsize()
        for _ in range(GATHER_TURNS):
            if waiting + 1 >= self.max_batch:
                return
            await asyncio.sleep(0)
            now_waiting = self._queue.qsize()
            if now_waiting == waiting:
                return
            waiting = now_waiting

    async def _run(self, slot: int) -> None:
        while True:
            batch: list[_Item] = []
            try:
                async with self._forming:  # one writer forms a batch while others commit theirs
                    batch.append(await self._queue.get())
                    await self._gather()
                    while len(batch) < self.max_batch and not self._queue.empty():
                        batch.append(self._queue.get_nowait())
                live = [item for item in batch if not item.future.done()]  # callers may be gone
                if live:
                    outcomes = await self._commit(live, slot)
                    for item, outcome in zip(live, outcomes, strict=True):
                        if item.future.done():
                            continue
                        if outcome.error is not None:
                            item.future.set_exception(outcome.error)
                        else:
                            item.future.set_result(outcome.value)
            except BaseException as exc:  # never leave a caller waiting
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, live: list[_Item], slot: int) -> list[_Outcome]:
        insert = live[0].insert
        if insert is not None and all(item.insert is insert for item in live):
            # Rows of one BulkInsert only: one statement, no transaction. If it fails (a
            # constraint, the database gone), nothing of it was stored: the rows are replayed
            # one by one below, each in a transaction of its own, for its own error.
            rows = [item.argument for item in live]
            try:
                if self._sync_engine is not None:
                    stored = self._insert_sqlite(insert, rows)
                else:
                    stored = await self._insert_async(insert, rows, slot)
            except Exception as exc:
                self._note(len(live), True, exc)
                return [(await self._commit_one(item, slot)) for item in live]
            if stored:
                self._note(len(live), False, None)
                return [_Outcome() for _ in live]
        if self._sync_engine is not None:
            return await self._commit_sqlite(live)
        return await self._commit_async(live, slot)

    async def _commit_one(self, item: _Item, slot: int) -> _Outcome:
        if self._sync_engine is not None:
            return (await self._commit_sqlite([item]))[0]
        return (await self._commit_async([item], slot))[0]

    def _insert_sqlite(self, insert: BulkInsert, rows: list[dict[str, Any]]) -> bool:
        """The rows' statement on the sqlite3 connection, in its autocommit mode (a transaction
        of its own, fsynced like any commit); False when another connection holds the write
        lock, or the rows need more than one statement (the caller then takes the usual path)."""
        connection = self._sync_connection
        if (
            connection is None
            or connection.closed
            or connection.in_transaction()
            or len(rows) * len(insert.names) > BulkInsert.MAX_VALUES
        ):
            return False
        driver: Any = connection.connection.driver_connection
        dialect = connection.dialect
        try:
            driver.execute(insert.statement(dialect, len(rows)), insert.values(dialect, rows))
        except sqlite3.OperationalError as exc:
            if _is_locked(exc):
                return False
            raise
        return True

    async def _insert_async(
        self, insert: BulkInsert, rows: list[dict[str, Any]], slot: int
    ) -> bool:
        """The rows' statement on the writer's asyncpg connection, outside a transaction."""
        if len(rows) * len(insert.names) > BulkInsert.MAX_VALUES:
            return False
        conn = await self._held_connection(slot)
        if conn.in_transaction():
            return False
        driver: Any = self._held_driver.get(slot)
        if driver is None:  # asked once per connection: SQLAlchemy's answer is a greenlet hop
            driver = (await conn.get_raw_connection()).driver_connection
            self._held_driver[slot] = driver
        dialect = conn.dialect
        await driver.execute(insert.statement(dialect, len(rows)), *insert.values(dialect, rows))
        return True

    def _note(self, units: int, replayed: bool, error: BaseException | None) -> None:
        if replayed:
            self.replays += 1
            log.info(
                "batch failed; running its units one by one",
                extra={"units": units, "error": type(error).__name__},
            )
        else:
            self.batches += 1
            self.items += units

    # SQLite: stdlib driver, one connection, used by one batch at a time. The batch runs on the
    # event loop thread: BEGIN IMMEDIATE, the statements (short in-memory work) and COMMIT (an
    # append to the WAL and one fsync, a fraction of a millisecond). Handing BEGIN and COMMIT
    # to a thread cost more: each hop waited for the GIL and the loop (measured: 2-4 ms a hop
    # under load, against 0.3 ms for the fsync itself). The connection never waits for a lock
    # on the loop thread (busy_timeout 0): while another connection or process holds the write
    # lock, BEGIN is retried in the writer thread, which waits for it as long as any writer.
    def _connection(self) -> Connection:
        assert self._sync_engine is not None
        if self._sync_connection is None or self._sync_connection.closed:
            connection = self._sync_engine.connect()
            _set_busy_timeout(connection, 0)
            self._sync_connection = connection
        return self._sync_connection

    def _begin_now(self) -> Connection | None:
        """BEGIN IMMEDIATE on the loop thread; None when the write lock is held elsewhere."""
        if self._sync_connection is None or self._sync_connection.closed:
            return None  # connecting (and its PRAGMAs) is left to the writer thread
        try:
            self._sync_connection.begin()
        except OperationalError as exc:
            if _is_locked(exc):
                return None
            raise
        return self._sync_connection

    def _begin_waiting(self) -> Connection:
        """BEGIN IMMEDIATE in the writer thread, waiting for the lock like any other writer."""
        connection = self._connection()
        _set_busy_timeout(connection, SQLITE_BUSY_TIMEOUT_MS)
        try:
            connection.begin()
        finally:
            _set_busy_timeout(connection, 0)
        return connection

    @staticmethod
    def _finish(connection: Connection, commit: bool) -> None:
        transaction = connection.get_transaction()
        if transaction is None:
            return
        if commit:
            transaction.commit()
        else:
            transaction.rollback()

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, function, *args)

    async def _commit_sqlite(self, live: list[_Item]) -> list[_Outcome]:
        try:
            connection = self._begin_now()
            if connection is None:
                connection = await self._in_thread(self._begin_waiting)
        except Exception as exc:
            return [_Outcome(error=exc) for _ in live]
        try:
            facade = cast(AsyncConnection, _SyncConnection(connection))
            values = _drive(_run_units(facade, live))
        except Exception as exc:
            self._finish(connection, False)
            if len(live) == 1:
                return [_Outcome(error=exc)]
            self._note(len(live), True, exc)
            return [(await self._commit_sqlite([item]))[0] for item in live]
        try:
            self._finish(connection, True)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._finish(connection, False)
            return [_Outcome(error=exc) for _ in live]
        self._note(len(live), False, None)
        return [_Outcome(value) for value in values]

    # PostgreSQL (and any other async driver): each writer keeps its own connection. Taking
    # one from the pool for every batch cost a round trip more (the pool's pre-ping) and ~10 %
    # of the intake's throughput. A connection the server dropped is replaced, and the batch
    # is run again on the new one when the drop came before COMMIT (nothing of it was stored);
    # a drop during COMMIT (outcome unknown) is handled like any failed batch.
    async def _held_connection(self, slot: int) -> AsyncConnection:
        conn = self._held.get(slot)
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                await self._drop_connection(slot)
            conn = await self.engine.connect()
            self._held[slot] = conn
        return conn

    async def _drop_connection(self, slot: int) -> None:
        self._held_driver.pop(slot, None)
        conn = self._held.pop(slot, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _commit_async(self, live: list[_Item], slot: int) -> list[_Outcome]:
        for attempt in (1, 2):
            committing = False
            try:
                conn = await self._held_connection(slot)
                async with conn.begin():
                    values = await _run_units(conn, live)
                    committing = True
                break
            except DBAPIError as exc:
                if exc.connection_invalidated and attempt == 1 and not committing:
                    await self._drop_connection(slot)
                    continue
                return await self._replay_async(live, slot, exc)
            except Exception as exc:
                return await self._replay_async(live, slot, exc)
        self._note(len(live), False, None)
        return [_Outcome(value) for value in values]

    async def _replay_async(self, live: list[_Item], slot: int, exc: Exception) -> list[_Outcome]:
        if len(live) == 1:
            return [_Outcome(error=exc)]
        self._note(len(live), True, exc)
        return [(await self._commit_async([item], slot))[0] for item in live]
