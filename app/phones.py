"""Phone numbers: parse with `phonenumbers`, format for Call Loop."""

from __future__ import annotations

import phonenumbers

_FORMATS = {
    "E164": phonenumbers.PhoneNumberFormat.E164,
    "NATIONAL": phonenumbers.PhoneNumberFormat.NATIONAL,
}


class NotAPhoneNumber(ValueError):
    pass


def format_phone(contact: str, default_region: str, style: str = "E164") -> str:
    """`contact` as Call Loop should receive it; raises NotAPhoneNumber with the reason."""
    if "@" in contact:
        raise NotAPhoneNumber("the contact is an email address (iMessage), not a phone number")
    try:
        number = phonenumbers.parse(contact, default_region)
    except phonenumbers.NumberParseException as exc:
        raise NotAPhoneNumber(f"unparseable phone number ({exc._msg})") from None
    # "Possible" (right length for the country), not "valid": the contact really sent a message
    # from this number, and the library's range tables can lag behind new number ranges.
    if not phonenumbers.is_possible_number(number):
        raise NotAPhoneNumber("not a possible phone number for its country")
    if style == "DIGITS":
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")
    return phonenumbers.format_number(number, _FORMATS[style])
