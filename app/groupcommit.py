"""Group commit: concurrent units of work share one transaction and one commit (one fsync).

Each caller hands over `work(conn)` and awaits its own result, which is delivered only after the
commit that holds its changes, so "answered means stored" still holds. One writer task runs
the batches, which is also what SQLite wants (one writer, no lock waits between requests).

If a unit raises inside a batch, the batch is rolled back and every unit of it is run again in
its own transaction: the one that fails gets its error, the others are stored as if alone.
If the commit itself fails, every unit of that batch gets the error (nothing was stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("optin.groupcommit")

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[Any]]


class _Item:
    __slots__ = ("future", "work")

    def __init__(self, work: Work, future: asyncio.Future[Any]) -> None:
        self.work = work
        self.future = future


class GroupCommitter:
    def __init__(self, engine: AsyncEngine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # committed batches
        self.items = 0  # units committed in those batches
        self.replays = 0  # batches rolled back and replayed one unit at a time

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

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
            try:
                await self._commit_batch(batch)
            except BaseException as exc:  # never leave a caller waiting
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit_batch(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # callers may have given up
        if not live:
            return
        results: list[Any] = []
        try:
            async with self.engine.begin() as conn:
                for item in live:
                    results.append(await item.work(conn))
        except Exception as exc:
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            self.replays += 1
            log.info(
                "batch failed; running its units one by one",
                extra={"units": len(live), "error": type(exc).__name__},
            )
            for item in live:
                await self._commit_alone(item)
            return
        self.batches += 1
        self.items += len(live)
        for item, result in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    async def _commit_alone(self, item: _Item) -> None:
        try:
            async with self.engine.begin() as conn:
                result = await item.work(conn)
        except Exception as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(result)
