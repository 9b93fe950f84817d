"""PostgreSQL restarted under load (a private cluster, never the shared one).

While it is down, webhooks are answered 503 with Retry-After (so LoopMessage retries) and
/readyz is 503; once it is back, both recover without restarting the service, and every
webhook answered 200 is stored and delivered.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

import httpx

from tests.conftest import WEBHOOK_SECRET, Fakes, opt_in_payload, wait_until
from tests.fakes.servers import Scripted
from tests.faults.conftest import (
    PrivatePostgres,
    Processes,
    all_jobs_finished,
    phone,
    service_env,
    stored_webhook_ids,
)


async def test_postgres_restart_gives_503_then_recovers(
    private_postgres: PrivatePostgres, fakes: Fakes, procs: Processes
) -> None:
    fakes.callloop.state.always(Scripted(200, text="OK", delay=0.05))
    api = await procs.api(service_env(private_postgres.url, fakes))
    headers = {"Authorization": WEBHOOK_SECRET}
    accepted: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    counter = iter(range(10_000))
    loading = True

    async with httpx.AsyncClient(base_url=api.url, timeout=15.0) as client:

        async def send(payload: dict[str, Any]) -> httpx.Response:
            response = await client.post("/v1/webhooks/loopmessage", json=payload, headers=headers)
            if response.status_code == 200:
                accepted.append(payload)
            else:
                assert response.status_code == 503, response.text
                assert response.json()["code"] == "database_unavailable"
                assert response.headers["Retry-After"]
                refused.append(payload)
            return response

        async def load() -> None:
            while loading:
                await send(opt_in_payload(contact=phone(next(counter))))
                await asyncio.sleep(0.02)

        async def ready_status() -> int:
            return (await client.get("/readyz")).status_code

        loaders = [asyncio.create_task(load()) for _ in range(3)]
        try:
            await wait_until(lambda: len(accepted) >= 10, timeout=30)
            await asyncio.to_thread(private_postgres.stop, "fast")

            # The gap: deterministic, the database is down.
            down = await send(opt_in_payload(contact=phone(9000)))
            assert down.status_code == 503
            readyz = await client.get("/readyz")
            assert readyz.status_code == 503
            assert "database unreachable" in readyz.json()["reasons"]
            assert (await client.get("/healthz")).status_code == 200

            await asyncio.to_thread(private_postgres.start)
            # Back by themselves: same process, no restart.
            await wait_until(lambda: _ok(send, phone(9001)), timeout=30)
            await wait_until(lambda: _is(ready_status, 200), timeout=30)
        finally:
            loading = False
            await asyncio.gather(*loaders)

        assert refused, "no webhook was sent while the database was down"
        # LoopMessage retries what got 503.
        retry = list(refused)
        refused.clear()
        for payload in retry:
            assert (await send(payload)).status_code == 200

    assert api.running()
    accepted_ids = {str(payload["webhook_id"]) for payload in accepted}
    assert accepted_ids <= await stored_webhook_ids(private_postgres.url)
    numbers = {str(payload["contact"]) for payload in accepted}

    def delivered() -> set[str]:
        return {
            parse_qs(call.body.decode())["phone"][0]
            for call in fakes.callloop.state.received("/r/")
        }

    async def settled() -> bool:
        return numbers <= delivered() and await all_jobs_finished(private_postgres.url)

    await wait_until(settled, timeout=60)


async def _ok(send: Any, number: str) -> bool:
    return bool((await send(opt_in_payload(contact=number))).status_code == 200)


async def _is(status: Any, expected: int) -> bool:
    return bool(await status() == expected)
