"""Two API processes share one per-client-IP budget through the real Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Fakes
from tests.faults.conftest import Processes, service_env

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1):
            return True
    except OSError:
        return False


def unique_visitor() -> str:
    """A documentation-range IPv6 address nobody else's test uses: our own Redis keys."""
    groups = [secrets.token_hex(2) for _ in range(6)]
    return "2001:db8:" + ":".join(groups)


async def test_two_processes_share_one_budget_through_redis(
    pg_url: str, fakes: Fakes, procs: Processes
) -> None:
    if not redis_reachable(REDIS_URL):
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is required in CI")
        pytest.skip(f"Redis at {REDIS_URL} is not reachable")
    env = service_env(
        pg_url,
        fakes,
        rate_limit_links="4/minute",
        rate_limit_storage_url=REDIS_URL,
        trusted_proxies="127.0.0.1",
        run_worker=False,
    )
    api_a, api_b = await asyncio.gather(procs.api(env), procs.api(env))
    visitor, other = unique_visitor(), unique_visitor()

    async with httpx.AsyncClient(timeout=15.0) as client:

        async def link(url: str, ip: str) -> int:
            response = await client.post(
                f"{url}/v1/opt-in-links", json={}, headers={"X-Forwarded-For": ip}
            )
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
            return response.status_code

        statuses = [await link(url, visitor) for url in (api_a.url, api_b.url) * 3]
        assert sorted(statuses) == [200] * 4 + [429] * 2, statuses
        # Six requests alternating between the processes: one budget of four, not two.
        # Another visitor still has a budget of their own.
        assert await link(api_b.url, other) == 200
        assert await link(api_a.url, other) == 200
