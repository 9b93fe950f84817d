"""POST /v1/opt-in-links answered straight from ASGI (see app/fastpath.py).

Every landing-page visit calls it. A well-formed request (a JSON body within the limit that
the request model accepts) is answered here, through the same `create_link` as the FastAPI
route, with CORS applied by Starlette's middleware configured as the app's. Anything else is
handed, body and all, to the FastAPI route, whose answers (415, 413, 422 with the field errors)
stay the single definition of a refusal.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServiceError, error_body
from app.fastpath import (
    BodyTooLarge,
    ClientGone,
    documented_route,
    read_body,
    replaying,
    request_headers,
    send_json,
    send_json_bytes,
)
from app.links.routes import visitor_of
from app.links.schemas import OptInLinkRequest
from app.links.service import create_link
from app.requestlimits import MAX_BODY_BYTES, is_json

LINKS_PATH = "/v1/opt-in-links"


class LinkEndpoint:
    def __init__(self, app: ASGIApp, cors_options: dict[str, Any]) -> None:
        self.app = app  # the FastAPI app's stack: answers what this endpoint does not
        self._answer_with_cors = CORSMiddleware(self._answer, **cors_options)
        self._route: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope, b"content-type", b"content-length")
        content_type = headers.get(b"content-type")
        length = headers.get(b"content-length")
        if (
            content_type is None
            or not is_json(content_type)
            or length is None
            or not length.isdigit()
            or int(length) > MAX_BODY_BYTES
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, MAX_BODY_BYTES)
        except ClientGone:
            return
        except BodyTooLarge:  # more than announced (servers stop that first): refused alike
            detail = f"the body is over {MAX_BODY_BYTES} bytes"
            await send_json(send, 413, error_body("payload_too_large", detail))
            return
        try:
            payload = OptInLinkRequest.model_validate_json(body)
        except ValidationError:
            await self.app(scope, replaying(body, receive), send)
            return
        if self._route is None:
            self._route = documented_route(scope["app"], "POST", LINKS_PATH)
        scope["route"] = self._route
        scope["optin.link_request"] = payload  # for _answer, behind the CORS middleware
        await self._answer_with_cors(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = scope["app"].state.services
        payload: OptInLinkRequest = scope.pop("optin.link_request")
        visitor = visitor_of(Request(scope), services)
        try:
            await services.rate_limiter.check(visitor.ip or "unknown")
            links = await create_link(services, payload, visitor)
        except ServiceError as exc:
            await send_json(send, exc.status_code, error_body(exc.code, exc.detail), exc.headers)
            return
        await send_json_bytes(send, 200, links.model_dump_json().encode())
