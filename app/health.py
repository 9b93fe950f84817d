"""Liveness and readiness."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import utcnow
from app.deps import Services, ServicesDep
from app.models import WorkerHeartbeat

router = APIRouter(tags=["health"])

HEARTBEAT_STALE_SECONDS = 30


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and answering."""
    return {"status": "ok"}


async def database_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        row = await conn.execute(text("SELECT version_num FROM alembic_version"))
        return row.scalar()


async def readiness(services: Services) -> dict[str, Any]:
    """What /readyz reports: each check, and the reasons the service is not ready."""
    reasons: list[str] = []
    checks: dict[str, Any] = {}
    try:
        revision = await database_revision(services.engine)
        checks["database"] = "ok"
        at_head = revision == services.migration_head
        checks["migrations"] = (
            "ok" if at_head else f"at {revision}, head is {services.migration_head}"
        )
        if not at_head:
            reasons.append("database migrations are not at head: run `alembic upgrade head`")
    except Exception as exc:
        checks["database"] = f"unavailable ({type(exc).__name__})"
        reasons.append("database unreachable")
    missing = services.settings.missing()
    checks["missing_settings"] = missing
    if missing:
        reasons.append("settings missing: " + ", ".join(missing))
    if checks["database"] == "ok":
        try:
            async with services.engine.connect() as conn:
                last = (await conn.execute(select(func.max(WorkerHeartbeat.last_seen_at)))).scalar()
        except Exception:
            last = None
        fresh = last is not None and utcnow() - last < timedelta(seconds=HEARTBEAT_STALE_SECONDS)
        checks["worker_last_seen_at"] = last.isoformat() if last else None
        if services.settings.run_worker:
            checks["worker"] = "ok" if fresh else "no recent heartbeat"
            if not fresh:
                reasons.append("the delivery worker has no recent heartbeat")
        else:
            # RUN_WORKER=false: a standalone worker (another process) runs the outbox; its
            # heartbeat is shown but does not decide whether this API process takes traffic.
            checks["worker"] = "external: " + ("ok" if fresh else "no recent heartbeat")
    return {"status": "ready" if not reasons else "not_ready", "checks": checks, "reasons": reasons}


@router.get("/readyz", responses={503: {"description": "Not ready; `reasons` says why"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Database reachable, migrations at head, settings complete, worker heartbeat recent."""
    report = await readiness(services)
    return JSONResponse(report, status_code=200 if not report["reasons"] else 503)
