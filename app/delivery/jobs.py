"""Creating outbox jobs, always inside the caller's transaction (the transactional outbox)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.clients.callloop import opt_out_url
from app.db import BulkInsert, insert_ignore_returning, table_of
from app.delivery.routing import group_hash
from app.models import DeliveryJob, GroupMembership
from app.phones import NotAPhoneNumber, format_phone
from app.settings import CallLoopRoute, Settings

jobs = table_of(DeliveryJob)
memberships = table_of(GroupMembership)

CONTACT_FIELDS = ("first", "last", "email")
# Jobs that tell a third party to forget or unsubscribe a contact.
UNSUBSCRIBE_KINDS = ("opt_out", "audience_delete")
INSERT_JOB = insert(jobs)  # executed with a dict of values (built once: the intake's hot path)
# The rows plan_subscribe builds, inserted many at once by the bulk intake.
BULK_INSERT_JOBS = BulkInsert(
    jobs,
    (
        "kind",
        "subscriber_id",
        "opt_in_id",
        "created_at",
        "updated_at",
        "next_attempt_at",
        "attempts",
        "route_key",
        "target_url",
        "follow_up_url",
        "lease_owner",
        "lease_expires_at",
        "status",
        "payload",
        "completed_at",
        "last_error",
    ),
)
BULK_INSERT_MEMBERSHIPS = BulkInsert(
    memberships,
    ("subscriber_id", "group_hash", "group_url", "route_key", "status", "joined_at"),
)

# PostgreSQL channel a standalone worker LISTENs on. A trigger on delivery_jobs (migration
# 0002) NOTIFYs it for every insert, delivered once the transaction that queued the jobs commits.
JOBS_CHANNEL = "optin_delivery_jobs"


def callloop_variables(
    settings: Settings, contact: str, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """`phone` (formatted per CALLLOOP_PHONE_FORMAT) and `first`/`last`/`email` when known."""
    variables = {
        "phone": format_phone(
            contact, settings.phone_default_region, settings.callloop_phone_format
        )
    }
    for name in CONTACT_FIELDS:
        value = (extra or {}).get(name)
        if isinstance(value, str) and value.strip():
            variables[name] = value.strip()[:200]
    return variables


@dataclass(frozen=True)
class PlannedAdd:
    """What an opt-in queues: the job row, and the membership row when there is a group."""

    job: dict[str, Any]
    membership: dict[str, Any] | None


def plan_subscribe(
    settings: Settings,
    *,
    subscriber_id: int,
    opt_in_id: int,
    contact: str,
    params: dict[str, Any],
    route: CallLoopRoute | None,
    now: datetime,
) -> PlannedAdd:
    """The rows for this opt-in's Call Loop group add: a pending job and its membership, or a
    `skipped` job (reason kept) when there is no group or the contact is not a phone number."""
    base: dict[str, Any] = {
        "kind": "subscribe",
        "subscriber_id": subscriber_id,
        "opt_in_id": opt_in_id,
        "created_at": now,
        "updated_at": now,
        "next_attempt_at": now,
        "attempts": 0,
        "route_key": route.key if route else None,
        "target_url": None,
        "follow_up_url": None,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    skipped = {**base, "status": "skipped", "payload": {}, "completed_at": now}
    if route is None:
        reason = "no Call Loop route: no matching CALLLOOP_ROUTES entry and no CALLLOOP_GROUP_URL"
        return PlannedAdd({**skipped, "last_error": reason}, None)
    try:
        variables = callloop_variables(settings, contact, params)
    except NotAPhoneNumber as exc:
        return PlannedAdd({**skipped, "last_error": str(exc)}, None)
    job = {
        **base,
        "target_url": route.group_url,
        "follow_up_url": route.trigger_url,
        "payload": variables,
        "status": "pending",
        "completed_at": None,
        "last_error": None,
    }
    membership = {
        "subscriber_id": subscriber_id,
        "group_hash": group_hash(route.group_url),
        "group_url": route.group_url,
        "route_key": route.key,
        "status": "active",
        "joined_at": now,
    }
    return PlannedAdd(job, membership)


async def enqueue_subscribe(conn: AsyncConnection, planned: PlannedAdd, now: datetime) -> str:
    """Queue the group add `plan_subscribe` planned for this opt-in, unless it would be a
    second add for a contact already in that group.

    Returns what happened: `queued`, `already_member`, or `skipped` (reason kept on a job row).
    """
    membership = planned.membership
    if membership is None:
        await conn.execute(INSERT_JOB, planned.job)
        return "skipped"
    joined = await conn.execute(
        insert_ignore_returning(conn.dialect.name, memberships, ("subscriber_id", "group_hash")),
        membership,
    )
    if joined.first() is None:
        subscriber_id, group_url = membership["subscriber_id"], membership["group_url"]
        rejoined = await conn.execute(
            update(memberships)
            .where(
                memberships.c.subscriber_id == subscriber_id,
                memberships.c.group_hash == membership["group_hash"],
                memberships.c.status == "opted_out",
            )
            .values(status="active", joined_at=now, left_at=None, group_url=group_url)
            .returning(memberships.c.id)
        )
        if rejoined.first() is None:
            return "already_member"
        await cancel_unsent_opt_out(conn, subscriber_id, group_url, now)
    await conn.execute(INSERT_JOB, planned.job)
    return "queued"


async def cancel_unsent_opt_out(
    conn: AsyncConnection, subscriber_id: int, group_url: str, now: datetime
) -> None:
    """A re-opt-in supersedes an opt-out from that group not sent yet: drop the `/s/` so it
    cannot reach Call Loop after (or together with) the new add and undo it."""
    await conn.execute(
        update(jobs)
        .where(
            jobs.c.subscriber_id == subscriber_id,
            jobs.c.kind == "opt_out",
            jobs.c.status == "pending",
            jobs.c.target_url == opt_out_url(group_url),
        )
        .values(status="cancelled", last_error="the contact opted in again first", updated_at=now)
    )


async def enqueue_opt_outs(
    conn: AsyncConnection,
    settings: Settings,
    *,
    subscriber_id: int,
    contact: str,
    now: datetime,
) -> int:
    """Queue one `/s/` call per group the subscriber is in, and cancel adds not yet sent.

    Returns how many opt-out jobs were queued. Exactly once per group: the membership row
    flips from active to opted_out in this same statement, so a second STOP finds nothing.
    """
    await conn.execute(
        update(jobs)
        .where(
            jobs.c.subscriber_id == subscriber_id,
            jobs.c.kind.in_(("subscribe", "trigger")),
            jobs.c.status == "pending",
        )
        .values(status="cancelled", last_error="the contact opted out first", updated_at=now)
    )
    left = await conn.execute(
        update(memberships)
        .where(memberships.c.subscriber_id == subscriber_id, memberships.c.status == "active")
        .values(status="opted_out", left_at=now)
        .returning(memberships.c.group_url, memberships.c.route_key)
    )
    rows = left.all()
    if not rows:
        return 0
    try:
        variables = {
            "phone": format_phone(
                contact, settings.phone_default_region, settings.callloop_phone_format
            )
        }
    except NotAPhoneNumber:
        return 0
    await conn.execute(
        insert(jobs),
        [
            {
                "kind": "opt_out",
                "subscriber_id": subscriber_id,
                "route_key": row.route_key,
                "target_url": opt_out_url(row.group_url),
                "payload": variables,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for row in rows
        ],
    )
    return len(rows)


async def enqueue_audience_delete(
    conn: AsyncConnection, *, subscriber_id: int, contact: str, now: datetime
) -> None:
    """Queue LoopMessage's audience delete (the contact is unsubscribed there too)."""
    await conn.execute(
        insert(jobs).values(
            kind="audience_delete",
            subscriber_id=subscriber_id,
            payload={"contact": contact},
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )
