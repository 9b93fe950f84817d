"""POST /v1/webhooks/loopmessage answered straight from ASGI, in front of FastAPI's routing.

The webhook is the busiest write path, and most of a request's time went to the layers
between the server and the route (CORS, body limits, routing, dependency solving, responses),
none of which a server-to-server POST needs. This layer sits just inside `HttpMiddleware`, so
request ids, security headers, metrics and the access log are unchanged, and applies the same
415/413 rules as `RequestLimitMiddleware`. The FastAPI route (routes.py) stays for the
OpenAPI document and for an app built without this layer; both call `receive_webhook`.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServiceError, error_body
from app.requestlimits import is_json
from app.webhooks.routes import MAX_WEBHOOK_BYTES, receive_webhook

WEBHOOK_PATH = "/v1/webhooks/loopmessage"


class _Route:
    """Stands in for the route in `scope["route"]` (metrics label it by `path`) if the app
    has no FastAPI route for the webhook."""

    path = WEBHOOK_PATH


def _documented_route(app: Any) -> Any:
    """The app's own route for the webhook, as FastAPI's routing would have put in the scope."""
    for route in getattr(getattr(app, "router", None), "routes", []):
        if getattr(route, "path", None) == WEBHOOK_PATH and "POST" in getattr(route, "methods", ()):
            return route
    return _Route


class _ClientGone(Exception):
    pass


def _too_large() -> ServiceError:
    return ServiceError(413, "payload_too_large", f"the body is over {MAX_WEBHOOK_BYTES} bytes")


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        body += message.get("body", b"")
        if len(body) > MAX_WEBHOOK_BYTES:
            raise _too_large()
        if not message.get("more_body", False):
            return bytes(body)


async def _send_json(
    send: Send, status: int, content: Any, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class WebhookEndpoint:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != WEBHOOK_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self._route is None:
            self._route = _documented_route(scope["app"])
        scope["route"] = self._route
        content_type = length = authorization = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
            elif name == b"content-length" and length is None:
                length = value.decode("latin-1")
            elif name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"transfer-encoding":
                chunked = chunked or b"chunked" in value.lower()
        try:
            has_body = chunked or (length is not None and length.strip() not in ("", "0"))
            if has_body and content_type is not None and not is_json(content_type):
                raise ServiceError(
                    415, "unsupported_media_type", "send the body as application/json"
                )
            if length is not None and length.isdigit() and int(length) > MAX_WEBHOOK_BYTES:
                raise _too_large()
            services = scope["app"].state.services
            answer = await receive_webhook(services, authorization, lambda: _read_body(receive))
        except ServiceError as exc:
            await _send_json(send, exc.status_code, error_body(exc.code, exc.detail), exc.headers)
            return
        except _ClientGone:
            return
        await _send_json(send, 200, answer)
