"""POST /v1/opt-in-links answered straight from ASGI (see app/fastpath.py).

Every landing-page visit calls it. A well-formed request (a JSON body within the limit that
the request model accepts) is answered here, through the same `create_link` as the FastAPI
route, with the CORS headers that Starlette's middleware, configured as the app's, gives a
response for the request's Origin (`CorsHeaders`). Anything else is handed, body and all, to the
FastAPI route, whose answers (415, 413, 422 with the field errors) stay the single definition of
a refusal.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.clientip import client_ip_of
from app.errors import ServiceError, error_body
from app.fastpath import (
    BodyTooLarge,
    ClientGone,
    RawHeaders,
    documented_route,
    read_body,
    replaying,
    request_headers,
    send_json,
    send_json_bytes,
)
from app.links.schemas import OptInLinkRequest
from app.links.service import Visitor, create_link
from app.requestlimits import MAX_BODY_BYTES, is_json

LINKS_PATH = "/v1/opt-in-links"
HEADERS_READ = (b"content-type", b"content-length", b"origin", b"user-agent", b"referer")


def forwarded_for(scope: Scope) -> str:
    """The request's (first) X-Forwarded-For, as Starlette's `request.headers` gives it."""
    return request_headers(scope, b"x-forwarded-for").get(b"x-forwarded-for", "")


class CorsHeaders:
    """The headers Starlette's CORSMiddleware, configured as the app's, adds to a simple
    (non-preflight) response, by the request's Origin: worked out by that middleware the first
    time an Origin is seen, then remembered (for at most MAX_ORIGINS of them: anyone can send
    any Origin). Wrapping every response in the middleware cost ~5 % of a link request's CPU;
    what it adds depends on nothing but the Origin (and the app's configuration)."""

    MAX_ORIGINS = 1024

    def __init__(self, cors_options: dict[str, Any]) -> None:
        self._middleware = CORSMiddleware(self._response, **cors_options)
        self._known: dict[str | None, RawHeaders] = {}

    async def for_origin(self, origin: str | None) -> RawHeaders:
        headers = self._known.get(origin)
        if headers is None:
            headers = await self._work_out(origin)
            if len(self._known) >= self.MAX_ORIGINS:
                self._known.clear()
            self._known[origin] = headers
        return headers

    @staticmethod
    async def _response(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def _work_out(self, origin: str | None) -> RawHeaders:
        started: list[Message] = []

        async def keep(message: Message) -> None:
            started.append(message)

        async def no_body() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        headers = [] if origin is None else [(b"origin", origin.encode("latin-1"))]
        scope = {"type": "http", "method": "POST", "path": LINKS_PATH, "headers": headers}
        await self._middleware(scope, no_body, keep)
        return tuple(started[0]["headers"])


class LinkEndpoint:
    def __init__(self, app: ASGIApp, cors_options: dict[str, Any]) -> None:
        self.app = app  # the FastAPI app's stack: answers what this endpoint does not
        self._cors = CorsHeaders(cors_options)
        self._route: Any = None

    def _visitor(
        self, scope: Scope, headers: dict[bytes, str], trusted_proxies: list[str]
    ) -> Visitor:
        """What `visitor_of` finds in a Starlette Request, from the headers read once."""
        client = scope.get("client")
        return Visitor(
            ip=client_ip_of(
                client[0] if client else None,
                lambda: forwarded_for(scope),
                tuple(trusted_proxies),
            ),
            user_agent=headers.get(b"user-agent"),
            page_url=headers.get(b"referer") or headers.get(b"origin"),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope, *HEADERS_READ)
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
        cors = await self._cors.for_origin(headers.get(b"origin"))
        try:
            body = await read_body(receive, MAX_BODY_BYTES)
        except ClientGone:
            return
        except BodyTooLarge:  # more than announced (servers stop that first): refused alike
            detail = f"the body is over {MAX_BODY_BYTES} bytes"
            await send_json(send, 413, error_body("payload_too_large", detail), raw=cors)
            return
        try:
            payload = OptInLinkRequest.model_validate_json(body)
        except ValidationError:
            await self.app(scope, replaying(body, receive), send)
            return
        if self._route is None:
            self._route = documented_route(scope["app"], "POST", LINKS_PATH)
        scope["route"] = self._route
        services = scope["app"].state.services
        visitor = self._visitor(scope, headers, services.settings.trusted_proxies)
        try:
            await services.rate_limiter.check(visitor.ip or "unknown")
            links = await create_link(services, payload, visitor)
        except ServiceError as exc:
            refusal = error_body(exc.code, exc.detail)
            await send_json(send, exc.status_code, refusal, exc.headers, raw=cors)
            return
        await send_json_bytes(send, 200, links.model_dump_json().encode(), raw=cors)
