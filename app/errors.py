"""Errors the HTTP layer turns into clear JSON: `{"code": "...", "detail": "..."}`."""

from __future__ import annotations

import html
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ServiceError(Exception):
    def __init__(
        self,
        status_code: int,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.headers = headers


def not_configured(setting: str, what: str) -> ServiceError:
    return ServiceError(503, "not_configured", f"{what} is disabled: {setting} is not set")


def error_body(code: str, detail: object) -> dict[str, object]:
    return {"code": code, "detail": detail}


# A page for people, not programs: no script, inline styles only, never framed.
ERROR_PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
_ERROR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body style="font: 17px/1.5 system-ui, sans-serif; max-width: 34rem; margin: 4rem auto;
 padding: 0 1rem; color: #222">
<h1 style="font-size: 1.3rem">{title}</h1>
<p>{message}</p>
<p style="color: #666; font-size: 0.85rem">{detail} (code: {code})</p>
</body></html>
"""


def error_page(exc: ServiceError) -> HTMLResponse:
    """The same error as a small HTML page, for a visitor who followed a link in a browser."""
    if exc.status_code == 429:
        title, message = "Please wait a moment", "Too many tries from your network just now."
    elif exc.status_code < 500:
        title = "This sign-up link is not valid"
        message = "The link you followed is malformed. Please check it, or ask for a new one."
    else:
        title = "Sign-up is briefly unavailable"
        message = "We could not prepare your sign-up link right now. Please try again shortly."
    body = _ERROR_PAGE.format(
        title=title, message=message, detail=html.escape(exc.detail), code=html.escape(exc.code)
    )
    headers = {**(exc.headers or {}), "Content-Security-Policy": ERROR_PAGE_CSP}
    return HTMLResponse(body, status_code=exc.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.detail), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
            for error in exc.errors()
        ]
        return JSONResponse(error_body("validation_error", errors), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback by the server; the caller gets JSON and the request id.
        logging.getLogger("optin").error("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "unexpected error; see the service logs"),
            status_code=500,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(code, exc.detail), status_code=exc.status_code, headers=exc.headers
        )
