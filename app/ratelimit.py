"""Per-client-IP rate limit for the public link endpoints (`limits`' native async API).

In memory by default; shared by every API process through Redis when RATE_LIMIT_STORAGE_URL
is `redis://…`.
"""

from __future__ import annotations

import logging
import math
import time

from limits import parse
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from app.errors import ServiceError

log = logging.getLogger("optin.ratelimit")


class LinkRateLimiter:
    def __init__(self, limit: str, storage_url: str) -> None:
        self.limit = parse(limit)
        url = storage_url if storage_url.startswith("async+") else f"async+{storage_url}"
        self.storage = storage_from_string(url)
        # A sliding window counter: two counters per client and window, so a hit costs the
        # same whatever the limit (a moving window keeps, and shifts, one entry per hit).
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)

    async def check(self, client_key: str) -> None:
        """Raise 429 with Retry-After when this client is over its budget."""
        try:
            if await self.limiter.hit(self.limit, "links", client_key):
                return
        except Exception as exc:  # storage (Redis) unreachable: fail open, loudly
            # Refusing every visitor while Redis is down would stop all sign-ups; the limit
            # is abuse protection, and LoopMessage enforces its own quota upstream.
            log.warning(
                "rate limit storage unavailable; request allowed",
                extra={"error": type(exc).__name__},
            )
            return
        stats = await self.limiter.get_window_stats(self.limit, "links", client_key)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise ServiceError(
            429,
            "rate_limited",
            f"too many link requests from this address; try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
