"""Which of LoopMessage's links fits a visitor's device, from the User-Agent.

The rule (LoopMessage's own guidance, made concrete):
- iPhone / iPod / iPad on iOS 13 or later -> `imessage` (the imessage:// scheme opens Messages);
- iOS 12 or earlier, and Android -> `sms` (the sms: scheme every phone understands);
- everything else (desktop browsers, iPadOS in desktop mode, unknown) -> `url`, the smart link
  page: it opens Messages on a Mac and is what a desktop page shows as a QR code to scan.
When the chosen link is missing from LoopMessage's answer the next one in the order
imessage, sms, url is used.
"""

from __future__ import annotations

import re

_IOS_RE = re.compile(r"(?:iPhone|iPod|iPad).*? OS (\d+)[_.]", re.IGNORECASE)
_ORDER = ("imessage", "sms", "url")


def preferred_link(user_agent: str | None) -> str:
    ua = user_agent or ""
    match = _IOS_RE.search(ua)
    if match:
        return "imessage" if int(match.group(1)) >= 13 else "sms"
    if "android" in ua.lower():
        return "sms"
    return "url"


def recommend(user_agent: str | None, available: dict[str, str | None]) -> str:
    first = preferred_link(user_agent)
    for name in (first, *_ORDER):
        if available.get(name):
            return name
    return first
