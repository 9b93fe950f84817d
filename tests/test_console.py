"""The admin console at /admin and GET /v1/stats, driven through HTTP like a browser would."""

from __future__ import annotations

import re
from html import unescape
from typing import Any, Protocol

import httpx

from tests.conftest import (
    ADMIN_TOKEN,
    GROUP_KEY,
    LOOP_API_KEY,
    WEBHOOK_SECRET,
    Api,
    ApiFactory,
    Fakes,
    opt_in_payload,
    wait_until,
)
from tests.fakes.servers import Scripted

XSS = "<img src=x onerror=alert(1)>"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token in the page"
    return unescape(match.group(1))


async def sign_in(client: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> httpx.Response:
    form = await client.get("/admin/login")
    assert form.status_code == 200
    return await client.post(
        "/admin/login", data={"token": token, "csrf_token": csrf_of(form.text)}
    )


async def signed_in(api: Api) -> str:
    """Sign the api's client in; returns the session's CSRF token."""
    response = await sign_in(api.client)
    assert response.status_code == 303, response.text
    page = await api.client.get("/admin")
    assert page.status_code == 200
    return csrf_of(page.text)


class HasClient(Protocol):
    """The HTTP-level `Api` here, or the browser tests' live server."""

    @property
    def client(self) -> httpx.AsyncClient: ...


async def link(api: HasClient, **fields: Any) -> dict[str, Any]:
    """A link request through POST /v1/opt-in-links (the fake LoopMessage answers)."""
    response = await api.client.post("/v1/opt-in-links", json=fields)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def opt_in(api: HasClient, contact: str, ref: str | None = None, **parameters: str) -> None:
    """A completed opt-in webhook, tied to a link request when `ref` is given."""
    if ref:
        parameters["optin_ref"] = ref
    response = await api.client.post(
        "/v1/webhooks/loopmessage",
        json=opt_in_payload(contact=contact, **parameters),
        headers={"Authorization": WEBHOOK_SECRET},
    )
    assert response.status_code == 200, response.text


def cell(html: str, campaign: str, column: str) -> str:
    row = re.search(rf'<tr data-campaign="{re.escape(campaign)}">(.*?)</tr>', html, re.S)
    assert row, f"no row for campaign {campaign!r}"
    value = re.search(rf'data-col="{column}">([^<]*)<', row.group(1))
    assert value, f"no {column} cell"
    return value.group(1).strip()


# --- sign-in ---------------------------------------------------------------------------------


async def test_pages_need_a_session(api: Api) -> None:
    for path in ("/admin", "/admin/opt-ins", "/admin/opt-ins/1", "/admin/deliveries"):
        response = await api.client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/admin/login"
    posted = await api.client.post("/admin/deliveries/retry-dead", data={"csrf_token": "x"})
    assert posted.status_code == 303
    assert posted.headers["location"] == "/admin/login"


async def test_wrong_token_shows_an_error_and_no_data(api: Api) -> None:
    spring = await link(api, utm_campaign="spring-secret-campaign")
    await opt_in(api, "+15555550140", spring["ref"], utm_campaign="spring-secret-campaign")

    wrong = await sign_in(api.client, "not-the-token")
    assert wrong.status_code == 401
    assert "That token is not right" in wrong.text
    assert "spring-secret-campaign" not in wrong.text
    assert "optin_console=" not in wrong.headers.get("set-cookie", "")
    assert (await api.client.get("/admin")).status_code == 303

    right = await sign_in(api.client)
    assert right.status_code == 303
    assert right.headers["location"] == "/admin"
    cookie = next(
        value
        for value in right.headers.get_list("set-cookie")
        if value.startswith("optin_console=")
    )
    attributes = cookie.lower()
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "max-age=28800" in attributes
    assert "path=/admin" in attributes
    assert "secure" not in attributes  # plain HTTP here
    assert ADMIN_TOKEN not in cookie

    overview = await api.client.get("/admin")
    assert overview.status_code == 200
    assert "spring-secret-campaign" in overview.text


async def test_guessing_the_token_is_slowed_down(make_api: ApiFactory) -> None:
    api = await make_api(rate_limit_admin_failures="3/minute")
    for _ in range(2):
        assert (await sign_in(api.client, "guess")).status_code == 401
    # The admin API's wrong tokens count against the same budget.
    wrong_bearer = await api.client.get("/v1/deliveries", headers={"Authorization": "Bearer guess"})
    assert wrong_bearer.status_code == 401

    refused = await sign_in(api.client)  # the right token, but too late
    assert refused.status_code == 429
    assert "Too many wrong tokens" in refused.text
    assert int(refused.headers["retry-after"]) > 0
    assert "optin_console=" not in refused.headers.get("set-cookie", "")
    api_refused = await api.admin_get("/v1/deliveries")
    assert api_refused.status_code == 429
    assert api_refused.json()["code"] == "rate_limited"
    assert int(api_refused.headers["retry-after"]) > 0


async def test_session_cookie_is_secure_over_https(api: Api) -> None:
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        response = await sign_in(client)
    assert response.status_code == 303
    session_cookie = next(
        value
        for value in response.headers.get_list("set-cookie")
        if value.startswith("optin_console=")
    )
    assert "secure" in session_cookie.lower()


def _session_cookie(response: httpx.Response) -> str:
    return next(
        value
        for value in response.headers.get_list("set-cookie")
        if value.startswith("optin_console=")
    )


async def test_session_cookie_is_secure_behind_a_trusted_tls_proxy(make_api: ApiFactory) -> None:
    untrusted = await make_api()
    untrusted.client.headers["X-Forwarded-Proto"] = "https"
    assert "secure" not in _session_cookie(await sign_in(untrusted.client)).lower()

    proxied = await make_api(trusted_proxies="203.0.113.0/24")
    headers = {"X-Forwarded-Proto": "https"}
    form = await proxied.client.get("/admin/login", headers=headers)
    assert "secure" in form.headers["set-cookie"].lower()
    # The client keeps Secure cookies for HTTPS, so the form cookie is sent back by hand.
    headers["Cookie"] = form.headers["set-cookie"].split(";")[0]
    response = await proxied.client.post(
        "/admin/login",
        data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form.text)},
        headers=headers,
    )
    assert response.status_code == 303
    assert "secure" in _session_cookie(response).lower()


async def test_login_form_needs_its_csrf_token(api: Api) -> None:
    await api.client.get("/admin/login")
    response = await api.client.post("/admin/login", data={"token": ADMIN_TOKEN})
    assert response.status_code == 403
    assert "optin_console=" not in response.headers.get("set-cookie", "")


async def test_a_forged_or_foreign_session_cookie_is_refused(make_api: ApiFactory) -> None:
    first = await make_api()
    await signed_in(first)
    stolen = first.client.cookies.get("optin_console")
    assert stolen
    other = await make_api(admin_token="a-different-admin-token")
    other.client.cookies.set("optin_console", stolen, path="/admin")
    assert (await other.client.get("/admin")).status_code == 303
    first.client.cookies.set("optin_console", stolen[:-4] + "AAAA", path="/admin")
    assert (await first.client.get("/admin")).status_code == 303


async def test_logout_needs_csrf_and_ends_the_session(api: Api) -> None:
    csrf = await signed_in(api)
    refused = await api.client.post("/admin/logout", data={})
    assert refused.status_code == 403
    assert (await api.client.get("/admin")).status_code == 200

    done = await api.client.post("/admin/logout", data={"csrf_token": csrf})
    assert done.status_code == 303
    assert (await api.client.get("/admin")).status_code == 303


async def test_console_is_disabled_without_admin_token(make_api: ApiFactory) -> None:
    api = await make_api(admin_token=None)
    response = await api.client.get("/admin/login")
    assert response.status_code == 503
    assert "ADMIN_TOKEN" in response.text
    assert (await api.client.get("/admin")).status_code == 303


# --- safety of every page --------------------------------------------------------------------


async def _every_page(api: Api) -> dict[str, httpx.Response]:
    listing = await api.admin_get("/v1/opt-ins")
    opt_in_id = listing.json()["items"][0]["id"]
    dead = await api.deliveries("dead")
    paths = [
        "/admin",
        "/admin?window=30d",
        "/admin/opt-ins",
        f"/admin/opt-ins/{opt_in_id}",
        f"/admin/opt-ins/{opt_in_id}/opt-out",
        f"/admin/opt-ins/{opt_in_id}/erase",
        "/admin/deliveries",
        "/admin/deliveries/retry-dead",
        "/admin/health",
        "/admin/login",
    ]
    if dead:
        paths.append(f"/admin/deliveries/{dead[0]['id']}/retry")
    return {path: await api.client.get(path) for path in paths}


async def test_hostile_utm_is_escaped_and_pages_send_security_headers(
    api: Api, fakes: Fakes
) -> None:
    created = await link(api, utm_campaign=XSS, utm_source=XSS, click_id="clk-xss")
    await opt_in(api, "+15555550141", created["ref"], utm_campaign=XSS, utm_source=XSS)
    await signed_in(api)
    pages = await _every_page(api)
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    for path in ("/admin", "/admin/opt-ins", next(p for p in pages if p.count("/") == 3)):
        assert escaped in pages[path].text, path
    for path, response in pages.items():
        if path == "/admin/login":
            assert response.status_code == 303  # already signed in
            continue
        assert response.status_code == 200, path
        assert "<img" not in response.text, path
        assert "onerror=alert(1)>" not in response.text, path
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
    asset = await api.client.get("/admin/static/console.js")
    assert asset.status_code == 200
    assert "javascript" in asset.headers["content-type"]


async def test_no_secret_ever_appears_in_a_page(make_api: ApiFactory, fakes: Fakes) -> None:
    trigger = f"{fakes.callloop.base_url}/t/?trigSecret42"
    api = await make_api(callloop_trigger_url=trigger)
    fakes.callloop.state.then(Scripted(404, text=f"no such group {GROUP_KEY}"))
    await opt_in(api, "+15555550142", utm_campaign="spring")
    await wait_until(lambda: api.deliveries("dead"))
    await signed_in(api)
    pages = await _every_page(api)
    assert "/r/…" in pages["/admin/deliveries"].text  # the masked target is shown
    # The upstream error echoed the group key: it is hidden in the API's answer too.
    [dead] = await api.deliveries("dead")
    assert GROUP_KEY not in dead["last_error"]
    assert "no such group [redacted]" in dead["last_error"]
    for path, response in pages.items():
        for secret in (ADMIN_TOKEN, LOOP_API_KEY, WEBHOOK_SECRET, GROUP_KEY, "trigSecret42"):
            assert secret not in response.text, (path, secret)


# --- data on the pages -----------------------------------------------------------------------


async def _spring_scenario(api: Api) -> dict[str, Any]:
    """Through the public surface: 3 spring link requests (2 completed), 2 summer (1 completed),
    1 link without a campaign, and 1 opt-in without a link request (autumn)."""
    spring = [
        await link(api, utm_campaign="spring", utm_source="google", utm_medium="cpc")
        for _ in range(3)
    ]
    summer = [
        await link(api, utm_campaign="summer", utm_source="meta", utm_medium="social")
        for _ in range(2)
    ]
    await link(api, click_id="no-campaign")
    utm_spring = {"utm_campaign": "spring", "utm_source": "google", "utm_medium": "cpc"}
    await opt_in(api, "+15555550150", spring[0]["ref"], click_id="clk-spring-1", **utm_spring)
    await opt_in(api, "+15555550151", spring[1]["ref"], click_id="clk-spring-2", **utm_spring)
    await opt_in(
        api,
        "+15555550152",
        summer[0]["ref"],
        utm_campaign="summer",
        utm_source="meta",
        utm_medium="social",
    )
    await opt_in(api, "+15555550153", None, utm_campaign="autumn", click_id="clk-autumn")
    await wait_until(lambda: _done_count(api, 4))
    return {"spring": spring, "summer": summer}


async def _done_count(api: Api, n: int) -> bool:
    return len(await api.deliveries("done")) == n


async def test_stats_count_what_the_public_surface_created(api: Api) -> None:
    await _spring_scenario(api)
    opted = await api.admin_post("/v1/subscribers/+15555550151/opt-out")
    assert opted.status_code == 200

    response = await api.admin_get("/v1/stats")
    assert response.status_code == 200, response.text
    stats = response.json()
    by_key = {(i["utm_campaign"], i["utm_source"], i["utm_medium"]): i for i in stats["items"]}
    assert set(by_key) == {
        ("spring", "google", "cpc"),
        ("summer", "meta", "social"),
        (None, None, None),
        ("autumn", None, None),
    }
    spring = by_key[("spring", "google", "cpc")]
    assert (spring["link_requests"], spring["opt_ins"]) == (3, 2)
    assert spring["conversion_rate"] == round(2 / 3, 4)
    assert (spring["delivered"], spring["pending"], spring["dead"]) == (2, 0, 0)
    assert spring["opted_out"] == 1
    summer = by_key[("summer", "meta", "social")]
    assert (summer["link_requests"], summer["opt_ins"], summer["conversion_rate"]) == (2, 1, 0.5)
    none = by_key[(None, None, None)]
    assert (none["link_requests"], none["opt_ins"], none["conversion_rate"]) == (1, 0, 0.0)
    autumn = by_key[("autumn", None, None)]
    assert (autumn["link_requests"], autumn["opt_ins"], autumn["conversion_rate"]) == (0, 1, None)
    totals = stats["totals"]
    assert (totals["link_requests"], totals["opt_ins"], totals["delivered"]) == (6, 4, 4)
    assert totals["opted_out"] == 1
    assert sum(day["opt_ins"] for day in stats["opt_ins_per_day"]) == 4
    assert len(stats["opt_ins_per_day"]) in (7, 8)  # the window's UTC days

    past = await api.admin_get(
        "/v1/stats", since="2020-01-01T00:00:00Z", until="2020-01-08T00:00:00Z"
    )
    assert past.status_code == 200
    assert past.json()["items"] == []
    assert past.json()["totals"]["link_requests"] == 0

    # The console's overview shows the same numbers, per campaign.
    await signed_in(api)
    html = (await api.client.get("/admin")).text
    assert cell(html, "spring", "link_requests") == "3"
    assert cell(html, "spring", "opt_ins") == "2"
    assert cell(html, "spring", "conversion") == "66.7 %"
    assert cell(html, "spring", "delivered") == "2"
    assert cell(html, "spring", "opted_out") == "1"
    assert cell(html, "autumn", "conversion") == "—"
    assert cell(html, "", "link_requests") == "1"  # the "(none)" row
    assert cell(html, "__total__", "opt_ins") == "4"
    assert cell(html, "__total__", "link_requests") == "6"
    assert html.count('class="bar"') in (7, 8)
    assert "4 completed opt-ins in the window" in html


async def test_stats_rejects_a_bad_window_and_needs_the_token(api: Api) -> None:
    assert (await api.client.get("/v1/stats")).status_code == 401
    backwards = await api.admin_get(
        "/v1/stats", since="2026-02-01T00:00:00Z", until="2026-01-01T00:00:00Z"
    )
    assert backwards.status_code == 422
    assert backwards.json()["code"] == "validation_error"
    too_long = await api.admin_get(
        "/v1/stats", since="2024-01-01T00:00:00Z", until="2026-01-01T00:00:00Z"
    )
    assert too_long.status_code == 422
    naive = await api.admin_get("/v1/stats", since="2026-01-01T00:00:00")
    assert naive.status_code == 422
    garbage = await api.admin_get("/v1/stats", since="yesterday")
    assert garbage.status_code == 422


async def test_overview_windows_and_empty_state(api: Api) -> None:
    await signed_in(api)
    empty = await api.client.get("/admin")
    assert "No link requests or opt-ins in this window yet" in empty.text
    assert 'id="campaigns"' not in empty.text
    custom = await api.client.get(
        "/admin", params={"window": "custom", "start": "2026-01-01", "end": "2026-01-03"}
    )
    assert custom.status_code == 200
    assert "2026-01-01 to 2026-01-03 (UTC)" in custom.text
    assert custom.text.count('class="bar"') == 3
    bad = await api.client.get(
        "/admin", params={"window": "custom", "start": "2026-01-05", "end": "2026-01-01"}
    )
    assert bad.status_code == 200
    assert "The start date must not be after the end date" in bad.text


async def test_find_an_opt_in_by_click_id_and_see_its_consent(api: Api) -> None:
    await _spring_scenario(api)
    await signed_in(api)
    listing = await api.client.get("/admin/opt-ins")
    assert "4 matching opt-ins" in listing.text
    assert "+15555550150" not in listing.text  # masked in the list
    assert "+1******0150" in listing.text

    found = await api.client.get("/admin/opt-ins", params={"click_id": "clk-spring-2"})
    assert "1 matching opt-in," in found.text
    [detail_path] = re.findall(r'href="(/admin/opt-ins/\d+)"', found.text)
    detail = (await api.client.get(detail_path)).text
    assert "+15555550151" in detail  # the detail names the contact
    consent = detail[detail.index('id="consent-record"') :]
    assert "link_request" in consent
    assert "203.0.113.7" in consent  # the visitor's IP from the link request
    assert api.settings.loop_optin_body.replace("[", "&#91;") in consent or (
        api.settings.loop_optin_body in consent
    )
    assert "subscribe" in detail and "done" in detail  # its delivery history

    autumn = await api.client.get("/admin/opt-ins", params={"campaign": "autumn"})
    [autumn_path] = re.findall(r'href="(/admin/opt-ins/\d+)"', autumn.text)
    assert 'id="webhook-only"' in (await api.client.get(autumn_path)).text

    nothing = await api.client.get("/admin/opt-ins", params={"click_id": "nope"})
    assert "No opt-in matches this search" in nothing.text
    bad_date = await api.client.get("/admin/opt-ins", params={"start": "31/12/2026"})
    assert bad_date.status_code == 200
    assert "is not a date" in bad_date.text


async def test_opt_ins_are_paged_newest_first(api: Api) -> None:
    for number in range(27):
        await opt_in(api, f"+1555555{number:04d}", utm_campaign="paging")
    await signed_in(api)
    first = (await api.client.get("/admin/opt-ins")).text
    assert "27 matching opt-ins" in first
    assert first.count('href="/admin/opt-ins/') == 25
    older = re.search(r'href="(/admin/opt-ins\?cursor=\d+)" rel="next"', first)
    assert older
    second = (await api.client.get(unescape(older.group(1)))).text
    assert second.count('href="/admin/opt-ins/') == 2
    assert "+1******0000" in second  # the first one sent is the oldest


async def test_empty_opt_in_list_says_what_to_do(api: Api) -> None:
    await signed_in(api)
    response = await api.client.get("/admin/opt-ins")
    assert "No opt-ins yet: open the demo page" in response.text
    missing = await api.client.get("/admin/opt-ins/999")
    assert missing.status_code == 404


async def test_dead_delivery_is_retried_from_the_page(api: Api, fakes: Fakes) -> None:
    fakes.callloop.state.then(Scripted(404, text="no such group"))
    await opt_in(api, "+15555550160", utm_campaign="spring")
    [dead] = await wait_until(lambda: api.deliveries("dead"))
    csrf = await signed_in(api)
    page = (await api.client.get("/admin/deliveries")).text
    assert f'data-job="{dead["id"]}"' in page
    assert "HTTP 404" in page
    assert 'data-status="dead">1<' in page

    confirm = await api.client.get(f"/admin/deliveries/{dead['id']}/retry")
    assert f"Retry delivery job {dead['id']}?" in confirm.text
    refused = await api.client.post(f"/admin/deliveries/{dead['id']}/retry", data={})
    assert refused.status_code == 403
    assert len(await api.deliveries("dead")) == 1

    retried = await api.client.post(
        f"/admin/deliveries/{dead['id']}/retry", data={"csrf_token": csrf_of(confirm.text)}
    )
    assert retried.status_code == 303
    assert csrf == csrf_of(confirm.text)
    after = await api.client.get(retried.headers["location"])
    assert "1 delivery job(s) queued again" in after.text
    await wait_until(lambda: _done_count(api, 1))
    assert len(fakes.callloop.state.received("/r/")) == 2


async def test_retry_all_dead_from_the_page(api: Api, fakes: Fakes) -> None:
    fakes.callloop.state.then(Scripted(404, text="gone"), Scripted(404, text="gone"))
    await opt_in(api, "+15555550161")
    await opt_in(api, "+15555550162")
    await wait_until(lambda: _dead_count(api, 2))
    csrf = await signed_in(api)
    response = await api.client.post("/admin/deliveries/retry-dead", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert "n=2" in response.headers["location"]
    await wait_until(lambda: _done_count(api, 2))


async def _dead_count(api: Api, n: int) -> bool:
    return len(await api.deliveries("dead")) == n


async def test_opt_out_and_erase_from_the_detail_page(api: Api, fakes: Fakes) -> None:
    await opt_in(api, "+15555550170", utm_campaign="spring")
    await wait_until(lambda: _done_count(api, 1))
    csrf = await signed_in(api)
    [item] = (await api.admin_get("/v1/opt-ins")).json()["items"]
    base = f"/admin/opt-ins/{item['id']}"

    confirm = await api.client.get(f"{base}/opt-out")
    assert "Opt out +15555550170?" in confirm.text
    assert (await api.client.post(f"{base}/opt-out", data={})).status_code == 403
    assert [job for job in await api.deliveries() if job["kind"] == "opt_out"] == []

    done = await api.client.post(f"{base}/opt-out", data={"csrf_token": csrf})
    assert done.status_code == 303
    assert (
        "1 Call Loop opt-out job(s) queued" in (await api.client.get(done.headers["location"])).text
    )
    await wait_until(lambda: fakes.callloop.state.received("/s/"))

    erase_confirm = await api.client.get(f"{base}/erase")
    assert "Erase every personal detail of +15555550170?" in erase_confirm.text
    erased = await api.client.post(f"{base}/erase", data={"csrf_token": csrf})
    assert erased.status_code == 303
    detail = (await api.client.get(base)).text
    assert "+15555550170" not in detail
    assert "erased" in detail
    record = (await api.admin_get(f"/v1/opt-ins/{item['id']}")).json()
    assert record["contact"] is None
    assert (await api.client.get(f"{base}/erase")).status_code == 404  # nothing left to erase


async def test_health_page_names_missing_settings_never_values(make_api: ApiFactory) -> None:
    api = await make_api(loop_api_key=None)
    await signed_in(api)
    response = await api.client.get("/admin/health")
    assert response.status_code == 200
    assert "not ready" in response.text
    assert "<code>LOOP_API_KEY</code>" in response.text
    assert "Worker heartbeat" in response.text
    assert WEBHOOK_SECRET not in response.text
