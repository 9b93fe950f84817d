"""Group commit: concurrent units of work share one transaction and one commit (one fsync).

Each caller hands over `work(conn)` and awaits its own result, which is delivered only after the
commit that holds its changes, so "answered means stored" still holds. One writer runs the
batches, which is also what SQLite wants (one writer, no lock waits between requests).

If a unit raises inside a batch, the batch is rolled back and every unit of it is run again in
its own transaction: the one that fails gets its error, the others are stored as if alone.
If the commit itself fails, every unit of that batch gets the error (nothing was stored).

On SQLite the batch runs in one writer thread over the stdlib driver: the units are the same
async domain functions (`ingest`, …), driven to completion against a synchronous connection,
so a whole batch costs one thread hop instead of one per statement through aiosqlite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import create_sqlite_writer_engine, is_sqlite

log = logging.getLogger("optin.groupcommit")

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[Any]]


class _Item:
    __slots__ = ("future", "work")

    def __init__(self, work: Work, future: asyncio.Future[Any]) -> None:
        self.work = work
        self.future = future


class _Outcome:
    __slots__ = ("error", "value")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error


class _SyncConnection:
    """What the domain functions use of an AsyncConnection (`execute`, `dialect`), answered
    by a synchronous connection: their awaits complete at once, in the writer thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def dialect(self) -> Dialect:
        return self._conn.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)


def _drive(awaitable: Awaitable[T]) -> T:
    """Run a coroutine that never really suspends (it only awaits a _SyncConnection)."""
    coroutine = cast(Coroutine[Any, Any, T], awaitable)
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coroutine.close()
    raise RuntimeError("a group-commit unit awaited something other than the database")


class GroupCommitter:
    def __init__(self, engine: AsyncEngine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._sync_engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        if is_sqlite(engine.url.render_as_string(hide_password=False)):
            self._sync_engine = create_sqlite_writer_engine(
                engine.url.render_as_string(hide_password=False)
            )
        self.batches = 0  # committed batches
        self.items = 0  # units committed in those batches
        self.replays = 0  # batches rolled back and replayed one unit at a time

    def start(self) -> None:
        if self._task is None:
            if self._sync_engine is not None and self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `work(conn)` in the next batch; return its result once that batch is committed."""
        if self._task is None:
            self.start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(work, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [item for item in batch if not item.future.done()]  # callers may be gone
            try:
                if live:
                    outcomes = await self._commit(live)
                    for item, outcome in zip(live, outcomes, strict=True):
                        if item.future.done():
                            continue
                        if outcome.error is not None:
                            item.future.set_exception(outcome.error)
                        else:
                            item.future.set_result(outcome.value)
            except BaseException as exc:  # never leave a caller waiting
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, live: list[_Item]) -> list[_Outcome]:
        if self._sync_engine is not None and self._thread is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, self._commit_in_thread, live)
        return await self._commit_async(live)

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

    # SQLite: the writer thread, stdlib driver
    def _commit_in_thread(self, live: list[_Item]) -> list[_Outcome]:
        assert self._sync_engine is not None
        try:
            with self._sync_engine.begin() as conn:
                facade = cast(AsyncConnection, _SyncConnection(conn))
                values = [_drive(item.work(facade)) for item in live]
        except Exception as exc:
            if len(live) == 1:
                return [_Outcome(error=exc)]
            self._note(len(live), True, exc)
            return [self._commit_in_thread([item])[0] for item in live]
        self._note(len(live), False, None)
        return [_Outcome(value) for value in values]

    # PostgreSQL (and any other async driver): one transaction on the async engine
    async def _commit_async(self, live: list[_Item]) -> list[_Outcome]:
        try:
            async with self.engine.begin() as conn:
                values = [await item.work(conn) for item in live]
        except Exception as exc:
            if len(live) == 1:
                return [_Outcome(error=exc)]
            self._note(len(live), True, exc)
            return [(await self._commit_async([item]))[0] for item in live]
        self._note(len(live), False, None)
        return [_Outcome(value) for value in values]
