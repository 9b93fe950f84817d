"""A standalone worker on PostgreSQL starts new jobs on the NOTIFY, not at its next poll."""

from __future__ import annotations

import pytest

from app.delivery.worker import DeliveryWorker
from app.main import build_services, close_services
from tests.conftest import ApiFactory, Database, Fakes, base_settings, opt_in_payload, wait_until


async def test_standalone_worker_is_woken_by_notify(
    database: Database, db_url: str, make_api: ApiFactory, fakes: Fakes
) -> None:
    if database.kind != "postgres":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL only; SQLite runs the worker in-process")
    # A poll interval far longer than the wait below: only the notification can start the job.
    worker_settings = base_settings(db_url, fakes, delivery_poll_interval_seconds=300.0)
    services = build_services(worker_settings)
    worker = DeliveryWorker(services.engine, worker_settings, services.callloop, None)
    services.worker = worker
    worker.start()
    try:
        api = await make_api(run_worker=False)
        await wait_until(lambda: worker.listening, timeout=20)
        await wait_until(lambda: fakes.callloop.state.received() == [], timeout=1)

        response = await api.webhook(opt_in_payload(contact="+15555550142"))
        assert response.json()["status"] == "stored"

        calls = await wait_until(lambda: fakes.callloop.state.received("/r/"), timeout=20)
        assert "phone=%2B15555550142" in calls[0].raw_target
    finally:
        await close_services(services)


async def test_standalone_worker_is_woken_for_jobs_queued_outside_the_intake(
    database: Database, db_url: str, make_api: ApiFactory, fakes: Fakes
) -> None:
    if database.kind != "postgres":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL only; SQLite runs the worker in-process")
    worker_settings = base_settings(db_url, fakes, delivery_poll_interval_seconds=300.0)
    services = build_services(worker_settings)
    worker = DeliveryWorker(services.engine, worker_settings, services.callloop, None)
    services.worker = worker
    worker.start()
    try:
        api = await make_api(run_worker=False)
        await wait_until(lambda: worker.listening, timeout=20)
        assert (await api.webhook(opt_in_payload(contact="+15555550143"))).status_code == 200
        await wait_until(lambda: fakes.callloop.state.received("/r/"), timeout=20)

        # An operator's opt-out queues the Call Loop /s/ job from the admin API.
        response = await api.admin_post("/v1/subscribers/+15555550143/opt-out")
        assert response.json()["opt_out_jobs"] == 1

        calls = await wait_until(lambda: fakes.callloop.state.received("/s/"), timeout=20)
        assert "phone=%2B15555550143" in calls[0].raw_target
    finally:
        await close_services(services)
