"""Claiming, finishing and retrying outbox jobs.

A claim is a lease: `in_progress` with an owner and an expiry. Several workers on one
PostgreSQL never take the same job (SKIP LOCKED), and a job whose worker died is taken again
once its lease expires (DELIVERY_LEASE_SECONDS, at most 60). Every state change after a claim
checks the lease is still ours, so a worker that lost its lease cannot overwrite the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Integer,
    and_,
    bindparam,
    case,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter

from app.db import NotViaIndex, table_of, utcnow
from app.delivery.jobs import UNSUBSCRIBE_KINDS
from app.models import DeliveryJob, Subscriber

jobs = table_of(DeliveryJob)
subscribers = table_of(Subscriber)


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    target_url: str | None
    follow_up_url: str | None
    payload: dict[str, Any]
    attempts: int
    subscriber_id: int | None
    route_key: str | None


ADD_KINDS = ("subscribe", "trigger")
_other = jobs.alias("other_job")
# An add (or its welcome trigger) of the same subscriber is being sent right now.
_ADD_IN_FLIGHT = (
    select(_other.c.id)
    .where(
        _other.c.subscriber_id == jobs.c.subscriber_id,
        # Equalities, not IN: a literal IN list is expanded into the SQL at every execution
        # (~18 µs of a claim's ~100).
        or_(*(_other.c.kind == kind for kind in ADD_KINDS)),
        _other.c.status == "in_progress",
    )
    .exists()
)
# The subscriber opted out (or was erased) since the add was queued.
_NO_LONGER_SUBSCRIBED = (
    select(subscribers.c.id)
    .where(subscribers.c.id == jobs.c.subscriber_id, subscribers.c.status != "active")
    .exists()
)


def _pending_due(now: datetime | BindParameter[Any], status: Any = jobs.c.status) -> Any:
    return and_(status == "pending", jobs.c.next_attempt_at <= now)


def _lease_expired(now: datetime | BindParameter[Any], status: Any = jobs.c.status) -> Any:
    return and_(status == "in_progress", jobs.c.lease_expires_at < now)


# An opt-out waits while an add of its subscriber is in flight, so the `/s/` always reaches
# Call Loop after the add it undoes (whichever worker sends each).
_NOT_BEHIND_AN_ADD = or_(jobs.c.kind != "opt_out", not_(_ADD_IN_FLIGHT))


def _due(now: datetime | BindParameter[Any]) -> Any:
    """Re-checked on rows named by id (PostgreSQL's lease): their status must not steer the
    planner to the status index (see NotViaIndex)."""
    status = NotViaIndex(jobs.c.status)
    return and_(or_(_pending_due(now, status), _lease_expired(now, status)), _NOT_BEHIND_AN_ADD)


def _retry_status() -> Any:
    """`pending` again, except an add whose contact opted out meanwhile: that one is
    `cancelled` (the STOP cancelled the pending adds, but this one was in flight then)."""
    return case(
        (and_(jobs.c.kind.in_(ADD_KINDS), _NO_LONGER_SUBSCRIBED), "cancelled"),
        else_="pending",
    )


# The claim's statements, built once (the worker claims many times a second under load).
_NOW = bindparam("now", type_=jobs.c.next_attempt_at.type)
_DUE_IDS = tuple(  # the jobs a claim takes, in order: leases run out, then pending ones
    select(jobs.c.id)
    .where(ready, _NOT_BEHIND_AN_ADD)
    .order_by(order)
    .limit(bindparam("limit", type_=Integer))
    for ready, order in (
        (_lease_expired(_NOW), jobs.c.lease_expires_at),
        (_pending_due(_NOW), jobs.c.next_attempt_at),
    )
)
_LEASED = {
    "status": "in_progress",
    "lease_owner": bindparam("worker_id"),
    "lease_expires_at": bindparam("lease_expires_at", type_=jobs.c.lease_expires_at.type),
    "attempts": jobs.c.attempts + 1,
    "updated_at": _NOW,
}
_CLAIMED_COLUMNS = [jobs.c[field.name] for field in fields(ClaimedJob)]  # in the class's order
CLAIM_EXPIRED, CLAIM_PENDING = (ids.with_for_update(skip_locked=True) for ids in _DUE_IDS)
LEASE = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("ids", expanding=True)), _due(_NOW))
    .values(_LEASED)
    .returning(*_CLAIMED_COLUMNS)
)
# SQLite has one writer at a time: the due jobs are picked and leased by one statement.
LEASE_EXPIRED_AT_ONCE, LEASE_PENDING_AT_ONCE = (
    update(jobs)
    .where(jobs.c.id.in_(ids.scalar_subquery()))
    .values(_LEASED)
    .returning(*_CLAIMED_COLUMNS)
    for ids in _DUE_IDS
)


async def claim(
    conn: AsyncConnection,
    worker_id: str,
    limit: int,
    lease_seconds: float,
    *,
    expired_too: bool = True,
) -> list[ClaimedJob]:
    """Lease at most `limit` due jobs to `worker_id`: those whose lease ran out (when
    `expired_too`), then pending ones."""
    now = utcnow()
    lease_expires_at = now + timedelta(seconds=lease_seconds)
    if conn.dialect.name == "sqlite":
        # The transaction holds SQLite's write lock: nothing can take these rows in between,
        # so one statement picks and leases them (half the claim's work under load).
        claimed: list[ClaimedJob] = []
        leases = (LEASE_EXPIRED_AT_ONCE, LEASE_PENDING_AT_ONCE)
        for lease in leases if expired_too else leases[1:]:
            if len(claimed) >= limit:
                break
            leased = await conn.execute(
                lease,
                {
                    "now": now,
                    "limit": limit - len(claimed),
                    "worker_id": worker_id,
                    "lease_expires_at": lease_expires_at,
                },
            )
            claimed += [ClaimedJob(*row) for row in leased]
        return claimed
    # PostgreSQL: two statements in one transaction: lock at most `limit` due rows, then lease
    # exactly those. (An `UPDATE … WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` lets
    # PostgreSQL re-run the subquery and lease the whole queue to one worker.)
    # Jobs whose worker died first, then pending ones oldest due first. Two queries, each
    # read in index order (status, next_attempt_at) and stopped at `limit`: with one OR the
    # database sorts the whole due backlog on every claim.
    due_ids: list[int] = []
    for query in (CLAIM_EXPIRED, CLAIM_PENDING) if expired_too else (CLAIM_PENDING,):
        if len(due_ids) >= limit:
            break
        due = await conn.execute(query, {"now": now, "limit": limit - len(due_ids)})
        due_ids += [row[0] for row in due]
    if not due_ids:
        return []
    result = await conn.execute(
        LEASE,
        {
            "ids": due_ids,
            "now": now,
            "worker_id": worker_id,
            "lease_expires_at": lease_expires_at,
        },
    )
    return [ClaimedJob(*row) for row in result]


def _ours(job_id: int, worker_id: str) -> Any:
    return and_(
        jobs.c.id == job_id, jobs.c.status == "in_progress", jobs.c.lease_owner == worker_id
    )


# Built once (one per finished job, on the busy path): executed with bound values.
_DONE: dict[str, Any] = {
    "status": "done",
    "lease_owner": None,
    "lease_expires_at": None,
    "last_status_code": bindparam("status_code"),
    "last_error": None,
    "completed_at": bindparam("now", type_=jobs.c.completed_at.type),
    "updated_at": bindparam("now", type_=jobs.c.updated_at.type),
}
# Checked on rows named by id (see NotViaIndex).
_HELD_BY_WORKER = and_(
    NotViaIndex(jobs.c.status) == "in_progress", jobs.c.lease_owner == bindparam("worker_id")
)
MARK_DONE = update(jobs).where(jobs.c.id == bindparam("job_id"), _HELD_BY_WORKER).values(_DONE)
# Several jobs of one worker with one status code; answers the ids it recorded.
MARK_MANY_DONE = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("job_ids", expanding=True)), _HELD_BY_WORKER)
    .values(_DONE)
    .returning(jobs.c.id)
)


async def mark_done(
    conn: AsyncConnection, job: ClaimedJob, worker_id: str, status_code: int | None
) -> bool:
    now = utcnow()
    result = await conn.execute(
        MARK_DONE,
        {"job_id": job.id, "worker_id": worker_id, "status_code": status_code, "now": now},
    )
    if result.rowcount != 1:
        return False
    if job.kind in UNSUBSCRIBE_KINDS:
        # An erased contact's number was kept only until the third party had been told.
        erased = select(subscribers.c.id).where(subscribers.c.status == "erased")
        await conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id, jobs.c.subscriber_id.in_(erased))
            .values(payload={})
        )
    if job.kind == "subscribe" and job.follow_up_url and await _still_subscribed(conn, job):
        # The welcome trigger goes out only after the group add succeeded.
        await conn.execute(
            insert(jobs).values(
                kind="trigger",
                subscriber_id=job.subscriber_id,
                route_key=job.route_key,
                target_url=job.follow_up_url,
                payload=job.payload,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )
    return True


async def mark_done_many(
    conn: AsyncConnection, finished: list[tuple[ClaimedJob, str, int | None]]
) -> list[bool]:
    """`mark_done` for jobs that finished together, as (job, worker id, status code); one
    result per job, in order. Jobs with nothing to follow (the bulk of a backlog) are recorded
    with one UPDATE per worker and status code; the others one by one through `mark_done`."""
    kept: dict[int, bool] = {}
    plain: dict[tuple[str, int | None], list[int]] = {}
    for job, worker_id, status_code in finished:
        if job.kind in UNSUBSCRIBE_KINDS or (job.kind == "subscribe" and job.follow_up_url):
            kept[job.id] = await mark_done(conn, job, worker_id, status_code)
        else:
            plain.setdefault((worker_id, status_code), []).append(job.id)
    now = utcnow()
    for (worker_id, status_code), job_ids in plain.items():
        result = await conn.execute(
            MARK_MANY_DONE,
            {"job_ids": job_ids, "worker_id": worker_id, "status_code": status_code, "now": now},
        )
        done = {row[0] for row in result}
        kept.update({job_id: job_id in done for job_id in job_ids})
    return [kept[job.id] for job, _, _ in finished]


async def _still_subscribed(conn: AsyncConnection, job: ClaimedJob) -> bool:
    """No welcome text after a STOP that came while the add was in flight. On PostgreSQL the
    subscriber row is locked, so a concurrent STOP either comes first (and is seen here) or
    comes after this commit (and cancels the trigger queued here)."""
    query = select(subscribers.c.status).where(subscribers.c.id == job.subscriber_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await conn.execute(query)).scalar() == "active"


async def mark_failed(
    conn: AsyncConnection,
    job: ClaimedJob,
    worker_id: str,
    *,
    reason: str,
    status_code: int | None,
    retry_in: float | None,
) -> str:
    """Back to pending after `retry_in` seconds, or dead when `retry_in` is None."""
    now = utcnow()
    values: dict[str, Any] = {
        "lease_owner": None,
        "lease_expires_at": None,
        "last_error": reason[:1000],
        "last_status_code": status_code,
        "updated_at": now,
    }
    if retry_in is None:
        values.update(status="dead", completed_at=now)
    else:
        values.update(status=_retry_status(), next_attempt_at=now + timedelta(seconds=retry_in))
    result = await conn.execute(
        update(jobs).where(_ours(job.id, worker_id)).values(**values).returning(jobs.c.status)
    )
    status = result.scalar()
    if status is None:  # the lease was lost: the job is someone else's now
        return "dead" if retry_in is None else "pending"
    return str(status)


async def release(conn: AsyncConnection, worker_id: str) -> int:
    """Give back every job this worker holds (graceful shutdown): they run again at once."""
    now = utcnow()
    result = await conn.execute(
        update(jobs)
        .where(jobs.c.status == "in_progress", jobs.c.lease_owner == worker_id)
        .values(
            status=_retry_status(),
            lease_owner=None,
            lease_expires_at=None,
            next_attempt_at=now,
            attempts=case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
            updated_at=now,
        )
    )
    return int(result.rowcount or 0)


async def retry_jobs(conn: AsyncConnection, job_ids: list[int] | None = None) -> int:
    """Dead jobs (all, or the ones named) are pending again with a fresh attempt budget.

    A dead add of a contact who has opted out since is cancelled instead: a retry must not
    put them back on a list. Returns how many jobs are pending again."""
    now = utcnow()
    query = update(jobs).where(jobs.c.status == "dead")
    if job_ids is not None:
        query = query.where(jobs.c.id.in_(job_ids))
    await conn.execute(
        query.where(jobs.c.kind.in_(ADD_KINDS), _NO_LONGER_SUBSCRIBED).values(
            status="cancelled", last_error="the contact opted out", updated_at=now
        )
    )
    result = await conn.execute(
        query.values(
            status="pending",
            attempts=0,
            next_attempt_at=now,
            completed_at=None,
            updated_at=now,
        )
    )
    return int(result.rowcount or 0)


async def queue_stats(conn: AsyncConnection) -> dict[str, Any]:
    """Jobs by status (`counts`), by (kind, status) (`by_kind`), and the oldest pending age."""
    rows = await conn.execute(
        select(jobs.c.kind, jobs.c.status, func.count()).group_by(jobs.c.kind, jobs.c.status)
    )
    by_kind: dict[tuple[str, str], int] = {(kind, status): count for kind, status, count in rows}
    counts: dict[str, int] = {}
    for (_kind, status), count in by_kind.items():
        counts[status] = counts.get(status, 0) + count
    oldest = await conn.execute(
        select(func.min(jobs.c.created_at)).where(jobs.c.status.in_(("pending", "in_progress")))
    )
    oldest_at = oldest.scalar()
    if oldest_at is not None and oldest_at.tzinfo is None:
        from datetime import UTC

        oldest_at = oldest_at.replace(tzinfo=UTC)
    age = (utcnow() - oldest_at).total_seconds() if oldest_at else 0.0
    return {
        "counts": counts,
        "by_kind": by_kind,
        "oldest_pending_age_seconds": round(max(age, 0.0), 3),
    }
