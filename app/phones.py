"""Phone numbers: parse with `phonenumbers`, format for Call Loop."""

from __future__ import annotations

import re

import phonenumbers

_FORMATS = {
    "E164": phonenumbers.PhoneNumberFormat.E164,
    "NATIONAL": phonenumbers.PhoneNumberFormat.NATIONAL,
}


# A North American number in E.164 (`+1`, then an area code and a number that start 2-9), the
# form LoopMessage sends for US and Canadian contacts. `phonenumbers.parse` reads such a string
# as exactly this country code and national number; building that object directly skips the
# parser's general work (7 % of an opt-in's intake CPU went to it). Everything else is parsed.
_NANP_E164 = re.compile(r"\+1([2-9]\d{2}[2-9]\d{6})")


class NotAPhoneNumber(ValueError):
    pass


def _parse(contact: str, default_region: str) -> phonenumbers.PhoneNumber:
    nanp = _NANP_E164.fullmatch(contact)
    if nanp:
        return phonenumbers.PhoneNumber(country_code=1, national_number=int(nanp.group(1)))
    return phonenumbers.parse(contact, default_region)


def format_phone(contact: str, default_region: str, style: str = "E164") -> str:
    """`contact` as Call Loop should receive it; raises NotAPhoneNumber with the reason."""
    if "@" in contact:
        raise NotAPhoneNumber("the contact is an email address (iMessage), not a phone number")
    try:
        number = _parse(contact, default_region)
    except phonenumbers.NumberParseException as exc:
        raise NotAPhoneNumber(f"unparseable phone number ({exc._msg})") from None
    # "Possible" (right length for the country), not "valid": the contact really sent a message
    # from this number, and the library's range tables can lag behind new number ranges.
    if not phonenumbers.is_possible_number(number):
        raise NotAPhoneNumber("not a possible phone number for its country")
    if style == "DIGITS":
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")
    return phonenumbers.format_number(number, _FORMATS[style])
