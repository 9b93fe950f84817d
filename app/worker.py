"""`python -m app.worker`: the delivery worker on its own, without the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from app.delivery.worker import DeliveryWorker
from app.main import build_services, close_services
from app.observability import configure_logging
from app.settings import Settings, secret_values

log = logging.getLogger("optin.worker")


async def run_worker(settings: Settings) -> None:
    services = build_services(settings)
    worker = DeliveryWorker(
        services.engine, settings, services.callloop, services.loopmessage, writer=services.writer
    )
    services.worker = worker
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    worker.start()
    try:
        await stop.wait()
        log.info("stopping: finishing jobs in hand")
    finally:
        await close_services(services)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, secret_values(settings))
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
