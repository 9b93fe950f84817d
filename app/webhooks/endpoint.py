"""POST /v1/webhooks/loopmessage answered straight from ASGI (see app/fastpath.py).

A server-to-server POST needs none of FastAPI's layers: this endpoint applies the same 415/413
rules as `RequestLimitMiddleware` and answers with the same JSON errors. The FastAPI route
(routes.py) stays for the OpenAPI document; both call `receive_webhook`.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Receive, Scope, Send

from app.errors import ServiceError, error_body
from app.fastpath import (
    BodyTooLarge,
    ClientGone,
    documented_route,
    read_body,
    request_headers,
    send_json,
)
from app.requestlimits import is_json
from app.webhooks.routes import MAX_WEBHOOK_BYTES, receive_webhook

WEBHOOK_PATH = "/v1/webhooks/loopmessage"


def _too_large() -> ServiceError:
    return ServiceError(413, "payload_too_large", f"the body is over {MAX_WEBHOOK_BYTES} bytes")


class WebhookEndpoint:
    def __init__(self) -> None:
        self._route: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._route is None:
            self._route = documented_route(scope["app"], "POST", WEBHOOK_PATH)
        scope["route"] = self._route
        headers = request_headers(
            scope, b"content-type", b"content-length", b"authorization", b"transfer-encoding"
        )
        content_type = headers.get(b"content-type")
        length = headers.get(b"content-length")
        chunked = "chunked" in headers.get(b"transfer-encoding", "").lower()

        async def body() -> bytes:
            try:
                return await read_body(receive, MAX_WEBHOOK_BYTES)
            except BodyTooLarge:
                raise _too_large() from None

        try:
            has_body = chunked or (length is not None and length.strip() not in ("", "0"))
            if has_body and content_type is not None and not is_json(content_type):
                raise ServiceError(
                    415, "unsupported_media_type", "send the body as application/json"
                )
            if length is not None and length.isdigit() and int(length) > MAX_WEBHOOK_BYTES:
                raise _too_large()
            services = scope["app"].state.services
            answer = await receive_webhook(services, headers.get(b"authorization"), body)
        except ServiceError as exc:
            await send_json(send, exc.status_code, error_body(exc.code, exc.detail), exc.headers)
            return
        except ClientGone:
            return
        await send_json(send, 200, answer)
