"""A standalone worker on PostgreSQL starts new jobs on the NOTIFY, not at its next poll."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.delivery.worker import DeliveryWorker
from app.main import build_services, close_services
from tests.conftest import ApiFactory, Database, Fakes, base_settings, opt_in_payload, wait_until


@pytest.fixture
async def standalone_worker(
    database: Database, db_url: str, fakes: Fakes
) -> AsyncIterator[DeliveryWorker]:
    """A worker of its own (not the API's), listening, that polls far less often than the tests
    wait: only a notification can start a job in time."""
    if database.kind != "postgres":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL only; SQLite runs the worker in-process")
    worker_settings = base_settings(db_url, fakes, delivery_poll_interval_seconds=300.0)
    services = build_services(worker_settings)
    worker = DeliveryWorker(services.engine, worker_settings, services.callloop, None)
    services.worker = worker
    worker.start()
    try:
        await wait_until(lambda: worker.listening, timeout=20)
        yield worker
    finally:
        await close_services(services)


async def test_standalone_worker_is_woken_by_notify(
    standalone_worker: DeliveryWorker, make_api: ApiFactory, fakes: Fakes
) -> None:
    api = await make_api(run_worker=False)
    await wait_until(lambda: fakes.callloop.state.received() == [], timeout=1)

    response = await api.webhook(opt_in_payload(contact="+15555550142"))
    assert response.json()["status"] == "stored"

    calls = await wait_until(lambda: fakes.callloop.state.received("/r/"), timeout=20)
    assert "phone=%2B15555550142" in calls[0].raw_target


async def test_standalone_worker_is_woken_for_jobs_queued_outside_the_intake(
    standalone_worker: DeliveryWorker, make_api: ApiFactory, fakes: Fakes
) -> None:
    api = await make_api(run_worker=False)
    assert (await api.webhook(opt_in_payload(contact="+15555550143"))).status_code == 200
    await wait_until(lambda: fakes.callloop.state.received("/r/"), timeout=20)

    # An operator's opt-out queues the Call Loop /s/ job from the admin API.
    response = await api.admin_post("/v1/subscribers/+15555550143/opt-out")
    assert response.json()["opt_out_jobs"] == 1

    calls = await wait_until(lambda: fakes.callloop.state.received("/s/"), timeout=20)
    assert "phone=%2B15555550143" in calls[0].raw_target
