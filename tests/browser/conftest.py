"""Real-browser fixtures: Debian's Chromium driven by Playwright, the service served by a real
uvicorn on one loopback origin, static pages on another.

Reusable by any browser-facing test (the landing script, the admin console):
- `browser`: one headless Chromium for the whole session;
- `new_tab(user_agent=None, **context_options)`: a fresh browser context and page, whose
  uncaught page errors fail the test; `tab.console` keeps the console lines;
- `live_api(**settings_overrides)`: `create_app(settings)` on a free port, in a thread, on the
  test's database (`db_url`) with the fake third parties behind it (`fakes`);
- `static_site(root)`: a directory served on its own origin (`site.rewrites` edits the HTML on
  the way out, e.g. a page's API origin to the live one).
Every file here is marked `browser`; without /usr/bin/chromium the tests are skipped with the
reason, unless REQUIRE_BROWSER=1 (CI), which turns that into a failure.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN_TOKEN, Fakes, base_settings
from tests.fakes.servers import ThreadedServer

# Playwright must never fetch a browser of its own: the one under test is Debian's.
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))  # Debian's package
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
REQUIRE_BROWSER = os.environ.get("REQUIRE_BROWSER", "") not in ("", "0", "false")
SKIP_REASON = (
    f"browser suite skipped: {CHROMIUM} is missing "
    "(apt-get install -y --no-install-recommends chromium)"
)
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
HERE = Path(__file__).resolve().parent

_browser_ran = 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in item.path.parents:
            continue
        item.add_marker(pytest.mark.browser)
        if not CHROMIUM.exists() and not REQUIRE_BROWSER:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if _browser_ran:
        terminalreporter.write_line(f"Browser suite: {_browser_ran} tests ran in {CHROMIUM}")
    elif not CHROMIUM.exists():
        terminalreporter.write_line(SKIP_REASON.replace("skipped", "SKIPPED"), yellow=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_BROWSER and _browser_ran == 0 and session.testscollected:
        print("\nREQUIRE_BROWSER is set but no test ran in Chromium")
        session.exitstatus = 1


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"REQUIRE_BROWSER is set but {CHROMIUM} is missing", pytrace=False)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        await chromium.close()


@dataclass
class Tab:
    page: Any  # playwright.async_api.Page
    errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page
    console: list[str] = field(default_factory=list)  # "type: text" of every console line
    console_errors: list[str] = field(default_factory=list)  # console errors and warnings
    dialogs: list[str] = field(default_factory=list)  # alert/confirm texts (dismissed)

    @property
    def page_errors(self) -> list[str]:
        return self.errors


TabFactory = Callable[..., Awaitable[Tab]]


@pytest.fixture
async def new_tab(browser: Any) -> AsyncIterator[TabFactory]:
    global _browser_ran
    _browser_ran += 1
    contexts: list[Any] = []
    tabs: list[Tab] = []

    async def factory(user_agent: str | None = None, **context_options: Any) -> Tab:
        if user_agent:
            context_options["user_agent"] = user_agent
        context = await browser.new_context(**context_options)
        contexts.append(context)
        context.set_default_timeout(15_000)
        tab = Tab(await context.new_page())
        tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))

        def on_console(message: Any) -> None:
            line = f"{message.type}: {message.text}"
            tab.console.append(line)
            if message.type in ("error", "warning"):
                tab.console_errors.append(line)

        async def on_dialog(dialog: Any) -> None:
            tab.dialogs.append(dialog.message)
            await dialog.dismiss()

        tab.page.on("console", on_console)
        tab.page.on("dialog", on_dialog)
        tabs.append(tab)
        return tab

    yield factory
    for context in contexts:
        await context.close()
    broken = [error for tab in tabs for error in tab.errors]
    assert not broken, f"uncaught errors in the page: {broken}"


@dataclass
class LiveApi:
    base_url: str
    settings: Settings
    server: ThreadedServer
    client: httpx.AsyncClient  # plain HTTP to the same server, for set-up and checks

    async def admin_get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(
            path, params=params, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert response.status_code == 200, response.text
        return response.json()


LiveApiFactory = Callable[..., Awaitable[LiveApi]]


@pytest.fixture
async def live_api(db_url: str, fakes: Fakes) -> AsyncIterator[LiveApiFactory]:
    started: list[LiveApi] = []

    async def factory(**overrides: Any) -> LiveApi:
        settings = base_settings(db_url, fakes, **overrides)
        server = ThreadedServer(create_app(settings), lifespan="on")
        await asyncio.to_thread(server.start)
        client = httpx.AsyncClient(base_url=server.base_url, timeout=10)
        started.append(LiveApi(server.base_url, settings, server, client))
        return started[-1]

    yield factory
    for live in started:
        await live.client.aclose()
        await asyncio.to_thread(live.server.stop)


class StaticSite(ThreadedServer):
    """Files under `root` on their own origin, never cached; `rewrites` apply to HTML."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.rewrites: dict[str, str] = {}
        super().__init__(Starlette(routes=[Route("/{path:path}", self._serve)]))

    async def _serve(self, request: Request) -> Response:
        target = (self.root / request.path_params["path"]).resolve()
        if target.is_dir():
            target = target / "index.html"
        if self.root not in target.parents or not target.is_file():
            return PlainTextResponse("not found", status_code=404)
        media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        content = target.read_bytes()
        if media_type == "text/html":
            text = content.decode()
            for old, new in self.rewrites.items():
                text = text.replace(old, new)
            content = text.encode()
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-store"})


@pytest.fixture(scope="session")
def static_site() -> Iterator[Callable[[Path], StaticSite]]:
    sites: dict[Path, StaticSite] = {}

    def factory(root: Path) -> StaticSite:
        if root not in sites:
            sites[root] = StaticSite(root).start()
        site = sites[root]
        site.rewrites = {}
        return site

    yield factory
    for site in sites.values():
        site.stop()


@pytest.fixture
def artifacts() -> Path:
    """test-artifacts/ at the repository root (gitignored): screenshots worth keeping."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
