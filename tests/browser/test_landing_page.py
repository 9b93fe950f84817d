"""The demo landing page and the drop-in script in real Chromium, across real origins: the page
from one loopback origin, the service from another, the fake LoopMessage behind it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import zxingcpp
from PIL import Image
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import LinkRequest
from tests.browser.conftest import ROOT, LiveApi, LiveApiFactory, StaticSite, TabFactory
from tests.conftest import Fakes
from tests.fakes.servers import Scripted
from tests.test_links import DESKTOP, IPHONE_17

LANDING = ROOT / "examples" / "landing"
DEMO_API_ORIGIN = "http://127.0.0.1:8000"  # what the demo page names; pointed at the live API
BUTTON = "[data-optin]"
MESSAGE = "[data-optin-message]"
QR = "[data-optin-qr]"


@pytest.fixture
def landing(static_site: Any) -> StaticSite:
    site: StaticSite = static_site(LANDING)
    return site


def serve_landing_for(site: StaticSite, api: LiveApi) -> None:
    site.rewrites = {DEMO_API_ORIGIN: api.base_url}


async def state_of(page: Any) -> str:
    """Wait until the script has settled the button (ready or error), and say which."""
    await page.wait_for_selector(
        f'{BUTTON}:is([data-optin-state="ready"], [data-optin-state="error"])'
    )
    return str(await page.get_attribute(BUTTON, "data-optin-state"))


async def link_rows(db_engine: AsyncEngine) -> list[Any]:
    async with db_engine.connect() as conn:
        return list((await conn.execute(select(LinkRequest.__table__))).all())


async def test_allowed_origin_gets_the_link_with_the_pages_attribution(
    new_tab: TabFactory,
    live_api: LiveApiFactory,
    landing: StaticSite,
    fakes: Fakes,
    db_engine: AsyncEngine,
    artifacts: Path,
) -> None:
    api = await live_api(cors_allow_origins=landing.base_url)
    serve_landing_for(landing, api)
    tab = await new_tab(user_agent=DESKTOP, viewport={"width": 1100, "height": 900})
    attribution = {
        "gclid": "gclid-from-google-ads",
        "utm_source": "google",
        "utm_medium": "cpc",
        "utm_campaign": "spring roast",
        "utm_term": "coffee club",
        "utm_content": "hero",
    }
    page_url = f"{landing.base_url}/?{urlencode(attribution)}"
    await tab.page.goto(page_url)

    assert await state_of(tab.page) == "ready"
    href = await tab.page.get_attribute(BUTTON, "href")
    assert href is not None and href.startswith("https://opt-in.imsg.link/")  # desktop: url
    assert (await tab.page.text_content(MESSAGE) or "").strip() == ""

    [call] = fakes.loop.state.received("/generate-url/")
    sent = call.json()
    assert sent["click_id"] == "gclid-from-google-ads"
    assert {name: sent[name] for name in attribution if name != "gclid"} == {
        name: value for name, value in attribution.items() if name != "gclid"
    }
    assert sent["list"] == "coffee-club"  # the script tag's data-list

    [row] = await link_rows(db_engine)
    assert row.channel == "api"
    assert row.page_url == page_url
    assert row.ref == sent["optin_ref"]
    assert href.endswith(row.loop_link_id)  # the button holds the link LoopMessage made

    # On a desktop the smart link is also a QR code, drawn by the script itself: a phone's
    # camera (here zxing-cpp, on a screenshot of it) reads back exactly the button's link.
    await tab.page.wait_for_selector(f"{QR} svg", state="visible")
    picture = await tab.page.locator(f"{QR} svg").screenshot()
    decoded = zxingcpp.read_barcodes(Image.open(io.BytesIO(picture)))
    assert [code.text for code in decoded] == [href]

    await tab.page.screenshot(path=str(artifacts / "landing-page.png"), full_page=True)


@pytest.mark.parametrize(
    ("user_agent", "scheme"),
    [(IPHONE_17, "imessage://"), (DESKTOP, "https://opt-in.imsg.link/")],
    ids=["iphone", "desktop"],
)
async def test_the_button_gets_the_link_for_the_device(
    new_tab: TabFactory,
    live_api: LiveApiFactory,
    landing: StaticSite,
    user_agent: str,
    scheme: str,
) -> None:
    api = await live_api(cors_allow_origins=landing.base_url)
    serve_landing_for(landing, api)
    tab = await new_tab(user_agent=user_agent)
    await tab.page.goto(f"{landing.base_url}/?click_id=clk-device")
    assert await state_of(tab.page) == "ready"
    href = await tab.page.get_attribute(BUTTON, "href")
    assert href is not None and href.startswith(scheme)
    assert await tab.page.is_visible(f"{QR} svg") == (user_agent == DESKTOP)


async def test_origin_not_allowed_is_blocked_and_the_page_says_so(
    new_tab: TabFactory, live_api: LiveApiFactory, landing: StaticSite, fakes: Fakes
) -> None:
    api = await live_api(cors_allow_origins="https://some-other-landing.example")
    serve_landing_for(landing, api)
    tab = await new_tab(user_agent=DESKTOP)
    await tab.page.goto(f"{landing.base_url}/?click_id=clk-blocked")

    assert await state_of(tab.page) == "error"
    message = await tab.page.text_content(MESSAGE) or ""
    assert "couldn't reach our sign-up service" in message
    assert await tab.page.get_attribute(BUTTON, "href") == "#"
    assert any("blocked by CORS policy" in line for line in tab.console), tab.console
    assert fakes.loop.state.received() == []  # the preflight failed: nothing reached LoopMessage


async def test_rate_limited_visitor_gets_a_friendly_message_and_can_retry(
    new_tab: TabFactory, live_api: LiveApiFactory, landing: StaticSite, fakes: Fakes
) -> None:
    api = await live_api(cors_allow_origins=landing.base_url, rate_limit_links="1/minute")
    serve_landing_for(landing, api)
    tab = await new_tab(user_agent=DESKTOP)
    await tab.page.goto(landing.base_url + "/")
    assert await state_of(tab.page) == "ready"

    await tab.page.reload()
    assert await state_of(tab.page) == "error"
    message = await tab.page.text_content(MESSAGE) or ""
    assert "Please try again in" in message and "seconds" in message
    assert "a few seconds" not in message  # Retry-After is exposed to the page by CORS
    assert len(fakes.loop.state.received("/generate-url/")) == 1


async def test_upstream_failure_shows_a_message_and_a_retry_recovers(
    new_tab: TabFactory, live_api: LiveApiFactory, landing: StaticSite, fakes: Fakes
) -> None:
    api = await live_api(cors_allow_origins=landing.base_url)
    serve_landing_for(landing, api)
    fakes.loop.state.then(Scripted(500, {"error": "boom"}))
    tab = await new_tab(user_agent=DESKTOP)
    await tab.page.goto(landing.base_url + "/")
    assert await state_of(tab.page) == "error"
    assert "briefly unavailable" in (await tab.page.text_content(MESSAGE) or "")

    await tab.page.click(BUTTON)  # the next answer is the fake's default: a link
    await tab.page.wait_for_selector(f'{BUTTON}[data-optin-state="ready"]')
    href = await tab.page.get_attribute(BUTTON, "href")
    assert href is not None and href.startswith("https://opt-in.imsg.link/")


async def test_no_js_link_redirects_to_the_link_for_the_device(
    new_tab: TabFactory,
    live_api: LiveApiFactory,
    landing: StaticSite,
    fakes: Fakes,
    db_engine: AsyncEngine,
) -> None:
    api = await live_api(cors_allow_origins=landing.base_url)
    serve_landing_for(landing, api)
    smart_link = f"{landing.base_url}/smart-link-stand-in"  # reachable, unlike the real one
    tab = await new_tab(user_agent=DESKTOP, java_script_enabled=False)
    await tab.page.goto(landing.base_url + "/")
    fakes.loop.state.then(
        Scripted(200, {"id": "link-no-js", "imessage": "imessage://x", "url": smart_link})
    )

    async with tab.page.expect_response(lambda r: "/v1/opt-in?" in r.url) as redirect_info:
        await tab.page.click("#no-js-link")
    redirect = await redirect_info.value
    assert redirect.status == 302
    assert redirect.url.startswith(api.base_url + "/v1/opt-in?")
    assert redirect.headers["location"] == smart_link
    await tab.page.wait_for_url(smart_link)

    sent = fakes.loop.state.received("/generate-url/")[0].json()
    assert sent["utm_campaign"] == "no-js"
    [row] = await link_rows(db_engine)
    assert row.channel == "redirect"
    assert row.loop_link_id == "link-no-js"
