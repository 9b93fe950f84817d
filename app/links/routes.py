"""Public, CORS-enabled link endpoints: thin HTTP over links.service."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.clientip import client_ip
from app.deps import ServicesDep
from app.links.schemas import OptInLinkRequest, OptInLinks
from app.links.service import Visitor, create_link

router = APIRouter(tags=["links"])

ERRORS: dict[int | str, dict[str, str]] = {
    413: {"description": "Body over 16 KB"},
    415: {"description": "Body not sent as application/json"},
    422: {"description": "Invalid body (e.g. no [opt-in-code], a field too long)"},
    429: {"description": "Over the per-IP rate limit; see Retry-After"},
    502: {"description": "LoopMessage refused or failed the request"},
    503: {"description": "LoopMessage unreachable or rate limiting, or LOOP_API_KEY unset"},
    504: {"description": "LoopMessage did not answer in time"},
}


def visitor_of(request: Request, services: ServicesDep, page_url: str | None = None) -> Visitor:
    return Visitor(
        ip=client_ip(request, services.settings.trusted_proxies),
        user_agent=request.headers.get("user-agent"),
        page_url=page_url or request.headers.get("referer") or request.headers.get("origin"),
    )


@router.post("/v1/opt-in-links", response_model=OptInLinks, responses=ERRORS)
async def post_opt_in_link(
    payload: OptInLinkRequest, request: Request, services: ServicesDep
) -> OptInLinks:
    """Create a LoopMessage opt-in link for this visitor, with click_id and UTM attached."""
    visitor = visitor_of(request, services)
    await services.rate_limiter.check(visitor.ip or "unknown")
    return await create_link(services, payload, visitor)
