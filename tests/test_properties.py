"""Property-based tests (hypothesis): webhook parsing and phone formatting on any input."""

from __future__ import annotations

import re
from typing import Any

import phonenumbers
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.phones import NotAPhoneNumber, format_phone
from app.webhooks.parse import (
    MAX_FIELD,
    MAX_ID,
    REF_PARAM,
    UTM_FIELDS,
    InvalidWebhook,
    ParsedWebhook,
    is_stop_message,
    parse_webhook,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
known_keys = st.sampled_from(
    [
        "webhook_id",
        "event",
        "type",
        "contact",
        "text",
        "parameters",
        "language",
        "message_id",
        "organization_id",
    ]
)
# Objects shaped like webhooks, with every field possibly of the wrong type or size.
webhook_like = st.dictionaries(
    known_keys | st.text(max_size=8),
    json_values | st.text(max_size=600),
    max_size=9,
).map(
    lambda payload: (
        payload
        | (
            {"event": "message_inbound", "type": "opt_in"}
            if len(payload) % 3 == 0
            else ({"event": "opt-in"} if len(payload) % 3 == 1 else {})
        )
    )
)


def check_parsed(parsed: ParsedWebhook) -> None:
    assert isinstance(parsed.webhook_id, str) and 0 < len(parsed.webhook_id) <= MAX_ID
    if parsed.is_opt_in:
        assert parsed.contact
        assert all(len(value) <= MAX_FIELD for value in parsed.params.values())
        assert REF_PARAM not in parsed.params and "click_id" not in parsed.params
        assert not set(UTM_FIELDS) & set(parsed.params)
    is_stop_message(parsed, ["STOP"])  # never raises either


@FAST
@given(payload=json_values | webhook_like)
def test_parse_webhook_raises_only_invalid_webhook(payload: Any) -> None:
    try:
        parsed = parse_webhook(payload)
    except InvalidWebhook as exc:
        assert str(exc)  # the 422 says why
        return
    check_parsed(parsed)


@FAST
@given(
    webhook_id=st.text(min_size=1, max_size=MAX_ID).filter(lambda s: s.replace("\x00", "")),
    contact=st.text(min_size=1, max_size=320).filter(lambda s: s.replace("\x00", "").strip()),
    parameters=st.dictionaries(st.text(max_size=120), json_values, max_size=12),
)
def test_any_opt_in_with_id_and_contact_is_accepted(
    webhook_id: str, contact: str, parameters: dict[str, Any]
) -> None:
    parsed = parse_webhook(
        {"webhook_id": webhook_id, "event": "opt-in", "contact": contact, "parameters": parameters}
    )
    assert parsed.is_opt_in and parsed.webhook_id == webhook_id.replace("\x00", "")
    check_parsed(parsed)


STYLES = st.sampled_from(["E164", "NATIONAL", "DIGITS"])
REGIONS = st.sampled_from(["US", "GB", "DE", "FR", "IN", "BR", "AU", "JP", "CA", "MX"])


@FAST
@given(contact=st.text(max_size=40), region=REGIONS, style=STYLES)
def test_format_phone_raises_only_not_a_phone_number(contact: str, region: str, style: str) -> None:
    try:
        formatted = format_phone(contact, region, style)
    except NotAPhoneNumber as exc:
        assert str(exc)
        return
    assert formatted and "@" not in formatted


@st.composite
def possible_numbers(draw: st.DrawFn) -> str:
    """A real-looking number: a region's example number with its last digits varied."""
    region = draw(REGIONS)
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    national = str(example.national_number)
    tail = draw(st.text(alphabet="0123456789", min_size=2, max_size=2))
    return f"+{example.country_code}{national[:-2]}{tail}"


@FAST
@given(number=possible_numbers(), region=REGIONS)
def test_formats_agree_on_the_same_number(number: str, region: str) -> None:
    e164 = format_phone(number, region, "E164")
    assert re.fullmatch(r"\+[1-9]\d{6,14}", e164)
    assert format_phone(number, region, "DIGITS") == e164[1:]
    assert format_phone(e164, region, "E164") == e164  # idempotent
    national = format_phone(number, region, "NATIONAL")
    source_region = phonenumbers.region_code_for_number(phonenumbers.parse(e164))
    assert format_phone(national, source_region, "E164") == e164  # round trip
    # Separators people type do not change the number.
    spaced = " ".join([e164[:3], e164[3:6], e164[6:]])
    assert format_phone(spaced, region, "E164") == e164


@FAST
@example(digits="0123456789", region="US", style="E164")  # a leading zero (Italian-style)
@example(digits="1234567890", region="US", style="NATIONAL")  # the trunk prefix `1`
@example(digits="2015550123", region="GB", style="NATIONAL")
@given(
    digits=st.from_regex(r"[2-9]\d\d[2-9]\d{6}", fullmatch=True)
    | st.text(alphabet="0123456789", min_size=8, max_size=13),
    region=REGIONS,
    style=STYLES,
)
def test_north_american_shortcut_reads_numbers_as_the_library_does(
    digits: str, region: str, style: str
) -> None:
    """`+1…` strings, the shortcut's own and its near misses, format exactly as through
    `phonenumbers.parse` (or are refused alike)."""
    contact = f"+1{digits}"

    def through_the_library() -> str:
        number = phonenumbers.parse(contact, region)
        if not phonenumbers.is_possible_number(number):
            raise NotAPhoneNumber("not possible")
        if style == "DIGITS":
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
        return phonenumbers.format_number(number, getattr(phonenumbers.PhoneNumberFormat, style))

    try:
        expected: str | None = through_the_library()
    except (phonenumbers.NumberParseException, NotAPhoneNumber):
        expected = None
    try:
        got: str | None = format_phone(contact, region, style)
    except NotAPhoneNumber:
        got = None
    assert got == expected
