"""A PostgreSQL server that accepts connections and never answers: bounded 503s, not hangs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import ApiFactory, opt_in_payload


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port whose connections are accepted by the kernel and then left unanswered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


async def test_hung_database_gives_503_within_the_connect_timeout(
    make_api: ApiFactory, silent_server: int
) -> None:
    api = await make_api(
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{silent_server}/optin",
        database_connect_timeout_seconds=0.5,
        run_worker=False,
    )
    # The bound only catches a hang (asyncpg alone would wait 60 s per connection attempt).
    webhook = await asyncio.wait_for(api.webhook(opt_in_payload()), 30)
    assert webhook.status_code == 503
    assert webhook.json()["code"] == "database_unavailable"
    assert webhook.headers["Retry-After"]
    ready = await asyncio.wait_for(api.client.get("/readyz"), 30)
    assert ready.status_code == 503
    assert "database unreachable" in ready.json()["reasons"]
    assert (await api.client.get("/healthz")).status_code == 200
