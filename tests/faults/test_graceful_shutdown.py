"""SIGTERM: requests in flight are finished; delivery jobs still running are given back."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading

import httpx

from tests.conftest import WEBHOOK_SECRET, Fakes, opt_in_payload, wait_until
from tests.fakes.servers import Scripted
from tests.faults.conftest import Processes, phone, query, service_env


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def job_rows(url: str) -> list[tuple[str, str | None, int]]:
    rows = await query(url, "SELECT status, lease_owner, attempts FROM delivery_jobs ORDER BY id")
    return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_sigterm_finishes_requests_and_releases_jobs(
    pg_url: str, fakes: Fakes, procs: Processes
) -> None:
    link_gate, callloop_gate = threading.Event(), threading.Event()
    fakes.callloop.state.always(Scripted(200, text="OK", hold=callloop_gate))
    fakes.loop.state.then(
        Scripted(200, {"id": "held", "imessage": "imessage://x", "sms": "sms:x"}, hold=link_gate)
    )
    env = service_env(pg_url, fakes, delivery_shutdown_grace_seconds=0.5)
    api = await procs.api(env)
    try:
        async with httpx.AsyncClient(timeout=30.0) as client:
            stored = await client.post(
                f"{api.url}/v1/webhooks/loopmessage",
                json=opt_in_payload(contact=phone(1)),
                headers={"Authorization": WEBHOOK_SECRET},
            )
            assert stored.status_code == 200
            # The add is in flight at Call Loop, held there.
            await wait_until(lambda: fakes.callloop.state.received("/r/"))
            link = asyncio.create_task(client.post(f"{api.url}/v1/opt-in-links", json={}))
            await wait_until(lambda: fakes.loop.state.received("/generate-url/"))

            api.signal(signal.SIGTERM)
            # Shutting down: no new connections are taken while the held request is pending.
            await wait_until(lambda: refuses_connections(int(api.port or 0)), timeout=20)
            assert not link.done()
            link_gate.set()
            response = await link
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "held"
        # A clean exit (uvicorn re-raises the signal once it has shut down cleanly).
        assert await api.wait_exit() in (0, -signal.SIGTERM)
    finally:
        link_gate.set()

    # The add never got its answer within the grace period: the job is pending again, unowned,
    # and the interrupted attempt is not counted against it.
    assert await job_rows(pg_url) == [("pending", None, 0)]
    callloop_gate.set()

    # The next worker delivers it.
    await procs.worker(service_env(pg_url, fakes))

    async def done() -> bool:
        return [row[0] for row in await job_rows(pg_url)] == ["done"]

    await wait_until(done, timeout=30)
    assert "released unfinished jobs" in api.log_text()
