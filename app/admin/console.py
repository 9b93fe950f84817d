"""The admin console at /admin: server-rendered pages over the same domain functions as the
admin API (admin.queries, delivery.outbox, subscribers.service, health.readiness)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.admin import queries
from app.admin.api import MAX_STATS_DAYS
from app.admin.session import (
    ConsoleSession,
    csrf_matches,
    end_session,
    login_form_token,
    read_session,
    remember_login_form,
    start_session,
    token_matches,
)
from app.clientip import came_over_https
from app.db import utcnow
from app.delivery import outbox
from app.deps import Services, ServicesDep, client_key
from app.errors import ServiceError
from app.health import readiness
from app.redaction import mask_contact
from app.subscribers.service import erase_subscriber, opt_out

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONSOLE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
WINDOW_LABELS = {"24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}
PAGE_SIZE = 25
ShortText = Annotated[str, Query(max_length=500)]

router = APIRouter(prefix="/admin", include_in_schema=False)


class LoginRequired(Exception):
    """No valid session: the handler sends the browser to the sign-in form."""


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


templates.env.filters["when"] = _when
templates.env.filters["percent"] = _percent
templates.env.filters["masked"] = mask_contact
templates.env.filters["age"] = _age


def admin_token(services: Services) -> str | None:
    token = services.settings.admin_token
    return token.get_secret_value() if token is not None else None


def https(request: Request, services: Services) -> bool:
    return came_over_https(request, services.settings.trusted_proxies)


def page(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    session: ConsoleSession | None = None,
) -> HTMLResponse:
    context = {"session": session, "active": name.removesuffix(".html"), **context}
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=PAGE_HEADERS
    )


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def signed_in(request: Request, services: ServicesDep) -> ConsoleSession:
    token = admin_token(services)
    session = read_session(request, token) if token else None
    if session is None:
        raise LoginRequired
    return session


SessionDep = Annotated[ConsoleSession, Depends(signed_in)]


class BadCsrf(Exception):
    """A state-changing form without this session's CSRF token."""


def csrf_checked(session: SessionDep, csrf_token: Annotated[str, Form()] = "") -> ConsoleSession:
    if not csrf_matches(session.csrf_token, csrf_token):
        raise BadCsrf
    return session


CheckedSessionDep = Annotated[ConsoleSession, Depends(csrf_checked)]


# --- sign-in ---------------------------------------------------------------------------------


def login_page(request: Request, services: Services, error: str | None, status: int) -> Response:
    if admin_token(services) is None:
        return page(request, "disabled.html", {}, status_code=503)
    form_token = login_form_token(request)
    response = page(
        request, "login.html", {"error": error, "form_token": form_token}, status_code=status
    )
    remember_login_form(response, form_token, secure=https(request, services))
    return response


@router.get("/login")
async def get_login(request: Request, services: ServicesDep) -> Response:
    token = admin_token(services)
    if token and read_session(request, token):
        return redirect("/admin")
    return login_page(request, services, None, 200)


@router.post("/login")
async def post_login(
    request: Request,
    services: ServicesDep,
    token: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    expected = admin_token(services)
    if expected is None:
        return login_page(request, services, None, 503)
    cookie_token = request.cookies.get("optin_console_login", "")
    if not cookie_token or not csrf_matches(cookie_token, csrf_token):
        return login_page(
            request, services, "The sign-in form expired. Please enter the token again.", 403
        )
    client = client_key(request, services)
    try:
        await services.admin_failures.refuse_if_exhausted(client)
    except ServiceError as refused:
        wait = (refused.headers or {}).get("Retry-After", "60")
        page = login_page(
            request, services, f"Too many wrong tokens. Please wait {wait} s and try again.", 429
        )
        page.headers["Retry-After"] = wait
        return page
    if not token_matches(token, expected):
        await services.admin_failures.record(client)
        return login_page(request, services, "That token is not right. Please try again.", 401)
    response = redirect("/admin")
    start_session(response, expected, secure=https(request, services))
    return response


@router.post("/logout")
async def post_logout(
    request: Request, services: ServicesDep, _session: CheckedSessionDep
) -> Response:
    response = redirect("/admin/login")
    end_session(response, secure=https(request, services))
    return response


# --- overview --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    name: str
    since: datetime
    until: datetime
    label: str
    start: str = ""
    end: str = ""


def _parse_day(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def choose_window(name: str, start: str, end: str, now: datetime) -> tuple[Window, str | None]:
    """The overview window; a bad custom range falls back to 7 days with a message."""
    if name == "custom":
        first, last = _parse_day(start), _parse_day(end)
        if first is None or last is None:
            error = "Pick both a start and an end date for a custom window."
        elif first > last:
            error = "The start date must not be after the end date."
        elif (last - first).days + 1 > MAX_STATS_DAYS:
            error = f"A custom window is at most {MAX_STATS_DAYS} days."
        else:
            since = datetime.combine(first, time(), UTC)
            until = datetime.combine(last + timedelta(days=1), time(), UTC)
            label = f"{first.isoformat()} to {last.isoformat()} (UTC)"
            return Window("custom", since, until, label, first.isoformat(), last.isoformat()), None
        name = "7d"
    else:
        error = None
    if name not in WINDOWS:
        name = "7d"
    return Window(name, now - WINDOWS[name], now, WINDOW_LABELS[name]), error


CHART_WIDTH = 640
CHART_HEIGHT = 200
CHART_TOP = 16
CHART_BOTTOM = 28
CHART_LEFT = 32


def chart(per_day: list[tuple[date, int]]) -> dict[str, Any]:
    """Bar geometry for the opt-ins-per-day SVG (drawn by the template)."""
    peak = max((count for _, count in per_day), default=0)
    scale_max = max(peak, 1)
    plot_height = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    plot_width = CHART_WIDTH - CHART_LEFT - 8
    slot = plot_width / max(len(per_day), 1)
    label_every = max(1, round(len(per_day) / 8))
    bars = []
    for index, (day, count) in enumerate(per_day):
        height = plot_height * count / scale_max
        x = CHART_LEFT + index * slot
        bars.append(
            {
                "x": round(x + slot * 0.15, 2),
                "y": round(CHART_TOP + plot_height - height, 2),
                "width": round(max(slot * 0.7, 1), 2),
                "height": round(height, 2),
                "day": day.isoformat(),
                "count": count,
                "label": day.strftime("%m-%d") if index % label_every == 0 else "",
                "label_x": round(x + slot / 2, 2),
            }
        )
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "bars": bars,
        "peak": peak,
        "total": sum(count for _, count in per_day),
        "baseline": CHART_TOP + plot_height,
        "top": CHART_TOP,
        "left": CHART_LEFT,
        "right": CHART_WIDTH - 8,
        "label_y": CHART_HEIGHT - 8,
    }


@router.get("")
async def overview(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    window: ShortText = "7d",
    start: ShortText = "",
    end: ShortText = "",
) -> Response:
    chosen, error = choose_window(window, start, end, utcnow())
    async with services.engine.connect() as conn:
        result = await queries.funnel(conn, chosen.since, chosen.until, by=("utm_campaign",))
    context = {
        "window": chosen,
        "window_error": error,
        "windows": WINDOW_LABELS,
        "funnel": result,
        "chart": chart(result.opt_ins_per_day),
    }
    return page(request, "overview.html", context, session=session)


# --- opt-ins ---------------------------------------------------------------------------------


@router.get("/opt-ins")
async def opt_in_list(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    contact: ShortText = "",
    click_id: ShortText = "",
    campaign: ShortText = "",
    start: ShortText = "",
    end: ShortText = "",
    cursor: Annotated[str, Query(max_length=18)] = "",
) -> Response:
    errors = []
    first, last = _parse_day(start), _parse_day(end)
    if start and first is None:
        errors.append("The 'from' date is not a date (use YYYY-MM-DD).")
    if end and last is None:
        errors.append("The 'to' date is not a date (use YYYY-MM-DD).")
    filters = queries.OptInFilters(
        click_id=click_id.strip() or None,
        contact=contact.strip() or None,
        utm_campaign=campaign.strip() or None,
        since=datetime.combine(first, time(), UTC) if first else None,
        until=datetime.combine(last + timedelta(days=1), time(), UTC) if last else None,
    )
    before_id = int(cursor) if cursor.isdigit() else None
    async with services.engine.connect() as conn:
        items, total, next_id = await queries.list_opt_ins(conn, filters, PAGE_SIZE, before_id)
    search = {"contact": contact, "click_id": click_id, "campaign": campaign}
    search.update({"start": start, "end": end})
    kept = {name: value for name, value in search.items() if value}
    context = {
        "items": items,
        "total": total,
        "search": search,
        "searching": bool(kept),
        "errors": errors,
        "first_page_url": _opt_ins_url(kept) if before_id else None,
        "next_url": _opt_ins_url({**kept, "cursor": next_id}) if next_id else None,
    }
    return page(request, "opt_ins.html", context, session=session)


def _opt_ins_url(query: dict[str, Any]) -> str:
    return "/admin/opt-ins?" + urlencode(query) if query else "/admin/opt-ins"


async def _opt_in_or_404(
    request: Request, services: Services, opt_in_id: int, session: ConsoleSession
) -> dict[str, Any] | Response:
    async with services.engine.connect() as conn:
        record = await queries.get_opt_in(conn, opt_in_id)
    if record is None:
        return page(
            request,
            "not_found.html",
            {"what": f"opt-in {opt_in_id}"},
            status_code=404,
            session=session,
        )
    return record


NOTICES = {
    "opted_out": "The contact is opted out; {n} Call Loop opt-out job(s) queued.",
    "erased": "The contact's personal data is erased; {n} Call Loop opt-out job(s) queued.",
    "retried": "{n} delivery job(s) queued again.",
    "nothing": "Nothing to do: no such contact or no dead job.",
}


def notice_text(notice: str, n: int) -> str | None:
    template = NOTICES.get(notice)
    return template.format(n=n) if template else None


@router.get("/opt-ins/{opt_in_id}")
async def opt_in_detail(
    request: Request,
    opt_in_id: int,
    services: ServicesDep,
    session: SessionDep,
    notice: ShortText = "",
    n: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    record = await _opt_in_or_404(request, services, opt_in_id, session)
    if isinstance(record, Response):
        return record
    context = {"record": record, "notice": notice_text(notice, n)}
    return page(request, "opt_in.html", context, session=session)


SUBSCRIBER_ACTIONS = {
    "opt-out": {
        "title": "Opt out",
        "question": "Opt out {contact}?",
        "detail": "They are marked opted out and Call Loop is told to remove them from every "
        "group they joined (through the delivery outbox).",
        "button": "Yes, opt out {contact}",
    },
    "erase": {
        "title": "Erase",
        "question": "Erase every personal detail of {contact}?",
        "detail": "They are opted out everywhere first; then their number, IP address, user "
        "agent and parameters are removed for good. Only anonymous counts stay. This cannot "
        "be undone.",
        "button": "Yes, erase {contact}",
    },
}


@router.get("/opt-ins/{opt_in_id}/{action}")
async def confirm_subscriber_action(
    request: Request, opt_in_id: int, action: str, services: ServicesDep, session: SessionDep
) -> Response:
    texts = SUBSCRIBER_ACTIONS.get(action)
    record = await _opt_in_or_404(request, services, opt_in_id, session)
    if isinstance(record, Response):
        return record
    if texts is None or not record["contact"]:
        return page(
            request, "not_found.html", {"what": "that action"}, status_code=404, session=session
        )
    contact = record["contact"]
    context = {
        "title": f"{texts['title']} {contact}",
        "question": texts["question"].format(contact=contact),
        "detail": texts["detail"],
        "button": texts["button"].format(contact=contact),
        "action": f"/admin/opt-ins/{opt_in_id}/{action}",
        "cancel": f"/admin/opt-ins/{opt_in_id}",
        "danger": True,
    }
    return page(request, "confirm.html", context, session=session)


@router.post("/opt-ins/{opt_in_id}/{action}")
async def run_subscriber_action(
    request: Request,
    opt_in_id: int,
    action: str,
    services: ServicesDep,
    session: CheckedSessionDep,
) -> Response:
    record = await _opt_in_or_404(request, services, opt_in_id, session)
    if isinstance(record, Response):
        return record
    contact = record["contact"]
    if action not in SUBSCRIBER_ACTIONS or not contact:
        return page(
            request, "not_found.html", {"what": "that action"}, status_code=404, session=session
        )
    settings = services.settings
    now = utcnow()
    async with services.engine.begin() as conn:
        if action == "opt-out":
            outcome = await opt_out(
                conn,
                settings,
                contact=contact,
                source="admin",
                now=now,
                audience_delete=settings.loop_audience_delete_on_optout,
            )
            notice, queued = ("opted_out", outcome[1]) if outcome else ("nothing", 0)
        else:
            erased = await erase_subscriber(conn, settings, contact=contact, now=now)
            notice, queued = ("erased", erased.opt_out_jobs) if erased else ("nothing", 0)
    services.wake_worker()
    return redirect(f"/admin/opt-ins/{opt_in_id}?" + urlencode({"notice": notice, "n": queued}))


# --- deliveries ------------------------------------------------------------------------------

STATUS_ORDER = ("pending", "in_progress", "done", "dead", "skipped", "cancelled")


@router.get("/deliveries")
async def deliveries(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    notice: ShortText = "",
    n: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    async with services.engine.connect() as conn:
        stats = await outbox.queue_stats(conn)
        dead, _ = await queries.list_deliveries(conn, "dead", 100, None)
        pending, _ = await queries.list_deliveries(conn, "pending", 100, None)
    counts = stats["counts"]
    context = {
        "counts": [(status, counts.get(status, 0)) for status in STATUS_ORDER],
        "oldest_age": stats["oldest_pending_age_seconds"],
        "unfinished": counts.get("pending", 0) + counts.get("in_progress", 0),
        "dead": dead,
        "retrying": [job for job in pending if job["attempts"] > 0 or job["last_error"]],
        "notice": notice_text(notice, n),
    }
    return page(request, "deliveries.html", context, session=session)


def retry_confirmation(request: Request, session: ConsoleSession, job_id: int | None) -> Response:
    """The confirmation page of a retry: one dead job, or every dead job when `job_id` is None."""
    if job_id is None:
        what, question, path = "every dead delivery", "Retry every dead delivery job?", "retry-dead"
        detail = "Each dead job gets a fresh set of attempts and the worker sends it again."
        button = "Yes, retry all dead jobs"
    else:
        what, question, path = (
            f"delivery {job_id}",
            f"Retry delivery job {job_id}?",
            f"{job_id}/retry",
        )
        detail = "The job gets a fresh set of attempts and the worker sends it again."
        button = f"Yes, retry job {job_id}"
    context = {
        "title": f"Retry {what}",
        "question": question,
        "detail": detail,
        "button": button,
        "action": f"/admin/deliveries/{path}",
        "cancel": "/admin/deliveries",
        "danger": False,
    }
    return page(request, "confirm.html", context, session=session)


async def retry(services: Services, job_ids: list[int] | None) -> Response:
    """outbox.retry_jobs, as the admin API does; back to the deliveries page with the count."""
    async with services.engine.begin() as conn:
        retried = await outbox.retry_jobs(conn, job_ids)
    if retried:
        services.wake_worker()
    notice = "retried" if retried else "nothing"
    return redirect("/admin/deliveries?" + urlencode({"notice": notice, "n": retried}))


@router.get("/deliveries/retry-dead")
async def confirm_retry_dead(request: Request, session: SessionDep) -> Response:
    return retry_confirmation(request, session, None)


@router.post("/deliveries/retry-dead")
async def retry_dead(services: ServicesDep, _session: CheckedSessionDep) -> Response:
    return await retry(services, None)


@router.get("/deliveries/{job_id}/retry")
async def confirm_retry(request: Request, job_id: int, session: SessionDep) -> Response:
    return retry_confirmation(request, session, job_id)


@router.post("/deliveries/{job_id}/retry")
async def retry_one(job_id: int, services: ServicesDep, _session: CheckedSessionDep) -> Response:
    return await retry(services, [job_id])


# --- health ----------------------------------------------------------------------------------


@router.get("/health")
async def health(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    report = await readiness(services)
    checks = dict(report["checks"])
    context = {
        "report": report,
        "missing": checks.pop("missing_settings", []),
        "worker_last_seen": checks.pop("worker_last_seen_at", None),
        "checks": checks,
        "run_worker": services.settings.run_worker,
    }
    return page(request, "health.html", context, session=session)


# --- wiring ----------------------------------------------------------------------------------


def install_console(app: FastAPI) -> None:
    """Mount the console, its static assets and its two error pages on the app."""

    async def _login_required(request: Request, _exc: Exception) -> Response:
        return redirect("/admin/login")

    async def _bad_csrf(request: Request, _exc: Exception) -> Response:
        return page(request, "expired.html", {}, status_code=403)

    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(BadCsrf, _bad_csrf)
    app.include_router(router)
    app.mount("/admin/static", StaticFiles(directory=HERE / "static"), name="admin-static")
