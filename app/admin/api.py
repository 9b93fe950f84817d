"""Admin JSON API (bearer ADMIN_TOKEN): thin routes over admin.queries and the domain."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import StreamingResponse

from app.admin import queries
from app.admin.export import opt_ins_csv
from app.admin.schemas import (
    DeliveryPage,
    ErasureResponse,
    OptInDetail,
    OptInPage,
    OptOutResult,
    RetryResult,
    Stats,
)
from app.db import utcnow
from app.delivery import outbox
from app.deps import AdminDep, ServicesDep
from app.errors import ServiceError
from app.links.schemas import NO_NUL
from app.subscribers.service import erase_subscriber, opt_out
from app.webhooks.parse import normalise_contact

router = APIRouter(
    prefix="/v1",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={
        401: {"description": "Missing or wrong bearer token"},
        429: {"description": "Too many wrong tokens from this address; see Retry-After"},
        503: {"description": "ADMIN_TOKEN unset"},
    },
)

Cursor = Annotated[
    str | None, Query(pattern=r"^\d{1,18}$", description="next_cursor of the previous page")
]
Limit = Annotated[int, Query(ge=1, le=1000)]
ShortText = Annotated[str | None, Query(max_length=500, pattern=NO_NUL)]
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]  # a BIGINT: larger ids are simply not there
ContactPath = Annotated[str, Path(min_length=1, max_length=320, pattern=NO_NUL)]
DeliveryStatus = Literal["pending", "in_progress", "done", "dead", "skipped", "cancelled"]


def _cursor(value: str | None) -> int | None:
    return int(value) if value else None


def opt_in_filters(
    click_id: ShortText = None,
    contact: ShortText = None,
    utm_campaign: ShortText = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="received before (ISO 8601)")] = None,
) -> queries.OptInFilters:
    """The filters the opt-in list and the CSV export share."""
    return queries.OptInFilters(click_id, contact, utm_campaign, since, until)


OptInFiltersDep = Annotated[queries.OptInFilters, Depends(opt_in_filters)]


@router.get("/opt-ins", response_model=OptInPage)
async def get_opt_ins(
    services: ServicesDep,
    filters: OptInFiltersDep,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, object]:
    """Completed opt-ins, newest first, with their consent evidence; cursor paging."""
    async with services.engine.connect() as conn:
        items, total, next_id = await queries.list_opt_ins(conn, filters, limit, _cursor(cursor))
    return {"items": items, "total": total, "next_cursor": str(next_id) if next_id else None}


@router.get(
    "/opt-ins.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV, header row first"}},
)
async def export_opt_ins(services: ServicesDep, filters: OptInFiltersDep) -> StreamingResponse:
    """Every matching opt-in as CSV (same filters as the list, newest first), streamed in
    batches, with the consent columns: time, IP, user agent, page, text, evidence, message_id
    and webhook time."""
    return StreamingResponse(
        opt_ins_csv(services.engine, filters),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="opt-ins.csv"',
            "Cache-Control": "no-store",
        },
    )


@router.get(
    "/opt-ins/{opt_in_id}",
    response_model=OptInDetail,
    responses={404: {"description": "No such opt-in"}},
)
async def get_one_opt_in(opt_in_id: RowId, services: ServicesDep) -> dict[str, object]:
    """One opt-in with its consent block and the history of its deliveries."""
    async with services.engine.connect() as conn:
        record = await queries.get_opt_in(conn, opt_in_id)
    if record is None:
        raise ServiceError(404, "not_found", f"no opt-in {opt_in_id}")
    return record


MAX_STATS_DAYS = 366


def stats_window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """[since, until): the last 7 days by default, at most MAX_STATS_DAYS long."""
    until = until or utcnow()
    since = since or until - timedelta(days=7)
    if since.tzinfo is None or until.tzinfo is None:
        raise ServiceError(422, "validation_error", "since and until need a timezone (e.g. Z)")
    if since >= until:
        raise ServiceError(422, "validation_error", "since must be before until")
    if until - since > timedelta(days=MAX_STATS_DAYS):
        raise ServiceError(422, "validation_error", f"the window is at most {MAX_STATS_DAYS} days")
    return since, until


@router.get("/stats", response_model=Stats, responses={422: {"description": "Bad window"}})
async def get_stats(
    services: ServicesDep, since: datetime | None = None, until: datetime | None = None
) -> dict[str, object]:
    """Per campaign (utm_campaign, utm_source, utm_medium) over [since, until) (default: the
    last 7 days): link requests, completed opt-ins, conversion rate, and what became of the
    opt-ins in Call Loop; with totals and completed opt-ins per UTC day."""
    since, until = stats_window(since, until)
    async with services.engine.connect() as conn:
        result = await queries.funnel(conn, since, until)
    return {
        "since": since,
        "until": until,
        "items": [row.as_dict() for row in result.rows],
        "totals": result.totals.as_dict(),
        "opt_ins_per_day": [{"day": day, "opt_ins": n} for day, n in result.opt_ins_per_day],
    }


@router.get("/deliveries", response_model=DeliveryPage)
async def get_deliveries(
    services: ServicesDep,
    status: DeliveryStatus | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, object]:
    """Outbox jobs, newest first; target URLs are masked."""
    async with services.engine.connect() as conn:
        items, next_id = await queries.list_deliveries(conn, status, limit, _cursor(cursor))
    return {"items": items, "next_cursor": str(next_id) if next_id else None}


@router.post(
    "/deliveries/{job_id}/retry",
    response_model=RetryResult,
    responses={409: {"description": "The job is not dead"}},
)
async def retry_delivery(job_id: RowId, services: ServicesDep) -> RetryResult:
    """Give a dead job a fresh set of attempts."""
    async with services.engine.begin() as conn:
        retried = await outbox.retry_jobs(conn, [job_id])
    if not retried:
        raise ServiceError(
            409,
            "not_dead",
            f"job {job_id} does not exist or is not dead (a dead add of a contact who has "
            "opted out since is cancelled instead)",
        )
    services.wake_worker()
    return RetryResult(retried=retried)


@router.post("/deliveries/retry-dead", response_model=RetryResult)
async def retry_dead(services: ServicesDep) -> RetryResult:
    """Give every dead job a fresh set of attempts."""
    async with services.engine.begin() as conn:
        retried = await outbox.retry_jobs(conn)
    if retried:
        services.wake_worker()
    return RetryResult(retried=retried)


@router.post(
    "/subscribers/{contact}/opt-out",
    response_model=OptOutResult,
    responses={404: {"description": "Unknown contact"}},
)
async def opt_out_subscriber(contact: ContactPath, services: ServicesDep) -> OptOutResult:
    """Opt the contact out: Call Loop `/s/` for every group it is in, through the outbox
    (and LoopMessage's audience delete when LOOP_AUDIENCE_DELETE_ON_OPTOUT is true)."""
    normalised = normalise_contact(contact)
    settings = services.settings
    async with services.engine.begin() as conn:
        result = await opt_out(
            conn,
            settings,
            contact=normalised,
            source="admin",
            now=utcnow(),
            audience_delete=settings.loop_audience_delete_on_optout,
        )
    if result is None:
        raise ServiceError(404, "not_found", "no subscriber with that contact")
    services.wake_worker()
    return OptOutResult(contact=normalised, status="opted_out", opt_out_jobs=result[1])


@router.delete(
    "/subscribers/{contact}",
    response_model=ErasureResponse,
    responses={404: {"description": "Unknown contact (or already erased)"}},
)
async def erase(contact: ContactPath, services: ServicesDep) -> ErasureResponse:
    """Right to erasure: opt the contact out (Call Loop `/s/` through the outbox, and
    LoopMessage's audience delete when LOOP_AUDIENCE_DELETE_ON_OPTOUT is true), then remove
    its personal data. Anonymous counts and an `erasures` record stay."""
    async with services.engine.begin() as conn:
        result = await erase_subscriber(
            conn, services.settings, contact=normalise_contact(contact), now=utcnow()
        )
    if result is None:
        raise ServiceError(404, "not_found", "no subscriber with that contact")
    services.wake_worker()
    return ErasureResponse(
        status="erased", opt_ins_erased=result.opt_ins_erased, opt_out_jobs=result.opt_out_jobs
    )
