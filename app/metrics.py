"""GET /metrics: Prometheus exposition, behind a bearer token (METRICS_TOKEN or ADMIN_TOKEN).

The service has one port, and it is public (landing pages call it), so metrics are not left
open on it: route labels, queue sizes and traffic volumes are for the operators only.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from app.delivery import outbox
from app.deps import ServicesDep, check_bearer
from app.errors import ServiceError, not_configured
from app.observability import set_queue_gauges

router = APIRouter(tags=["ops"])
log = logging.getLogger("optin.metrics")


def require_metrics_token(request: Request, services: ServicesDep) -> None:
    settings = services.settings
    tokens = [token for token in (settings.metrics_token, settings.admin_token) if token]
    if not tokens:
        raise not_configured("METRICS_TOKEN", "The metrics endpoint")
    header = request.headers.get("authorization")
    if not any(check_bearer(header, token.get_secret_value()) for token in tokens):
        raise ServiceError(
            401,
            "unauthorized",
            "a valid metrics (or admin) bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        401: {"description": "Missing or wrong bearer token"},
        503: {"description": "Neither METRICS_TOKEN nor ADMIN_TOKEN is set"},
    },
)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus metrics; the delivery-queue gauges are read from the database on each scrape,
    so they are right whichever process runs the worker."""
    require_metrics_token(request, services)
    try:
        async with services.engine.connect() as conn:
            set_queue_gauges(await outbox.queue_stats(conn))
    except Exception as exc:  # the scrape still answers; the queue gauges keep their last value
        log.warning("queue gauges not refreshed", extra={"error": type(exc).__name__})
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
