"""Scale-out: two API processes and two standalone workers on one PostgreSQL.

A burst of webhooks is split between the API processes, with duplicates of two kinds: the same
webhook (same webhook_id) delivered to both processes at once, and a second opt-in of the same
number (new webhook_id) through the other process. Every number is added to Call Loop once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

import httpx

from tests.conftest import WEBHOOK_SECRET, Fakes, opt_in_payload, wait_until
from tests.fakes.servers import Scripted
from tests.faults.conftest import (
    Processes,
    all_jobs_finished,
    job_counts,
    phone,
    query,
    service_env,
    stored_webhook_ids,
)

NUMBERS = 40


async def post_until_stored(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> str:
    """LoopMessage's side: retry (bounded) until the webhook is answered 200."""
    for _ in range(20):
        response = await client.post(
            f"{url}/v1/webhooks/loopmessage",
            json=payload,
            headers={"Authorization": WEBHOOK_SECRET},
        )
        if response.status_code == 200:
            return str(response.json()["status"])
        assert response.status_code == 503, response.text
        await asyncio.sleep(0.1)
    raise AssertionError(f"webhook {payload['webhook_id']} never stored")


async def test_two_apis_two_workers_add_each_number_once(
    pg_url: str, fakes: Fakes, procs: Processes
) -> None:
    fakes.callloop.state.always(Scripted(200, text="OK", delay=0.02))
    api_env = service_env(pg_url, fakes, run_worker=False)
    # No process dies here, so no lease should ever expire: a long one keeps a stalled worker
    # on a busy machine from being mistaken for a dead one.
    worker_env = service_env(pg_url, fakes, delivery_lease_seconds=30)
    api_a, api_b, *_workers = await asyncio.gather(
        procs.api(api_env), procs.api(api_env), procs.worker(worker_env), procs.worker(worker_env)
    )

    firsts = [opt_in_payload(contact=phone(n)) for n in range(NUMBERS)]
    repeats = [opt_in_payload(contact=phone(n)) for n in range(NUMBERS)]
    sends = []
    for n in range(NUMBERS):
        here, there = (api_a, api_b) if n % 2 else (api_b, api_a)
        sends += [(here, firsts[n]), (there, firsts[n]), (there, repeats[n])]

    async with httpx.AsyncClient(timeout=20.0) as client:
        outcomes = await asyncio.gather(
            *(post_until_stored(client, proc.url, payload) for proc, payload in sends)
        )
    tally = Counter(outcomes)
    # Each webhook_id is stored once; its twin is answered 200 "duplicate".
    assert tally["stored"] == 2 * NUMBERS and tally["duplicate"] == NUMBERS, tally
    assert len(await stored_webhook_ids(pg_url)) == 2 * NUMBERS

    def adds() -> Counter[str]:
        return Counter(
            parse_qs(call.body.decode())["phone"][0]
            for call in fakes.callloop.state.received("/r/")
        )

    async def settled() -> bool:
        return len(adds()) == NUMBERS and await all_jobs_finished(pg_url)

    await wait_until(settled, timeout=60)
    assert adds() == Counter({phone(n): 1 for n in range(NUMBERS)})
    assert await job_counts(pg_url) == {"done": NUMBERS}
    # Both standalone workers took part (the heartbeat table knows them both).
    [(workers,)] = await query(pg_url, "SELECT count(*) FROM worker_heartbeats")
    assert workers == 2
