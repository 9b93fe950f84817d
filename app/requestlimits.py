"""Every request body is bounded and JSON: 413 over the limit, 415 for another content type.

The admin console's HTML forms (under /admin) are the one place that posts form bodies.

A plain ASGI middleware in front of the routes, so no endpoint can forget it. Bodies announced
with Content-Length are refused before a byte is read (the server enforces that the body then
matches the length); chunked bodies are read up to the limit and replayed to the app.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body
from app.fastpath import BodyTooLarge, ClientGone, read_body, replaying

MAX_BODY_BYTES = 16 * 1024  # the link endpoint's JSON is well under 5 KB
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


FORM_PATH_PREFIX = "/admin"
FORM_TYPES = frozenset({"application/x-www-form-urlencoded"})


def is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class RequestLimitMiddleware:
    def __init__(
        self, app: ASGIApp, default_limit: int, path_limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.path_limits = path_limits or {}

    @staticmethod
    def _accepted(scope: Scope, content_type: str) -> bool:
        if is_json(content_type):
            return True
        media_type = content_type.split(";", 1)[0].strip().lower()
        return media_type in FORM_TYPES and scope["path"].startswith(FORM_PATH_PREFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODYLESS_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.path_limits.get(scope["path"], self.default_limit)
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        has_body = chunked or (length is not None and length.strip() not in ("", "0"))
        content_type = headers.get("content-type")
        if has_body and content_type is not None and not self._accepted(scope, content_type):
            await self._refuse(
                415, "unsupported_media_type", "send the body as application/json", scope, send
            )
            return
        if length is not None and length.isdigit() and int(length) > limit:
            await self._refuse(
                413, "payload_too_large", f"the body is over {limit} bytes", scope, send
            )
            return
        if not chunked:
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, limit)
        except ClientGone:
            return
        except BodyTooLarge:
            await self._refuse(
                413, "payload_too_large", f"the body is over {limit} bytes", scope, send
            )
            return
        await self.app(scope, replaying(body, receive), send)

    @staticmethod
    async def _refuse(status: int, code: str, detail: str, scope: Scope, send: Send) -> None:
        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        response = JSONResponse(error_body(code, detail), status_code=status)
        await response(scope, no_body, send)
