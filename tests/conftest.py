"""Test harness: real databases (SQLite always, PostgreSQL when TEST_POSTGRES_URL is set),
the real migrations applied once per run, fake third parties on loopback, and the app driven
through its HTTP surface."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import Base, create_engine
from app.main import create_app
from app.migrate import upgrade_head
from app.settings import Settings
from tests.fakes.servers import FakeServer, start_fake_callloop, start_fake_loopmessage

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "").strip()
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES", "") not in ("", "0", "false")

WEBHOOK_SECRET = "whsec-test-7f3a"
ADMIN_TOKEN = "admin-test-91bc"
LOOP_API_KEY = "loop-key-test-55d2"
GROUP_KEY = "grpKey123"
ALLOWED_ORIGIN = "https://landing.example"
VISITOR_IP = "203.0.113.7"

_postgres_ran = 0


def asyncpg_url(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"TEST_POSTGRES_URL must be a postgresql:// URL, not {url!r}")


@dataclass
class Database:
    kind: str
    template: str  # sqlite: migrated template file; postgres: the URL of the test database
    workdir: Path

    def fresh_url(self) -> str:
        if self.kind == "sqlite":
            target = self.workdir / f"{uuid.uuid4().hex}.db"
            shutil.copyfile(self.template, target)
            return f"sqlite+aiosqlite:///{target}"
        return self.template


async def _admin_execute(url: str, statement: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(statement))
    await engine.dispose()


async def truncate_all(url: str) -> None:
    engine = create_engine(url)
    names = ", ".join(table.name for table in Base.metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    await engine.dispose()


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    workdir = tmp_path_factory.mktemp(f"db-{request.param}")
    if request.param == "sqlite":
        template = workdir / "template.db"
        upgrade_head(f"sqlite+aiosqlite:///{template}")
        yield Database("sqlite", str(template), workdir)
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL suite skipped: TEST_POSTGRES_URL is not set")
    base = asyncpg_url(POSTGRES_URL)
    name = f"optin_test_{uuid.uuid4().hex[:10]}"
    server_url, _, _ = base.rpartition("/")
    _run(_admin_execute(base, f'CREATE DATABASE "{name}"'))
    url = f"{server_url}/{name}"
    try:
        upgrade_head(url)
        yield Database("postgres", url, workdir)
    finally:
        _run(_admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def db_url(database: Database) -> str:
    global _postgres_ran
    if database.kind == "postgres":
        _postgres_ran += 1
        await truncate_all(database.template)
    return database.fresh_url()


@pytest.fixture
async def db_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """Direct database access, for checks the HTTP surface does not expose."""
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


@dataclass
class Fakes:
    loop: FakeServer
    callloop: FakeServer

    @property
    def group_url(self) -> str:
        return f"{self.callloop.base_url}/r/?{GROUP_KEY}"


@pytest.fixture(scope="session")
def fake_servers() -> Iterator[Fakes]:
    fakes = Fakes(start_fake_loopmessage(), start_fake_callloop())
    yield fakes
    fakes.loop.stop()
    fakes.callloop.stop()


@pytest.fixture
def fakes(fake_servers: Fakes) -> Fakes:
    fake_servers.loop.state.reset()
    fake_servers.callloop.state.reset()
    return fake_servers


def base_settings(db_url: str, fakes: Fakes, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "log_format": "json",
        "loop_api_key": LOOP_API_KEY,
        "loop_api_base_url": fakes.loop.base_url,
        "loop_webhook_secret": WEBHOOK_SECRET,
        "admin_token": ADMIN_TOKEN,
        "callloop_group_url": fakes.group_url,
        "cors_allow_origins": ALLOWED_ORIGIN,
        "rate_limit_links": "1000/minute",
        "loop_timeout_seconds": 2.0,
        "callloop_timeout_seconds": 2.0,
        "delivery_poll_interval_seconds": 0.2,
        "delivery_backoff_base_seconds": 0.05,
        "delivery_backoff_max_seconds": 0.2,
        "delivery_max_attempts": 4,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Api:
    """The app under test, driven through HTTP (ASGI transport, real lifespan)."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings, app: Any) -> None:
        self.client = client
        self.settings = settings
        self.app = app

    async def webhook(self, payload: Any, secret: str | None = WEBHOOK_SECRET) -> httpx.Response:
        headers = {"Authorization": secret} if secret is not None else {}
        return await self.client.post("/v1/webhooks/loopmessage", json=payload, headers=headers)

    async def admin_get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(
            path, params=params, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )

    async def admin_post(self, path: str) -> httpx.Response:
        return await self.client.post(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    async def deliveries(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        response = await self.admin_get("/v1/deliveries", limit=1000, **params)
        assert response.status_code == 200, response.text
        return list(response.json()["items"])


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(db_url: str, fakes: Fakes) -> AsyncIterator[ApiFactory]:
    stack: list[tuple[Any, httpx.AsyncClient]] = []

    async def factory(**overrides: Any) -> Api:
        settings = base_settings(db_url, fakes, **overrides)
        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        transport = httpx.ASGITransport(app=app, client=(VISITOR_IP, 40000))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        stack.append((lifespan, client))
        return Api(client, settings, app)

    yield factory
    for lifespan, client in reversed(stack):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll until `predicate()` (sync or async) is truthy; fail with a clear message if not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def opt_in_payload(
    contact: str = "+15555550123",
    webhook_id: str | None = None,
    **parameters: str,
) -> dict[str, Any]:
    """A completed opt-in webhook as LoopMessage's docs show it."""
    return {
        "contact": contact,
        "event": "message_inbound",
        "type": "opt_in",
        "language": {"code": "en", "name": "English"},
        "message_id": str(uuid.uuid4()),
        "organization_id": "e2229e7b-29df-486d-924e-7dae925b0796",
        "parameters": parameters,
        "text": "Yes, send me text updates!",
        "webhook_id": webhook_id or str(uuid.uuid4()),
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if POSTGRES_URL:
        terminalreporter.write_line(
            f"PostgreSQL suite: {_postgres_ran} tests ran against PostgreSQL"
        )
    else:
        terminalreporter.write_line(
            "PostgreSQL suite SKIPPED: TEST_POSTGRES_URL is not set "
            "(e.g. TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test make test)",
            yellow=True,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_POSTGRES and _postgres_ran == 0 and session.testscollected:
        print("\nREQUIRE_POSTGRES is set but no test ran against PostgreSQL")
        session.exitstatus = 1
