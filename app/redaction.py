"""Masking of personal data and secrets before anything reaches a log, a page or a response."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# E.164-looking numbers (`+15555550123`, `+1 555-555-0123`) and their URL-encoded form
# (`%2B15555550123`); bare digit runs are left alone so IPs, ids and times stay readable.
_PHONE_RE = re.compile(r"(?:\+|%2B)\d[\d\s-]{6,17}\d", re.IGNORECASE)
# `@` or its percent-encoding: HTTP libraries log URLs, where an email is `jane%40example.com`.
_EMAIL_RE = re.compile(
    r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*(?:@|%40)([A-Za-z0-9.-]+\.[A-Za-z]{2,})", re.IGNORECASE
)


# A Call Loop integration URL (`…/r/?key`, `…/s/?key`, `…/t/?key`): everything after the
# marker is the secret, whichever group it belongs to (old memberships included).
_CALLLOOP_URL_RE = re.compile(r"(https?://[^\s/\"'<>]+)(/[rst]/)[^\s\"'<>]*")


# Every pattern above needs one of these: `+`/`%2B` (phone), `@`/`%40` (email), `://` (URL).
_MAY_NEED_MASKING = re.compile(r"[+@%]|://")


def mask_url(url: str) -> str:
    """Keep the scheme, host and path kind (/r/, /s/, /t/); hide everything secret after it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<url>"
    if not parts.scheme or not parts.netloc:
        return "<url>"
    kind = ""
    for marker in ("/r/", "/s/", "/t/", "/webhook/"):
        if marker in parts.path:
            kind = marker
            break
    return f"{parts.scheme}://{parts.hostname}{kind}…"


def mask_phone(phone: str) -> str:
    """`+15555550123` -> `+1*******0123`."""
    digits = phone.strip()
    if len(digits) <= 4:
        return "*" * len(digits)
    keep_head = 2 if digits.startswith("+") else 0
    return digits[:keep_head] + "*" * (len(digits) - keep_head - 4) + digits[-4:]


def mask_email(email: str) -> str:
    """`jane.doe@example.com` -> `j***@example.com`."""
    local, _, domain = email.partition("@")
    if not domain:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_contact(contact: str | None) -> str:
    if not contact:
        return ""
    if "@" in contact:
        return mask_email(contact)
    return mask_phone(contact)


def scrub(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Remove secrets, then mask anything that looks like a phone number or email address."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "[redacted]")
    if not _MAY_NEED_MASKING.search(text):
        return text  # none of the patterns below can match: most log fields end here
    text = _CALLLOOP_URL_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}…", text)
    text = _EMAIL_RE.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE_RE.sub(lambda m: mask_phone(re.sub(r"[\s-]", "", m.group(0))), text)


def hide_url_secrets(text: str, url: str) -> str:
    """Replace the URL, and its secret parts (query, the path after /r/ etc.), in `text`.

    A Call Loop group key lives in the query (`/r/?<key>`); an upstream error body that echoes
    it alone must not carry it into a log, a page or a response.
    """
    if not text or not url:
        return text
    text = text.replace(url, mask_url(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    secret_parts = [parts.query]
    for marker in ("/r/", "/s/", "/t/", "/webhook/"):
        if marker in parts.path:
            secret_parts.append(parts.path.split(marker, 1)[1])
    for part in sorted(secret_parts, key=len, reverse=True):
        if len(part) >= 4:
            text = text.replace(part, "[redacted]")
    return text
