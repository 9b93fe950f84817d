"""Public, CORS-enabled link endpoints: thin HTTP over links.service."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from app.clientip import client_ip
from app.deps import ServicesDep
from app.errors import ServiceError, error_page
from app.links.schemas import OptInLinkRequest, OptInLinks, request_from_query
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
) -> Response:
    """Create a LoopMessage opt-in link for this visitor, with click_id and UTM attached."""
    visitor = visitor_of(request, services)
    await services.rate_limiter.check(visitor.ip or "unknown")
    links = await create_link(services, payload, visitor)
    # Already an OptInLinks: serialized once here rather than validated again by FastAPI.
    return Response(links.model_dump_json(), media_type="application/json")


def _summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'query'}: {error['msg']}"
        for error in exc.errors()
    )


@router.get(
    "/v1/opt-in",
    status_code=302,
    response_class=RedirectResponse,
    responses={302: {"description": "Redirect to the link that fits the device"}, **ERRORS},
)
async def opt_in_redirect(request: Request, services: ServicesDep) -> Response:
    """The no-JS link: `?click_id=…&utm_campaign=…` answers 302 to the link for this device.

    Takes the POST's fields as query parameters (gclid, fbclid or ttclid stand in for click_id;
    other names become extra parameters). Errors are JSON, or a small HTML page when the client
    accepts text/html (a visitor's browser).
    """
    wants_html = "text/html" in request.headers.get("accept", "")
    try:
        try:
            payload = request_from_query(request.query_params.multi_items())
        except ValidationError as exc:
            if not wants_html:
                raise RequestValidationError(exc.errors(include_context=False)) from None
            raise ServiceError(422, "validation_error", _summary(exc)) from None
        visitor = visitor_of(request, services)
        await services.rate_limiter.check(visitor.ip or "unknown")
        links = await create_link(services, payload, visitor, channel="redirect")
        target = getattr(links, links.recommended)
        if not target:
            raise ServiceError(502, "upstream_error", "LoopMessage answered without any link")
    except ServiceError as exc:
        if wants_html:
            return error_page(exc)
        raise
    # Every visit makes a new link (its own ref): never cached, by the browser or a proxy.
    return RedirectResponse(target, status_code=302, headers={"Cache-Control": "no-store"})
