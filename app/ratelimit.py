"""Per-client-IP rate limits (`limits`' native async API): link requests, and wrong admin tokens.

In memory by default; shared by every API process through Redis when RATE_LIMIT_STORAGE_URL
is `redis://…`. If the storage cannot be reached, requests are let through (with a warning):
refusing every visitor while Redis is down would stop all sign-ups.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable

from limits import RateLimitItem, parse
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from app.errors import ServiceError

log = logging.getLogger("optin.ratelimit")


class ClientRateLimiter:
    """`limit` per client key within `namespace`; `what` names what is counted in the 429."""

    def __init__(self, limit: str, storage_url: str, namespace: str, what: str) -> None:
        self.limit = parse(limit)
        url = storage_url if storage_url.startswith("async+") else f"async+{storage_url}"
        self.storage = storage_from_string(url)
        # A sliding window counter: two counters per client and window, so a hit costs the
        # same whatever the limit (a moving window keeps, and shifts, one entry per hit).
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.namespace = namespace
        self.what = what

    async def check(self, client_key: str) -> None:
        """Count one request; raise 429 with Retry-After when this client is over its budget."""
        if not await self._allowed(self.limiter.hit, client_key):
            raise await self._refusal(client_key)

    async def refuse_if_exhausted(self, client_key: str) -> None:
        """Raise 429 when this client has used up its budget, without counting anything."""
        if not await self._allowed(self.limiter.test, client_key):
            raise await self._refusal(client_key)

    async def record(self, client_key: str) -> None:
        """Count one event (say, a wrong token) against this client's budget."""
        await self._allowed(self.limiter.hit, client_key)

    async def _allowed(
        self, probe: Callable[[RateLimitItem, str, str], Awaitable[bool]], client_key: str
    ) -> bool:
        try:
            return await probe(self.limit, self.namespace, client_key)
        except Exception as exc:  # storage (Redis) unreachable: fail open, loudly
            self._storage_down(exc)
            return True

    async def _refusal(self, client_key: str) -> ServiceError:
        stats = await self.limiter.get_window_stats(self.limit, self.namespace, client_key)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        return ServiceError(
            429,
            "rate_limited",
            f"too many {self.what} from this address; try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    def _storage_down(self, exc: Exception) -> None:
        # The limits are abuse protection, and LoopMessage enforces its own quota upstream.
        log.warning(
            "rate limit storage unavailable; request allowed",
            extra={"error": type(exc).__name__, "limit": self.namespace},
        )
