"""The console's sign-in: a signed, expiring session cookie and the CSRF tokens of its forms.

The signing key is derived from ADMIN_TOKEN with HMAC, so the console needs no secret of its
own, and changing ADMIN_TOKEN ends every session at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "optin_console"
LOGIN_COOKIE = "optin_console_login"
COOKIE_PATH = "/admin"
SESSION_SECONDS = 8 * 3600
LOGIN_FORM_SECONDS = 3600
_KEY_CONTEXT = b"optin-backend console session key v1"


@dataclass(frozen=True)
class ConsoleSession:
    csrf_token: str


def _serializer(admin_token: str) -> URLSafeTimedSerializer:
    key = hmac.new(admin_token.encode(), _KEY_CONTEXT, hashlib.sha256).hexdigest()
    return URLSafeTimedSerializer(key, salt="console-session")


def token_matches(given: str, admin_token: str) -> bool:
    """The sign-in check, in constant time."""
    return hmac.compare_digest(given.encode(), admin_token.encode())


def read_session(request: Request, admin_token: str) -> ConsoleSession | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    try:
        data = _serializer(admin_token).loads(cookie, max_age=SESSION_SECONDS)
    except BadSignature:  # also SignatureExpired
        return None
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
        return None
    return ConsoleSession(csrf_token=data["csrf"])


def start_session(response: Response, admin_token: str, *, secure: bool) -> None:
    value = _serializer(admin_token).dumps({"csrf": secrets.token_urlsafe(32)})
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)


def end_session(response: Response, *, secure: bool) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure
    )


def csrf_matches(session_token: str, form_token: object) -> bool:
    return isinstance(form_token, str) and hmac.compare_digest(
        session_token.encode(), form_token.encode()
    )


def login_form_token(request: Request) -> str:
    """The sign-in form's CSRF token (double submit: a cookie and a hidden field)."""
    existing = request.cookies.get(LOGIN_COOKIE)
    if existing and 20 <= len(existing) <= 100 and existing.isascii():
        return existing
    return secrets.token_urlsafe(32)


def remember_login_form(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=LOGIN_FORM_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
    )
