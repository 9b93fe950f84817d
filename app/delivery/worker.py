"""The delivery worker: claims due jobs, calls Call Loop / LoopMessage, records the result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.clients.callloop import CallLoopClient, CallLoopError
from app.clients.loopmessage import LoopMessageClient, LoopMessageError
from app.db import insert_ignore, table_of, utcnow
from app.delivery import outbox
from app.delivery.backoff import retry_delay
from app.delivery.jobs import JOBS_CHANNEL
from app.groupcommit import GroupCommitter
from app.models import WorkerHeartbeat
from app.observability import DELIVERIES, RequestsInFlight, log_info, set_queue_gauges
from app.redaction import hide_url_secrets
from app.settings import Settings

log = logging.getLogger("optin.delivery")
heartbeats = table_of(WorkerHeartbeat)

HEARTBEAT_SECONDS = 5.0
BUSY_REQUESTS = 8  # requests in flight from which the in-process worker gives way to the API
EXPIRED_LOOK_SECONDS = 5.0  # how often a busy worker looks for jobs whose lease ran out
T = TypeVar("T")


class JobFailed(Exception):
    def __init__(self, reason: str, *, transient: bool, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.status_code = status_code


class DeliveryWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        callloop: CallLoopClient,
        loopmessage: LoopMessageClient | None,
        writer: GroupCommitter | None = None,
        api_load: RequestsInFlight | None = None,
    ) -> None:
        self.engine = engine
        # In the API's process: the requests it is serving (see `_give_way`).
        self.api_load = api_load
        # Claims and results share the intake's group commit when given: on SQLite that
        # keeps one writer, and a busy queue costs one fsync per batch instead of per job.
        self.writer = writer
        self.settings = settings
        self.callloop = callloop
        self.loopmessage = loopmessage
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self.listening = False  # a PostgreSQL LISTEN connection is up
        self._expired_looked_at = -math.inf  # loop time of the last claim that looked for them

    def wake(self) -> None:
        """New jobs were committed: look now instead of at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="delivery-worker")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="worker-heartbeat")
        if self.engine.dialect.name == "postgresql":
            self._listen_task = asyncio.create_task(self._listen(), name="worker-listen")

    async def stop(self, grace_seconds: float = 20.0) -> None:
        """Finish the jobs in hand (bounded by `grace_seconds`), then give back what is left."""
        self._stopping.set()
        self._wake.set()
        for task in (self._task, self._heartbeat_task, self._listen_task):
            if task is None:
                continue
            try:
                await asyncio.wait_for(task, grace_seconds)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        with contextlib.suppress(Exception):
            async with self.engine.begin() as conn:
                released = await outbox.release(conn, self.worker_id)
            if released:
                log.info("released unfinished jobs", extra={"jobs": released})

    async def run(self) -> None:
        log.info("delivery worker started", extra={"worker_id": self.worker_id})
        while not self._stopping.is_set():
            try:
                handled = await self.run_once()
            except Exception:
                log.exception("delivery loop error; retrying after the poll interval")
                handled = 0
            if handled:
                if self.api_load is not None and self.api_load.count >= BUSY_REQUESTS:
                    await self._give_way()
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), self.settings.delivery_poll_interval_seconds
                )

    async def _give_way(self) -> None:
        """Pause DELIVERY_YIELD_SECONDS before the next claim (or until the worker stops): called
        when a claim's jobs are done while the API in this process serves BUSY_REQUESTS or more.

        The worker shares the API's event loop (and its CPU core). Under an intake burst it
        claimed and sent jobs as fast as its group commits came round, taking up to a fifth of
        the process from the webhooks that queued them; a webhook not answered in 15 s is sent
        again by LoopMessage, while a Call Loop add can wait a few seconds. Measured under the
        benchmark's burst (paired runs): jobs sent per webhook received 0.28 -> 0.07-0.11
        (~250-450 jobs a second still) and webhooks a second +16 % on SQLite; on PostgreSQL
        0.28 -> 0.14 and within the noise. Pausing only until no request was in flight did not
        hold: between two rounds of answers a busy API often has none (0.24 jobs a webhook).
        The backlog goes at full speed once the API is quieter.
        """
        seconds = self.settings.delivery_yield_seconds
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        if self.writer is not None:
            return await self.writer.run(work)
        async with self.engine.begin() as conn:
            return await work(conn)

    async def run_once(self) -> int:
        """Claim one batch of due jobs and run them concurrently; returns how many ran.

        Jobs whose lease ran out (their worker died) are looked for by the first claim and then
        at most every EXPIRED_LOOK_SECONDS (or lease, if shorter): a busy worker claims hundreds
        of times a second, and that query was a third of each claim's work for nothing."""
        now = asyncio.get_running_loop().time()
        look_every = min(EXPIRED_LOOK_SECONDS, self.settings.delivery_lease_seconds)
        expired_too = now - self._expired_looked_at >= look_every
        if expired_too:
            self._expired_looked_at = now
        claimed = await self._write(
            lambda conn: outbox.claim(
                conn,
                self.worker_id,
                self.settings.delivery_concurrency,
                self.settings.delivery_lease_seconds,
                expired_too=expired_too,
            )
        )
        if claimed:
            await asyncio.gather(*(self._run_job(job) for job in claimed))
        return len(claimed)

    async def _run_job(self, job: outbox.ClaimedJob) -> None:
        try:
            status_code = await self._perform(job)
        except JobFailed as failure:
            await self._record_failure(job, failure)
            return
        except Exception as exc:  # a bug must not strand the job: it is retried like a fault
            log.exception("delivery job crashed", extra={"job_id": job.id})
            await self._record_failure(
                job, JobFailed(f"internal error: {type(exc).__name__}", transient=True)
            )
            return
        if self.writer is not None:  # recorded together with the jobs finishing alongside
            kept = await self.writer.run_batched(
                outbox.mark_done_many, (job, self.worker_id, status_code)
            )
        else:
            kept = await self._write(
                lambda conn: outbox.mark_done(conn, job, self.worker_id, status_code)
            )
        DELIVERIES.labels(job.kind, "done").inc()
        if not kept:
            log.warning("lease lost before the job was recorded done", extra={"job_id": job.id})
        if job.kind == "subscribe" and job.follow_up_url:
            self.wake()
        log_info(log, "delivered", {"job_id": job.id, "kind": job.kind, "attempt": job.attempts})

    async def _perform(self, job: outbox.ClaimedJob) -> int | None:
        if job.kind in ("subscribe", "opt_out", "trigger"):
            if not job.target_url:
                raise JobFailed("the job has no target URL", transient=False)
            variables = {str(k): str(v) for k, v in job.payload.items()}
            try:
                result = await self.callloop.send(job.target_url, variables)
            except CallLoopError as exc:
                raise JobFailed(
                    exc.reason, transient=exc.transient, status_code=exc.status_code
                ) from None
            return result.status_code
        if job.kind == "audience_delete":
            if self.loopmessage is None:
                raise JobFailed("LOOP_API_KEY is not set", transient=True)
            try:
                await self.loopmessage.delete_audience(str(job.payload.get("contact", "")))
            except LoopMessageError as exc:
                raise JobFailed(
                    exc.detail, transient=exc.transient, status_code=exc.status_code
                ) from None
            return 200
        raise JobFailed(f"unknown job kind {job.kind!r}", transient=False)

    async def _record_failure(self, job: outbox.ClaimedJob, failure: JobFailed) -> None:
        retry_in: float | None = None
        if failure.transient and job.attempts < self.settings.delivery_max_attempts:
            retry_in = retry_delay(
                job.attempts,
                self.settings.delivery_backoff_base_seconds,
                self.settings.delivery_backoff_max_seconds,
            )
        reason = failure.reason
        if job.target_url:
            reason = hide_url_secrets(reason, job.target_url)
        status = await self._write(
            lambda conn: outbox.mark_failed(
                conn,
                job,
                self.worker_id,
                reason=reason,
                status_code=failure.status_code,
                retry_in=retry_in,
            )
        )
        DELIVERIES.labels(job.kind, {"pending": "retry"}.get(status, status)).inc()
        log.warning(
            "delivery failed",
            extra={
                "job_id": job.id,
                "kind": job.kind,
                "attempt": job.attempts,
                "outcome": status,
                "reason": reason,
            },
        )

    async def _listen(self) -> None:
        """LISTEN for the intake's NOTIFY so new jobs start at once, also in a standalone worker.
        Without the connection the worker still polls every DELIVERY_POLL_INTERVAL_SECONDS."""
        dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stopping.is_set():
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(dsn, timeout=10)
                await connection.add_listener(JOBS_CHANNEL, lambda *_args: self.wake())
                self.listening = True
                self.wake()  # catch up on anything committed while nobody listened
                while not self._stopping.is_set() and not connection.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), HEARTBEAT_SECONDS)
            except Exception as exc:
                log.warning(
                    "LISTEN connection unavailable; polling only",
                    extra={"error": type(exc).__name__},
                )
            finally:
                self.listening = False
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEARTBEAT_SECONDS)

    async def _heartbeat(self) -> None:
        started = utcnow()
        while not self._stopping.is_set():
            try:
                now = utcnow()
                async with self.engine.begin() as conn:
                    inserted = await conn.execute(
                        insert_ignore(conn.dialect.name, heartbeats, "worker_id")
                        .values(worker_id=self.worker_id, last_seen_at=now, started_at=started)
                        .returning(heartbeats.c.worker_id)
                    )
                    if inserted.first() is None:
                        await conn.execute(
                            update(heartbeats)
                            .where(heartbeats.c.worker_id == self.worker_id)
                            .values(last_seen_at=now)
                        )
                    stats = await outbox.queue_stats(conn)
                set_queue_gauges(stats)
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEARTBEAT_SECONDS)
