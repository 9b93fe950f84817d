"""The service's front door: the two busiest routes answered straight from ASGI.

The webhook (every opt-in) and the link endpoint (every landing-page visit) spent most of a
request in the layers between the server and the route: FastAPI's error and telemetry
middleware, body limits, routing, dependency solving, request and response objects. The app
(main.py) puts `HttpMiddleware` outermost, then `FrontDoor`: a request for one of the hot
routes goes to its endpoint (app/webhooks/endpoint.py, app/links/endpoint.py); every other
request goes through FastAPI as before. Request ids, security headers, metrics and the access
log are the same for both. The FastAPI routes stay: they document the endpoints in OpenAPI,
and the link endpoint hands them every request it does not answer itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.jsontext import compact_bytes


class ClientGone(Exception):
    """The client disconnected before its body was read."""


class BodyTooLarge(Exception):
    pass


class _Route:
    def __init__(self, path: str) -> None:
        self.path = path


def documented_route(app: Any, method: str, path: str) -> Any:
    """The app's own route for `method path`, as FastAPI's routing would put it in the scope
    (metrics label requests by its `path`); a stand-in if the app has none."""
    for route in getattr(getattr(app, "router", None), "routes", []):
        if getattr(route, "path", None) == path and method in getattr(route, "methods", ()):
            return route
    return _Route(path)


def request_headers(scope: Scope, *names: bytes) -> dict[bytes, str]:
    """The first value of each of `names` (lower-case) that the request carries."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in names and name not in found:
            found[name] = value.decode("latin-1")
    return found


async def read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            return bytes(body)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` first, then whatever the client sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


RawHeaders = Sequence[tuple[bytes, bytes]]


async def send_json_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    raw: RawHeaders = (),
) -> None:
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *raw,
    ]
    raw_headers += [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send,
    status: int,
    content: Any,
    headers: dict[str, str] | None = None,
    raw: RawHeaders = (),
) -> None:
    body = compact_bytes(content)
    await send_json_bytes(send, status, body, headers, raw)


class FrontDoor:
    """Sends each request for a hot route (method, path) to its endpoint, the rest to `app`."""

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], ASGIApp]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.routes.get((scope["method"], scope["path"]))
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)
