"""`python -m app.worker`: the delivery worker on its own, without the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from app.delivery.worker import DeliveryWorker
from app.main import build_services, close_services
from app.observability import configure_logging
from app.settings import Settings, secret_values

log = logging.getLogger("optin.worker")


def serve_metrics(settings: Settings) -> WSGIServer | None:
    """The worker's own Prometheus endpoint (Call Loop latency, delivery attempts, queue gauges
    from its heartbeat), when WORKER_METRICS_PORT is set."""
    if settings.worker_metrics_port is None:
        return None
    server, _thread = start_http_server(settings.worker_metrics_port, addr=settings.host)
    log.info(
        "worker metrics served", extra={"host": settings.host, "port": settings.worker_metrics_port}
    )
    return server


async def run_worker(settings: Settings) -> None:
    metrics_server = serve_metrics(settings)
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
        if metrics_server is not None:
            metrics_server.shutdown()


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, secret_values(settings))
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
