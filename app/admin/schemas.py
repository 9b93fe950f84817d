"""Response shapes of the admin API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel


class Consent(BaseModel):
    evidence: str  # link_request | webhook_only
    time: datetime | None
    ip: str | None
    user_agent: str | None
    page_url: str | None
    text: str | None
    link_ref: str | None
    message_id: str | None
    webhook_received_at: datetime


class Delivery(BaseModel):
    id: int
    kind: str
    status: str
    route_key: str | None
    target: str | None  # masked
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    last_status_code: int | None
    subscriber_id: int | None
    opt_in_id: int | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class OptInRecord(BaseModel):
    id: int
    webhook_id: str
    contact: str | None
    event: str
    message_id: str | None
    organization_id: str | None
    click_id: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    params: dict[str, Any] | None
    language_code: str | None
    language_name: str | None
    route_key: str | None
    consent_evidence: str
    link_request_id: int | None
    subscriber_id: int | None
    received_at: datetime
    erased_at: datetime | None
    consent: Consent


class OptInDetail(OptInRecord):
    deliveries: list[Delivery]


class OptInPage(BaseModel):
    items: list[OptInRecord]
    total: int
    next_cursor: str | None


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None


class RetryResult(BaseModel):
    retried: int


class OptOutResult(BaseModel):
    contact: str
    status: str
    opt_out_jobs: int


class ErasureResponse(BaseModel):
    status: str
    opt_ins_erased: int
    opt_out_jobs: int


class CampaignStats(BaseModel):
    utm_campaign: str | None
    utm_source: str | None
    utm_medium: str | None
    link_requests: int
    opt_ins: int
    conversion_rate: float | None  # opt_ins / link_requests; null without link requests
    delivered: int
    pending: int
    dead: int
    opted_out: int


class StatsTotals(BaseModel):
    link_requests: int
    opt_ins: int
    conversion_rate: float | None
    delivered: int
    pending: int
    dead: int
    opted_out: int


class DayCount(BaseModel):
    day: date
    opt_ins: int


class Stats(BaseModel):
    since: datetime
    until: datetime
    items: list[CampaignStats]
    totals: StatsTotals
    opt_ins_per_day: list[DayCount]
