"""A worker leases at most DELIVERY_CONCURRENCY jobs at a time (never the whole queue)."""

from __future__ import annotations

import threading

from tests.conftest import ApiFactory, Fakes, opt_in_payload, wait_until
from tests.fakes.servers import Scripted


async def test_worker_claims_no_more_than_its_concurrency(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    release = threading.Event()
    fakes.callloop.state.always(Scripted(200, text="OK", hold=release))
    intake = await make_api(run_worker=False)
    for n in range(5):
        response = await intake.webhook(opt_in_payload(contact=f"+1202555{n:04d}"))
        assert response.status_code == 200
    try:
        await make_api(run_worker=True, delivery_concurrency=2)
        # Both leased adds are held at Call Loop: the worker cannot claim again meanwhile.
        await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 2)
        assert len(await intake.deliveries("in_progress")) == 2
        assert len(await intake.deliveries("pending")) == 3
    finally:
        release.set()
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 5)
