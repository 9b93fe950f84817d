"""Which Call Loop group (and trigger) an opt-in goes to."""

from __future__ import annotations

import functools
import hashlib

from app.settings import CallLoopRoute, Settings


def resolve_route(
    settings: Settings, list_param: str | None, utm_campaign: str | None
) -> CallLoopRoute | None:
    """The `list` parameter when it names a route, else utm_campaign, else the default group."""
    routes = settings.routes
    for key in (list_param, utm_campaign):
        if key and key in routes:
            return routes[key]
    return settings.default_route


@functools.lru_cache(maxsize=1024)  # a handful of groups, hashed for every opt-in
def group_hash(group_url: str) -> str:
    return hashlib.sha256(group_url.encode()).hexdigest()
