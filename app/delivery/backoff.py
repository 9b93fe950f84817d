"""Exponential backoff with jitter for delivery retries."""

from __future__ import annotations

import random


def retry_delay(attempts: int, base_seconds: float, max_seconds: float) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: base·2^(n-1), capped, jittered.

    The jitter keeps half the delay fixed and randomises the rest, so a burst of failures
    (a Call Loop outage) does not come back as a burst of retries.
    """
    ceiling = min(max_seconds, base_seconds * (2 ** max(attempts - 1, 0)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311  (not cryptographic)
