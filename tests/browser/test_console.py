"""The admin console in a real Chromium: sign-in, the numbers, a search, a retry, escaping,
console errors, axe-core, and a phone-width screenshot of every page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.conftest import LiveApi as Live
from tests.browser.conftest import LiveApiFactory as LiveFactory
from tests.browser.conftest import Tab
from tests.browser.conftest import TabFactory as NewTab
from tests.conftest import ADMIN_TOKEN, Fakes, wait_until
from tests.fakes.servers import Scripted
from tests.test_console import link, opt_in

PHONE = {"width": 375, "height": 812}

XSS = "<img src=x onerror=alert(document.domain)>"


async def deliveries(live: Live, status: str) -> list[dict[str, Any]]:
    return list((await live.admin_get("/v1/deliveries", status=status))["items"])


async def done_count(live: Live, n: int) -> bool:
    return len(await deliveries(live, "done")) == n


async def sign_in(tab: Tab, live: Live, token: str = ADMIN_TOKEN) -> None:
    page = tab.page
    await page.goto(f"{live.base_url}/admin")
    assert page.url.endswith("/admin/login")
    # Keyboard only: the token field has the focus (autofocus), Enter submits.
    await page.wait_for_function("document.activeElement && document.activeElement.id === 'token'")
    await page.keyboard.type(token)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    if token == ADMIN_TOKEN:
        assert page.url == f"{live.base_url}/admin", await page.locator("main").inner_text()


async def seed(live: Live) -> dict[str, Any]:
    """Spring: 3 link requests, 2 opt-ins; summer: 1 and 1; all delivered."""
    spring = [
        await link(live, utm_campaign="spring", utm_source="google", click_id=f"clk-spring-{i}")
        for i in range(3)
    ]
    summer = await link(live, utm_campaign="summer", click_id="clk-summer")
    await opt_in(
        live,
        "+15555550201",
        spring[0]["ref"],
        utm_campaign="spring",
        utm_source="google",
        click_id="clk-spring-0",
    )
    await opt_in(
        live,
        "+15555550202",
        spring[1]["ref"],
        utm_campaign="spring",
        utm_source="google",
        click_id="clk-spring-1",
    )
    await opt_in(live, "+15555550203", summer["ref"], utm_campaign="summer", click_id="clk-summer")
    await wait_until(lambda: done_count(live, 3))
    return {"spring": spring, "summer": summer}


def assert_clean(tab: Tab) -> None:
    assert tab.page_errors == [], tab.page_errors
    assert tab.console_errors == [], tab.console_errors
    assert tab.dialogs == [], tab.dialogs


async def test_sign_in_wrong_then_right_token(live_api: LiveFactory, new_tab: NewTab) -> None:
    server = await live_api()
    await seed(server)
    tab = await new_tab()
    await sign_in(tab, server, "wrong-token")
    page = tab.page
    alert = page.get_by_role("alert")
    assert "That token is not right" in await alert.inner_text()
    assert await page.locator("#campaigns").count() == 0
    assert "spring" not in await page.content()

    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Overview").wait_for()
    assert page.url.endswith("/admin")

    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("heading", name="Sign in").wait_for()
    await page.goto(f"{server.base_url}/admin/opt-ins")
    assert page.url.endswith("/admin/login")
    # A wrong token answers 401, which Chromium logs as a failed resource load.
    tab.console_errors = [line for line in tab.console_errors if "401" not in line]
    assert_clean(tab)


async def cells(tab: Tab, campaign: str) -> dict[str, str]:
    row = tab.page.locator(f'tr[data-campaign="{campaign}"]')
    values = {}
    for cell in await row.locator("td").all():
        values[str(await cell.get_attribute("data-col"))] = (await cell.inner_text()).strip()
    return values


async def test_overview_numbers_equal_what_was_created(
    live_api: LiveFactory, new_tab: NewTab
) -> None:
    server = await live_api()
    await seed(server)
    tab = await new_tab()
    await sign_in(tab, server)
    spring = await cells(tab, "spring")
    assert spring["link_requests"] == "3"
    assert spring["opt_ins"] == "2"
    assert spring["conversion"] == "66.7 %"
    assert spring["delivered"] == "2"
    assert (spring["pending"], spring["dead"], spring["opted_out"]) == ("0", "0", "0")
    summer = await cells(tab, "summer")
    assert (summer["link_requests"], summer["opt_ins"], summer["conversion"]) == (
        "1",
        "1",
        "100.0 %",
    )
    total = await cells(tab, "__total__")
    assert (total["link_requests"], total["opt_ins"], total["delivered"]) == ("4", "3", "3")
    bars = tab.page.locator("svg rect.bar")
    counts = [int(str(await bar.get_attribute("data-count"))) for bar in await bars.all()]
    assert sum(counts) == 3

    stats = await server.admin_get("/v1/stats")
    api_spring = next(item for item in stats["items"] if item["utm_campaign"] == "spring")
    assert (api_spring["link_requests"], api_spring["opt_ins"]) == (3, 2)

    # Keyboard: the first Tab reaches the skip link, which moves the focus to the content.
    await tab.page.keyboard.press("Tab")
    assert await tab.page.evaluate("document.activeElement.textContent") == "Skip to content"
    await tab.page.keyboard.press("Enter")
    assert await tab.page.evaluate("document.activeElement.id") == "main"

    # The 30-day window through the form.
    await tab.page.get_by_label("Window", exact=True).select_option("30d")
    await tab.page.get_by_role("button", name="Show").click()
    await tab.page.wait_for_url("**window=30d**")
    assert (await cells(tab, "spring"))["opt_ins"] == "2"
    assert_clean(tab)


async def test_find_an_opt_in_by_click_id_and_see_its_consent(
    live_api: LiveFactory, new_tab: NewTab
) -> None:
    server = await live_api()
    await seed(server)
    tab = await new_tab()
    await sign_in(tab, server)
    page = tab.page
    await page.get_by_role("link", name="Opt-ins").click()
    await page.get_by_label("Click id").fill("clk-spring-1")
    await page.get_by_label("Click id").press("Enter")
    await page.wait_for_url("**click_id=clk-spring-1**")
    rows = page.locator("#opt-ins tbody tr")
    assert await rows.count() == 1
    assert "+1******0202" in await rows.inner_text()
    await rows.get_by_role("link").click()
    await page.get_by_role("heading", name="Consent record").wait_for()
    consent = await page.locator("#consent-record").inner_text()
    assert "link_request" in consent
    assert "127.0.0.1" in consent  # the IP the link request came from
    assert "[opt-in-code]" in consent  # the exact text offered
    assert "+15555550202" in await page.content()
    history = await page.locator("#deliveries").inner_text()
    assert "subscribe" in history and "done" in history
    assert_clean(tab)


async def test_dead_delivery_is_retried_from_the_page_and_delivered(
    live_api: LiveFactory, new_tab: NewTab, fakes: Fakes
) -> None:
    server = await live_api()
    fakes.callloop.state.then(Scripted(404, text="no such group"))
    await opt_in(server, "+15555550210", utm_campaign="spring")
    [dead] = await wait_until(lambda: deliveries(server, "dead"))
    tab = await new_tab()
    await sign_in(tab, server)
    page = tab.page
    await page.get_by_role("link", name="Deliveries").click()
    row = page.locator(f'#dead-jobs tr[data-job="{dead["id"]}"]')
    assert "HTTP 404" in await row.inner_text()
    await row.get_by_role("link", name=f"Retry job {dead['id']}").click()
    await page.get_by_role("button", name=f"Yes, retry job {dead['id']}").click()
    notice = page.get_by_role("status")
    assert "1 delivery job(s) queued again" in await notice.inner_text()
    await wait_until(lambda: done_count(server, 1))
    await page.reload()
    assert await page.locator('[data-status="dead"]').inner_text() == "0"
    assert await page.locator('[data-status="done"]').inner_text() == "1"
    assert len(fakes.callloop.state.received("/r/")) == 2
    assert_clean(tab)


async def test_hostile_utm_shows_as_text_and_runs_nothing(
    live_api: LiveFactory, new_tab: NewTab
) -> None:
    server = await live_api()
    created = await link(server, utm_campaign=XSS, click_id="clk-xss")
    await opt_in(server, "+15555550220", created["ref"], utm_campaign=XSS, click_id="clk-xss")
    tab = await new_tab()
    await sign_in(tab, server)
    page = tab.page
    assert XSS in await page.locator("#campaigns").inner_text()
    assert await page.locator("main img").count() == 0
    await page.goto(f"{server.base_url}/admin/opt-ins?click_id=clk-xss")
    assert XSS in await page.locator("#opt-ins").inner_text()
    await page.locator("#opt-ins tbody a").click()
    await page.get_by_role("heading", name="Attribution").wait_for()
    assert XSS in await page.locator("main").inner_text()
    assert await page.locator("img").count() == 0
    assert tab.dialogs == []
    assert_clean(tab)


async def axe_serious(page: Any) -> list[str]:
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page)
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']}"
        for violation in results.response["violations"]
        if violation.get("impact") in ("serious", "critical")
    ]


async def test_every_page_is_clean_accessible_and_fits_a_phone(
    live_api: LiveFactory, new_tab: NewTab, fakes: Fakes, artifacts: Path
) -> None:
    server = await live_api()
    await seed(server)
    fakes.callloop.state.then(Scripted(404, text="no such group"))
    await opt_in(server, "+15555550230", utm_campaign="a-rather-long-campaign-name-for-phones")
    await wait_until(lambda: deliveries(server, "dead"))
    opt_in_id = (await server.admin_get("/v1/opt-ins"))["items"][0]["id"]

    tab = await new_tab(viewport=PHONE, is_mobile=True, has_touch=True)
    page = tab.page
    await page.goto(f"{server.base_url}/admin/login")
    pages = {"login": None}
    problems: dict[str, list[str]] = {}
    problems["login"] = await axe_serious(page)
    await page.screenshot(path=str(artifacts / "console-phone-login.png"), full_page=True)
    await sign_in(tab, server)
    pages = {
        "overview": "/admin",
        "opt-ins": "/admin/opt-ins",
        "opt-in": f"/admin/opt-ins/{opt_in_id}",
        "confirm-opt-out": f"/admin/opt-ins/{opt_in_id}/opt-out",
        "deliveries": "/admin/deliveries",
        "confirm-retry-dead": "/admin/deliveries/retry-dead",
        "health": "/admin/health",
    }
    for name, path in pages.items():
        await page.goto(f"{server.base_url}{path}")
        await page.wait_for_load_state("networkidle")
        problems[name] = await axe_serious(page)
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at phone width"
        await page.screenshot(path=str(artifacts / f"console-phone-{name}.png"), full_page=True)
    assert {name: found for name, found in problems.items() if found} == {}
    assert_clean(tab)

    # A desktop-width view of the overview, for the README (copied to docs/ by hand).
    desk = await new_tab(viewport={"width": 1200, "height": 800})
    await sign_in(desk, server)
    await desk.page.screenshot(path=str(artifacts / "console-overview-desktop.png"), full_page=True)
    assert_clean(desk)
