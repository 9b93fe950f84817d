"""Tables. The models here and the alembic migrations are the one source of the schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow

# BIGINT on PostgreSQL, INTEGER (the rowid alias, so it autoincrements) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = UTCDateTime()


class Attribution:
    """The marketing attribution a landing page passes through the link to the webhook."""

    click_id: Mapped[str | None] = mapped_column(String(500), index=True)
    utm_source: Mapped[str | None] = mapped_column(String(500))
    utm_medium: Mapped[str | None] = mapped_column(String(500))
    utm_campaign: Mapped[str | None] = mapped_column(String(500), index=True)
    utm_term: Mapped[str | None] = mapped_column(String(500))
    utm_content: Mapped[str | None] = mapped_column(String(500))


class LinkRequest(Attribution, Base):
    """One call to LoopMessage generate-url, with the consent evidence of the visitor."""

    __tablename__ = "link_requests"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ref: Mapped[str] = mapped_column(String(40), unique=True)  # sent upstream as `optin_ref`
    loop_link_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Consent evidence: the exact text offered, where, to whom, when (created_at).
    consent_text: Mapped[str] = mapped_column(Text)
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(1000))
    page_url: Mapped[str | None] = mapped_column(String(2000))
    recommended: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16), default="api")  # api | redirect


class Subscriber(Base):
    """A contact (phone number or iMessage email), once."""

    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    contact: Mapped[str | None] = mapped_column(String(320), unique=True)  # NULL once erased
    status: Mapped[str] = mapped_column(String(16), default="active")  # active|opted_out|erased
    first_opt_in_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    last_opt_in_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    opted_out_at: Mapped[datetime | None] = mapped_column(Timestamp)
    opt_out_source: Mapped[str | None] = mapped_column(String(32))  # stop_keyword | admin
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class OptIn(Attribution, Base):
    """A completed opt-in as LoopMessage reported it: one row per webhook_id."""

    __tablename__ = "opt_ins"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(200), unique=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    link_request_id: Mapped[int | None] = mapped_column(
        ForeignKey("link_requests.id", ondelete="SET NULL"), index=True
    )
    consent_evidence: Mapped[str] = mapped_column(String(16))  # link_request | webhook_only
    contact: Mapped[str | None] = mapped_column(String(320), index=True)
    event: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(200))
    organization_id: Mapped[str | None] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    language_code: Mapped[str | None] = mapped_column(String(32))
    language_name: Mapped[str | None] = mapped_column(String(100))
    route_key: Mapped[str | None] = mapped_column(String(200))
    raw_payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    erased_at: Mapped[datetime | None] = mapped_column(Timestamp)


class WebhookEvent(Base):
    """Every other webhook (not an opt-in), deduplicated by webhook_id."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(200), unique=True)
    event: Mapped[str] = mapped_column(String(64))
    type: Mapped[str | None] = mapped_column(String(64))
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL")
    )
    action: Mapped[str] = mapped_column(String(32))  # recorded | opted_out
    received_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class GroupMembership(Base):
    """A subscriber in one Call Loop group, so an opt-out reaches every group exactly once."""

    __tablename__ = "group_memberships"
    __table_args__ = (UniqueConstraint("subscriber_id", "group_hash"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    group_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the group URL
    group_url: Mapped[str] = mapped_column(String(2000))  # secret: never shown
    route_key: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | opted_out
    joined_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    left_at: Mapped[datetime | None] = mapped_column(Timestamp)


class DeliveryJob(Base):
    """The outbox: every side effect on a third party, retried until done or dead."""

    __tablename__ = "delivery_jobs"
    __table_args__ = (Index("ix_delivery_jobs_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # subscribe|opt_out|trigger|audience_delete
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    opt_in_id: Mapped[int | None] = mapped_column(
        ForeignKey("opt_ins.id", ondelete="SET NULL"), index=True
    )
    route_key: Mapped[str | None] = mapped_column(String(200))
    # Resolved when the job was made and kept: a later config change never redirects it.
    target_url: Mapped[str | None] = mapped_column(String(2000))  # secret: never shown
    follow_up_url: Mapped[str | None] = mapped_column(String(2000))  # trigger after subscribe
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # pending | in_progress | done | dead | skipped | cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_error: Mapped[str | None] = mapped_column(String(1000))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(Timestamp)


class WorkerHeartbeat(Base):
    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_seen_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    started_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Erasure(Base):
    """The anonymous trace an erase request leaves: that it happened, when, and how much."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(Id)
    erased_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    opt_ins_erased: Mapped[int] = mapped_column(Integer, default=0)
    requested_by: Mapped[str] = mapped_column(String(32), default="admin")
