"""What the HTTP routes get from the app: settings, engine, clients, worker; admin auth."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app.clientip import client_ip
from app.clients.callloop import CallLoopClient
from app.clients.loopmessage import LoopMessageClient
from app.delivery.worker import DeliveryWorker
from app.errors import ServiceError, not_configured
from app.groupcommit import GroupCommitter
from app.ratelimit import ClientRateLimiter
from app.settings import Settings


@dataclass
class Services:
    """Everything the app's lifespan opens, and closes again."""

    settings: Settings
    engine: AsyncEngine
    callloop: CallLoopClient
    loopmessage: LoopMessageClient | None
    rate_limiter: ClientRateLimiter  # link requests per client IP
    admin_failures: ClientRateLimiter  # wrong admin tokens per client IP
    # The hot write paths (webhook intake, link requests) commit through here, in batches.
    writer: GroupCommitter
    worker: DeliveryWorker | None = None
    migration_head: str | None = None

    def require_loopmessage(self) -> LoopMessageClient:
        if self.loopmessage is None:
            raise not_configured("LOOP_API_KEY", "Opt-in link generation")
        return self.loopmessage

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
    # on every request of the hot routes.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def check_bearer(header: str | None, secret: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.encode(), secret.encode())


def client_key(request: Request, services: Services) -> str:
    return client_ip(request, services.settings.trusted_proxies) or "unknown"


async def require_admin(request: Request, services: ServicesDep) -> None:
    """Bearer ADMIN_TOKEN, compared in constant time; unset token disables the admin API.
    An address that sent RATE_LIMIT_ADMIN_FAILURES wrong tokens gets 429 for a while."""
    token = services.settings.admin_token
    if token is None:
        raise not_configured("ADMIN_TOKEN", "The admin API")
    client = client_key(request, services)
    await services.admin_failures.refuse_if_exhausted(client)
    if not check_bearer(request.headers.get("authorization"), token.get_secret_value()):
        await services.admin_failures.record(client)
        raise ServiceError(
            401,
            "unauthorized",
            "a valid admin bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


AdminDep = Depends(require_admin)
