"""SIGKILL at random moments during a burst of webhooks and deliveries, then restart.

Promise: every webhook answered 200 is stored (checked right after each kill, before the
restart) and reaches Call Loop; a number reaches Call Loop twice only when a kill fell between
Call Loop receiving the add and our commit of `done` (the window the README documents).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import defaultdict
from urllib.parse import parse_qs

import httpx

from tests.conftest import WEBHOOK_SECRET, Fakes, opt_in_payload, wait_until
from tests.fakes.servers import Scripted
from tests.faults.conftest import (
    Processes,
    all_jobs_finished,
    job_counts,
    phone,
    service_env,
    stored_webhook_ids,
)

WEBHOOKS = 60
KILLS = 3
CONCURRENCY = 4  # DELIVERY_CONCURRENCY: at most this many adds are in flight at a kill
SENDERS = 6


def calls_by_phone(fakes: Fakes) -> dict[str, list[float]]:
    received: dict[str, list[float]] = defaultdict(list)
    for call in fakes.callloop.state.received("/r/"):
        [number] = parse_qs(call.body.decode())["phone"]
        received[number].append(call.received_at)
    return received


async def test_sigkill_during_burst_loses_nothing(
    pg_url: str, fakes: Fakes, procs: Processes
) -> None:
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))
    print(f"FAULT_SEED={seed}")
    rng = random.Random(seed)
    # Call Loop takes a moment per add, so kills land while adds are in flight.
    fakes.callloop.state.always(Scripted(200, text="OK", delay=0.1))
    env = service_env(pg_url, fakes, delivery_concurrency=CONCURRENCY, delivery_lease_seconds=3)
    api = await procs.api(env)

    payloads = [opt_in_payload(contact=phone(n)) for n in range(WEBHOOKS)]
    waiting: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for payload in payloads:
        waiting.put_nowait(payload)
    accepted: set[str] = set()
    kill_times: list[float] = []
    done_sending = asyncio.Event()

    async def sender(client: httpx.AsyncClient) -> None:
        # Like LoopMessage: anything but a 200 (refused, reset, 503) is sent again later.
        while not done_sending.is_set():
            try:
                payload = waiting.get_nowait()
            except asyncio.QueueEmpty:
                await asyncio.sleep(0.05)
                continue
            try:
                response = await client.post(
                    f"{api.url}/v1/webhooks/loopmessage",
                    json=payload,
                    headers={"Authorization": WEBHOOK_SECRET},
                )
                ok = response.status_code == 200
                assert response.status_code in (200, 503), response.text
            except httpx.TransportError:
                ok = False
            if ok:
                accepted.add(str(payload["webhook_id"]))
                if rng.random() < 0.2:  # LoopMessage may deliver the same webhook again
                    waiting.put_nowait(dict(payload))
            else:
                waiting.put_nowait(payload)
                await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=10.0) as client:
        senders = [asyncio.create_task(sender(client)) for _ in range(SENDERS)]
        try:
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.2, 1.2))
                await api.kill()
                kill_times.append(time.time())  # after death: anything received is before it
                # Every 200 so far must already be committed: nothing ran after the kill.
                answered = set(accepted)
                missing = answered - await stored_webhook_ids(pg_url)
                assert not missing, f"answered 200 but not stored: {sorted(missing)[:5]}"
                await api.start()
            await wait_until(lambda: len(accepted) == WEBHOOKS and waiting.empty(), timeout=60)
        finally:
            done_sending.set()
            await asyncio.gather(*senders)

    expected = {phone(n) for n in range(WEBHOOKS)}
    assert await stored_webhook_ids(pg_url) == {str(p["webhook_id"]) for p in payloads}

    async def all_delivered() -> bool:
        return set(calls_by_phone(fakes)) == expected and await all_jobs_finished(pg_url)

    await wait_until(all_delivered, timeout=60)
    counts = await job_counts(pg_url)
    assert counts == {"done": WEBHOOKS}, counts

    doubles = {number: times for number, times in calls_by_phone(fakes).items() if len(times) > 1}
    print(f"kills={len(kill_times)} double deliveries={len(doubles)} (FAULT_SEED={seed})")
    for number, times in doubles.items():
        # The first add reached Call Loop before a kill and was repeated after it: the job was
        # in flight (Call Loop answered or was answering) when the process died.
        assert any(times[0] <= kill < times[-1] for kill in kill_times), (number, times)
    assert len(doubles) <= KILLS * CONCURRENCY
