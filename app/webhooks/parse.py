"""Reading a LoopMessage webhook: is it an opt-in, a STOP, or something else to record?

Pure functions on the decoded JSON; unknown fields and event names are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
REF_PARAM = "optin_ref"  # our link-request reference, sent upstream with every link
MAX_ID = 200
MAX_FIELD = 500
MAX_PARAMS = 50
MAX_DEPTH = 32  # LoopMessage's webhooks are three levels deep


class InvalidWebhook(ValueError):
    """The JSON is well formed but not the shape of a LoopMessage webhook (422)."""


@dataclass(frozen=True)
class ParsedWebhook:
    webhook_id: str
    event: str
    type: str | None
    contact: str | None
    text: str | None
    is_opt_in: bool
    message_id: str | None = None
    organization_id: str | None = None
    click_id: str | None = None
    utm: dict[str, str | None] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # the other parameters
    ref: str | None = None
    language_code: str | None = None
    language_name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    # The body's text when `raw` is exactly what it says (nothing cleaned): stored as received.
    raw_text: str | None = None


def _clean(value: Any, depth: int = 0) -> Any:
    """NUL characters dropped from every string (PostgreSQL text cannot hold them), so such a
    webhook is stored instead of failing forever; nesting bounded."""
    if depth > MAX_DEPTH:
        raise InvalidWebhook(f"the webhook is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {
            str(key).replace("\x00", ""): _clean(item, depth + 1) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_clean(item, depth + 1) for item in value]
    return value


def _optional_str(payload: dict[str, Any], name: str, limit: int = MAX_FIELD) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidWebhook(f"{name} must be a string")
    if len(value) > limit:
        raise InvalidWebhook(f"{name} is longer than {limit} characters")
    return value or None


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value[:MAX_FIELD]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return ""


def _as_received(body: bytes | None) -> str | None:
    """The body as text when it is UTF-8 and `_clean` changed nothing in it (a NUL can only be
    written `\\u0000` in JSON text); None for anything else (another encoding, a byte order
    mark), which is stored as parsed."""
    if body is None or b"\\u0000" in body or b"\x00" in body or body.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _shallow(body: bytes | None) -> bool:
    """True when the JSON text cannot nest deeper than MAX_DEPTH: it has at most that many
    brackets and braces in all (those inside strings counted too)."""
    return body is not None and body.count(b"{") + body.count(b"[") <= MAX_DEPTH


def normalise_contact(contact: str) -> str:
    """Emails are compared lower-case; phone numbers as sent (E.164 from LoopMessage)."""
    contact = contact.strip()
    return contact.lower() if "@" in contact else contact


def parse_webhook(payload: Any, body: bytes | None = None) -> ParsedWebhook:
    """The webhook `payload` (`body`, the JSON text it was read from, if at hand), checked."""
    if not isinstance(payload, dict):
        raise InvalidWebhook("the webhook body must be a JSON object")
    raw_text = _as_received(body)
    if raw_text is None or not _shallow(body):
        # Otherwise `_clean` has nothing to do: no NUL (the text as received holds none) and
        # no nesting past the limit. Skipping it saves a quarter of the parse (~2.5 us).
        payload = _clean(payload)
    webhook_id = _optional_str(payload, "webhook_id", MAX_ID)
    if webhook_id is None:
        raise InvalidWebhook("webhook_id is required")
    event = _optional_str(payload, "event", 64) or "unknown"
    kind = _optional_str(payload, "type", 64)
    contact = _optional_str(payload, "contact", 320)
    text = payload.get("text") if isinstance(payload.get("text"), str) else None
    is_opt_in = event == "opt-in" or (event == "message_inbound" and kind == "opt_in")
    if not is_opt_in:
        return ParsedWebhook(
            webhook_id=webhook_id,
            event=event,
            type=kind,
            contact=normalise_contact(contact) if contact else None,
            text=text,
            is_opt_in=False,
            raw=payload,
        )
    if contact is None or not contact.strip():
        raise InvalidWebhook("an opt-in webhook needs a contact")
    raw_params = payload.get("parameters")
    if raw_params is None:
        raw_params = {}
    if not isinstance(raw_params, dict):
        raise InvalidWebhook("parameters must be an object")
    if len(raw_params) > MAX_PARAMS:
        raise InvalidWebhook(f"parameters has more than {MAX_PARAMS} entries")
    values = {str(key)[:100]: _param_text(value) for key, value in raw_params.items()}
    language = payload.get("language")
    language = language if isinstance(language, dict) else {}
    lang_code = language.get("code")
    lang_name = language.get("name")
    return ParsedWebhook(
        webhook_id=webhook_id,
        event=event,
        type=kind,
        contact=normalise_contact(contact),
        text=text,
        is_opt_in=True,
        message_id=_optional_str(payload, "message_id", MAX_ID),
        organization_id=_optional_str(payload, "organization_id", MAX_ID),
        click_id=values.pop("click_id", None) or None,
        utm={name: values.pop(name, None) or None for name in UTM_FIELDS},
        ref=values.pop(REF_PARAM, None) or None,
        params=values,
        language_code=lang_code[:32] if isinstance(lang_code, str) else None,
        language_name=lang_name[:100] if isinstance(lang_name, str) else None,
        raw=payload,
        raw_text=raw_text,
    )


def is_stop_message(parsed: ParsedWebhook, keywords: list[str]) -> bool:
    """An inbound message whose whole text, trimmed and in any case, is an opt-out keyword."""
    if parsed.is_opt_in or parsed.event != "message_inbound" or not parsed.contact:
        return False
    return bool(parsed.text) and parsed.text.strip().upper() in keywords  # type: ignore[union-attr]
