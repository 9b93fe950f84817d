"""Admin JSON API (bearer ADMIN_TOKEN): thin routes over admin.queries and the domain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from app.admin import queries
from app.admin.schemas import DeliveryPage, OptInDetail, OptInPage, OptOutResult, RetryResult
from app.db import utcnow
from app.delivery import outbox
from app.deps import AdminDep, ServicesDep
from app.errors import ServiceError
from app.links.schemas import NO_NUL
from app.subscribers.service import opt_out

router = APIRouter(
    prefix="/v1",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={
        401: {"description": "Missing or wrong bearer token"},
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


@router.get("/opt-ins", response_model=OptInPage)
async def get_opt_ins(
    services: ServicesDep,
    click_id: ShortText = None,
    contact: ShortText = None,
    utm_campaign: ShortText = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, object]:
    """Completed opt-ins, newest first, with their consent evidence; cursor paging."""
    filters = queries.OptInFilters(click_id, contact, utm_campaign, since, until)
    async with services.engine.connect() as conn:
        items, total, next_id = await queries.list_opt_ins(conn, filters, limit, _cursor(cursor))
    return {"items": items, "total": total, "next_cursor": str(next_id) if next_id else None}


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
        raise ServiceError(409, "not_dead", f"job {job_id} does not exist or is not dead")
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
    normalised = contact.strip().lower() if "@" in contact else contact.strip()
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
