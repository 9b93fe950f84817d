"""Fixtures for the console's real-browser tests: Debian's Chromium through Playwright (never a
downloaded browser) and the service on a real uvicorn server, on the test's database with the
fake third parties behind it. Kept small and local; the lead may merge it with tests/browser/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN_TOKEN, Fakes, base_settings
from tests.fakes.servers import free_port

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
NO_CHROMIUM = f"console browser tests skipped: {CHROMIUM} is missing (apt-get install chromium)"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PHONE = {"width": 375, "height": 812}


class LiveServer:
    """create_app(settings) served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            log_config=None,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(RuntimeError):
            self.thread.join(timeout=10)


@dataclass
class Live:
    """The running service, and an HTTP client for the public and admin API."""

    server: LiveServer
    http: httpx.AsyncClient

    @property
    def client(self) -> httpx.AsyncClient:
        return self.http

    @property
    def base_url(self) -> str:
        return self.server.base_url

    async def admin_get(self, path: str, **params: Any) -> Any:
        response = await self.http.get(
            path, params=params, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert response.status_code == 200, response.text
        return response.json()


LiveFactory = Callable[..., Awaitable[Live]]


@pytest.fixture
async def live(db_url: str, fakes: Fakes) -> AsyncIterator[LiveFactory]:
    started: list[Live] = []

    async def factory(**overrides: Any) -> Live:
        server = await asyncio.to_thread(
            LiveServer(base_settings(db_url, fakes, **overrides)).start
        )
        running = Live(server, httpx.AsyncClient(base_url=server.base_url, timeout=10))
        started.append(running)
        return running

    yield factory
    for running in started:
        await running.http.aclose()
        await asyncio.to_thread(running.server.stop)


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@dataclass
class Tab:
    page: Any  # playwright.async_api.Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


TabFactory = Callable[..., Awaitable[Tab]]


@pytest.fixture
async def new_tab(chromium: Any) -> AsyncIterator[TabFactory]:
    """A fresh context and page that records console errors, uncaught errors and dialogs."""
    contexts: list[Any] = []

    async def factory(**context_options: Any) -> Tab:
        context = await chromium.new_context(**context_options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        tab = Tab(await context.new_page())

        def on_console(message: Any) -> None:
            if message.type in ("error", "warning"):
                tab.console_errors.append(f"{message.type}: {message.text}")

        async def on_dialog(dialog: Any) -> None:
            tab.dialogs.append(dialog.message)
            await dialog.dismiss()

        tab.page.on("console", on_console)
        tab.page.on("pageerror", lambda error: tab.page_errors.append(str(error)))
        tab.page.on("dialog", on_dialog)
        return tab

    yield factory
    for context in contexts:
        await context.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
