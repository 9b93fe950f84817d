"""Ops surface: /metrics (auth, what it counts, queue gauges read at scrape time), /readyz with a
standalone worker, and logs (JSON with request id, console format, nothing personal or secret)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

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

METRICS_TOKEN = "metrics-test-3e8a"


async def scrape(api: Api, token: str = ADMIN_TOKEN) -> dict[tuple[str, frozenset[Any]], float]:
    response = await api.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, frozenset[Any]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- /metrics ------------------------------------------------------------------------------


async def test_metrics_needs_a_bearer_token(make_api: ApiFactory) -> None:
    api = await make_api(metrics_token=METRICS_TOKEN, run_worker=False)
    assert (await api.client.get("/metrics")).status_code == 401
    wrong = await api.client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "unauthorized"
    # The webhook secret is not a metrics credential.
    as_webhook = await api.client.get("/metrics", headers={"Authorization": WEBHOOK_SECRET})
    assert as_webhook.status_code == 401
    assert await scrape(api, METRICS_TOKEN)
    assert await scrape(api, ADMIN_TOKEN)


async def test_metrics_token_is_not_an_admin_token(make_api: ApiFactory) -> None:
    api = await make_api(metrics_token=METRICS_TOKEN, run_worker=False)
    response = await api.client.get(
        "/v1/opt-ins", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert response.status_code == 401


async def test_metrics_disabled_without_any_token(make_api: ApiFactory) -> None:
    api = await make_api(admin_token=None, metrics_token=None, run_worker=False)
    response = await api.client.get("/metrics")
    assert response.status_code == 503
    assert response.json()["code"] == "not_configured"
    assert "METRICS_TOKEN" in response.json()["detail"]


async def test_metrics_count_requests_webhooks_links_deliveries_and_upstreams(
    api: Api, fakes: Fakes
) -> None:
    before = await scrape(api)
    link = await api.client.post("/v1/opt-in-links", json={"click_id": "m-1"})
    assert link.status_code == 200, link.text
    assert (await api.webhook(opt_in_payload(contact="+15555550140"))).status_code == 200
    assert (await api.webhook(opt_in_payload(), secret="wrong")).status_code == 401
    await wait_until(lambda: fakes.callloop.state.received("/r/"))
    await wait_until(lambda: api.deliveries("done"))
    opt_ins = (await api.admin_get("/v1/opt-ins")).json()["items"]
    assert (await api.admin_get(f"/v1/opt-ins/{opt_ins[0]['id']}")).status_code == 200

    after = await scrape(api)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    http = "optin_http_requests_total"
    assert grew(http, method="POST", route="/v1/opt-in-links", status="200") == 1
    assert grew(http, method="POST", route="/v1/webhooks/loopmessage", status="200") == 1
    assert grew(http, method="POST", route="/v1/webhooks/loopmessage", status="401") == 1
    # Routes are labelled by their template, never by the id in the path.
    assert grew(http, method="GET", route="/v1/opt-ins/{opt_in_id}", status="200") == 1
    latency = "optin_http_request_duration_seconds_count"
    assert grew(latency, method="POST", route="/v1/opt-in-links") == 1
    assert grew("optin_webhooks_total", event="message_inbound", outcome="stored") == 1
    assert grew("optin_webhooks_total", event="unknown", outcome="unauthorized") == 1
    assert grew("optin_link_requests_total", outcome="ok") == 1
    assert grew("optin_deliveries_total", kind="subscribe", status="done") == 1
    upstream = "optin_upstream_request_duration_seconds_count"
    assert grew(upstream, service="loopmessage") == 1
    assert grew(upstream, service="callloop") == 1
    assert value(after, "optin_delivery_jobs", kind="subscribe", status="done") == 1
    assert value(after, "optin_delivery_jobs", kind="opt_out", status="pending") == 0


async def test_queue_gauges_are_read_from_the_database_at_scrape_time(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    intake = await make_api(run_worker=False)  # the worker runs elsewhere (compose)
    for number in ("+15555550141", "+15555550142"):
        await intake.webhook(opt_in_payload(contact=number))
    pending = await scrape(intake)
    assert value(pending, "optin_delivery_queue_depth", status="pending") == 2
    assert value(pending, "optin_delivery_jobs", kind="subscribe", status="pending") == 2
    assert value(pending, "optin_delivery_oldest_pending_age_seconds") >= 0

    fakes.callloop.state.always(httpx_404())
    await make_api(run_worker=True)  # another process's worker drains the same database
    await wait_until(lambda: _dead_count(intake, 2))
    drained = await scrape(intake)
    assert value(drained, "optin_delivery_queue_depth", status="pending") == 0
    assert value(drained, "optin_delivery_queue_depth", status="dead") == 2
    assert value(drained, "optin_delivery_jobs", kind="subscribe", status="pending") == 0
    assert value(drained, "optin_delivery_oldest_pending_age_seconds") == 0


def httpx_404() -> Any:
    from tests.fakes.servers import Scripted

    return Scripted(404, text="no such group")


async def _dead_count(api: Api, n: int) -> bool:
    return len(await api.deliveries("dead")) == n


async def test_metrics_endpoint_is_in_openapi(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    assert "/metrics" in spec["paths"]


# --- /readyz with a standalone worker ------------------------------------------------------


async def test_readyz_with_external_worker_reports_its_heartbeat(make_api: ApiFactory) -> None:
    api = await make_api(run_worker=False)
    body = (await api.client.get("/readyz")).json()
    assert not any("worker" in reason for reason in body["reasons"]), body
    assert body["checks"]["worker"] == "external: no recent heartbeat"
    assert body["checks"]["worker_last_seen_at"] is None

    await make_api(run_worker=True)  # the standalone worker, same database

    async def external_ok() -> bool:
        checks = (await api.client.get("/readyz")).json()["checks"]
        return bool(checks["worker"] == "external: ok")

    await wait_until(external_ok)
    assert (await api.client.get("/readyz")).json()["checks"]["worker_last_seen_at"]


# --- logs ----------------------------------------------------------------------------------


@pytest.fixture
def httpx_debug_logs() -> Iterator[None]:
    """Turn the HTTP libraries' own loggers up, as an operator debugging might: their lines
    carry full URLs (the Call Loop group key, the phone number) and must still be scrubbed."""
    names = ("httpx", "httpcore")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


PHONE = "+15555550177"
EMAIL = "grace.hopper@example.org"


async def test_logs_never_carry_personal_data_or_secrets(
    capsys: pytest.CaptureFixture[str],
    httpx_debug_logs: None,
    make_api: ApiFactory,
    fakes: Fakes,
) -> None:
    route_group = f"{fakes.callloop.base_url}/r/?routeGroupKey77"
    trigger = f"{fakes.callloop.base_url}/t/?triggerKey88"
    api = await make_api(
        log_level="DEBUG",
        metrics_token=METRICS_TOKEN,
        callloop_trigger_url=trigger,
        callloop_routes=json.dumps({"vip": {"group_url": route_group}}),
        loop_audience_delete_on_optout=True,
    )
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    await stdout_so_far(capsys)  # start from here

    headers = {"X-Request-ID": "trace-log-1"}
    await api.client.post(
        "/v1/opt-in-links",
        json={"click_id": "log-1", "params": {"email": EMAIL, "first": "Grace"}},
        headers=headers,
    )
    await api.webhook(opt_in_payload(contact=PHONE, email=EMAIL, first="Grace"))
    await api.webhook(opt_in_payload(contact="+15555550178", list="vip"))
    await api.webhook(opt_in_payload(contact=EMAIL))
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 2)
    await wait_until(lambda: fakes.callloop.state.received("/t/"))
    # A failing call whose error message would echo the URL and the number.
    fakes.callloop.state.then(httpx_404_echo(route_group, PHONE))
    await api.admin_post(f"/v1/subscribers/{PHONE}/opt-out")
    await wait_until(lambda: fakes.loop.state.received("/audience/delete/"))
    await api.client.get(f"/v1/opt-ins?contact={EMAIL}", headers={"Authorization": "Bearer x"})
    await api.admin_get("/v1/opt-ins", contact=PHONE)
    await api.client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    await api.client.delete(
        f"/v1/subscribers/{EMAIL}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    await wait_until(lambda: _all_finished(api))

    output = await stdout_so_far(capsys)
    lines = log_lines(output)
    assert len(lines) > 10, output[:2000]
    loggers = {line["logger"] for line in lines}
    assert {"optin.access", "httpx"} <= loggers, loggers  # the libraries' lines were captured
    forbidden = [
        PHONE,
        PHONE[1:],
        "15555550178",
        "+15555550178",
        EMAIL,
        EMAIL.replace("@", "%40"),
        "grace.hopper",
        GROUP_KEY,
        "routeGroupKey77",
        "triggerKey88",
        WEBHOOK_SECRET,
        ADMIN_TOKEN,
        METRICS_TOKEN,
        LOOP_API_KEY,
    ]
    leaks = [item for item in forbidden if item in output]
    assert leaks == [], [line for line in output.splitlines() if any(x in line for x in leaks)]
    # …while what the operator needs is still there: masked numbers and the request id.
    assert "******0177" in output
    assert any(line.get("request_id") == "trace-log-1" for line in lines)


def httpx_404_echo(url: str, phone: str) -> Any:
    from tests.fakes.servers import Scripted

    return Scripted(404, text=f"unknown group {url} for {phone}")


async def stdout_so_far(capsys: pytest.CaptureFixture[str]) -> str:
    """What was printed so far: the log lines of a loop turn go out at the start of the next."""
    await asyncio.sleep(0)
    return capsys.readouterr().out


async def _all_finished(api: Api) -> bool:
    return not await api.deliveries("pending") and not await api.deliveries("in_progress")


async def test_every_log_line_is_json_with_the_request_id(
    capsys: pytest.CaptureFixture[str], make_api: ApiFactory
) -> None:
    api = await make_api(run_worker=False)
    await stdout_so_far(capsys)
    response = await api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = await api.client.get("/healthz")
    request_id = generated.headers["x-request-id"]
    assert len(request_id) >= 16
    text = await stdout_so_far(capsys)
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [line for line in parsed if line["logger"] == "optin.access"]
    assert [line["request_id"] for line in access] == ["abc-123", request_id]
    assert access[0]["path"] == "/healthz" and access[0]["status"] == 200
    assert {"ts", "level", "msg", "duration_ms"} <= set(access[0])


async def test_log_lines_stay_ascii_when_they_carry_other_text(
    capsys: pytest.CaptureFixture[str], make_api: ApiFactory
) -> None:
    """Text beyond ASCII (here a request path) is escaped: every JSON line is ASCII, whatever
    stdout's encoding, and reads back as sent."""
    api = await make_api(run_worker=False)
    await stdout_so_far(capsys)
    await api.client.get("/healthz/caf%C3%A9")
    text = await stdout_so_far(capsys)
    [line] = [line for line in text.splitlines() if "optin.access" in line]
    assert line.isascii()
    assert json.loads(line)["path"] == "/healthz/caf\u00e9"


async def test_console_format_for_make_run(
    capsys: pytest.CaptureFixture[str], make_api: ApiFactory
) -> None:
    api = await make_api(run_worker=False, log_format="console")
    await stdout_so_far(capsys)
    await api.client.post(
        f"/v1/subscribers/{PHONE}/opt-out",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Request-ID": "console-1"},
    )
    text = await stdout_so_far(capsys)
    [line] = [line for line in text.splitlines() if "optin.access" in line]
    assert not line.startswith("{")
    assert "INFO" in line and "request" in line and "status=404" in line
    assert PHONE not in line and "******0177" in line
    assert line.endswith("request_id=console-1")


def test_request_id_header_is_bounded_and_printable() -> None:
    # A hostile X-Request-ID cannot inject a second log line or a huge field.
    from app.main import create_app
    from app.settings import Settings

    async def run() -> list[str]:
        app = create_app(Settings(_env_file=None, run_worker=False))  # type: ignore[call-arg]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            bad = await client.get("/healthz", headers={"X-Request-ID": "a\tb"})
            long = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
        return [bad.headers["x-request-id"], long.headers["x-request-id"]]

    import asyncio

    tab_id, long_id = asyncio.run(run())
    assert "\t" not in tab_id
    assert long_id == "x" * 100


class _CountingRaw(io.RawIOBase):
    """A file that records each write it is given (what reaches the OS, one system call each)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return len(data)


@pytest.fixture(params=["buffered", "unbuffered"])
def recorded_stdout(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], _CountingRaw]:
    """Puts the service's logging (JSON) on a stdout whose writes to the OS are recorded:
    buffered, or unbuffered as Python makes it under PYTHONUNBUFFERED (every write a system
    call). Called inside the test: pytest sets its own sys.stdout again after set-up."""

    def install() -> _CountingRaw:
        from app.observability import configure_logging

        raw = _CountingRaw()
        if request.param == "buffered":
            stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")
        else:
            stdout = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
        monkeypatch.setattr(sys, "stdout", stdout)
        configure_logging("json", "INFO", [])
        return raw

    return install


async def test_log_lines_of_one_loop_turn_go_out_in_one_write(
    recorded_stdout: Callable[[], _CountingRaw],
) -> None:
    raw = recorded_stdout()
    log = logging.getLogger("optin.test")
    for number in range(3):
        log.info("line", extra={"number": number})
    assert raw.writes == []  # nothing waits on I/O before the loop turns
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    [written] = raw.writes
    assert [json.loads(line)["number"] for line in written.decode().splitlines()] == [0, 1, 2]

    def from_a_thread() -> None:  # no event loop there: flushed line by line
        log.info("from a thread")

    await asyncio.to_thread(from_a_thread)
    assert b"from a thread" in raw.writes[-1]


def test_a_line_left_by_a_stopped_loop_goes_out_with_the_next_loops_lines(
    recorded_stdout: Callable[[], _CountingRaw],
) -> None:
    raw = recorded_stdout()
    log = logging.getLogger("optin.test")

    async def log_and_stop() -> None:
        log.info("first")
        asyncio.get_running_loop().stop()  # before the turn that would have written the line

    async def log_line() -> None:
        log.info("second")
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    first = asyncio.new_event_loop()
    first.run_until_complete(log_and_stop())
    first.close()
    assert raw.writes == []
    second = asyncio.new_event_loop()
    second.run_until_complete(log_line())
    second.close()
    written = b"".join(raw.writes).decode()
    assert [json.loads(line)["msg"] for line in written.splitlines()] == ["first", "second"]


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_access_lines_are_those_of_the_usual_logging_call(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    make_api: ApiFactory,
    log_format: str,
) -> None:
    """Access lines are made without a LogRecord for the service's stdout handler: the same line
    as `access_log.info(...)` writes, redacted alike; other handlers (here pytest's) still get a
    record with the fields."""
    from app.observability import access_log, log_access, request_id_var

    await make_api(run_worker=False, log_format=log_format)
    await stdout_so_far(capsys)
    path = f"/v1/subscribers/{PHONE}/opt-out"
    caplog.clear()
    token = request_id_var.set("same-request")
    try:
        log_access("POST", path, 404, 1.5)
        access_log.info(
            "request", extra={"method": "POST", "path": path, "status": 404, "duration_ms": 1.5}
        )
    finally:
        request_id_var.reset(token)
    lean, usual = (await stdout_so_far(capsys)).splitlines()
    assert PHONE not in lean and "******0177" in lean
    if log_format == "json":
        lean_fields, usual_fields = json.loads(lean), json.loads(usual)
        assert lean_fields.pop("ts")[:16] == usual_fields.pop("ts")[:16]
        assert lean_fields == usual_fields
        assert list(lean_fields) == list(usual_fields)  # the same order too
    else:
        assert lean.split(" ", 1)[1] == usual.split(" ", 1)[1]  # all but the time
    records = [r for r in caplog.records if r.name == "optin.access"]
    assert len(records) == 2
    assert {r.__dict__["path"] for r in records} == {path.replace(PHONE, "+1******0177")}


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_delivered_lines_are_those_of_the_usual_logging_call(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    make_api: ApiFactory,
    fakes: Fakes,
    log_format: str,
) -> None:
    """A delivered job's line is made the same lean way as the access line (`log_info`): it
    reads as `logging.getLogger("optin.delivery").info("delivered", extra=...)` would write it,
    and other handlers still get the record."""
    api = await make_api(run_worker=True, log_format=log_format)
    await stdout_so_far(capsys)
    caplog.clear()
    assert (await api.webhook(opt_in_payload(contact=PHONE))).status_code == 200
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 1)
    await wait_until(lambda: any(r.getMessage() == "delivered" for r in caplog.records))
    job = (await api.deliveries("done"))[0]
    lean = [line for line in (await stdout_so_far(capsys)).splitlines() if "delivered" in line]
    usual_fields = {"job_id": job["id"], "kind": "subscribe", "attempt": 1}
    logging.getLogger("optin.delivery").info("delivered", extra=usual_fields)
    usual = [line for line in (await stdout_so_far(capsys)).splitlines() if "delivered" in line]
    assert len(lean) == 1 and len(usual) == 1
    if log_format == "json":
        lean_fields, same_fields = json.loads(lean[0]), json.loads(usual[0])
        assert lean_fields.pop("ts")[:13] == same_fields.pop("ts")[:13]
        assert lean_fields == same_fields and list(lean_fields) == list(same_fields)
    else:
        assert lean[0].split(" ", 1)[1] == usual[0].split(" ", 1)[1]  # all but the time
    records = [r for r in caplog.records if r.getMessage() == "delivered"]
    assert records[0].__dict__["job_id"] == job["id"]


class _RecordingTracerProvider:
    """An OpenTelemetry tracer provider that writes down every span started (set once per
    process: OpenTelemetry keeps the first provider set)."""

    spans: list[str] = []
    installed: Any = None

    @classmethod
    def install(cls) -> None:
        from opentelemetry import trace

        if cls.installed is not None:
            return

        class Tracer(trace.NoOpTracer):
            def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
                cls.spans.append(name)
                return super().start_span(name, *args, **kwargs)

            def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
                cls.spans.append(name)
                return super().start_as_current_span(name, *args, **kwargs)

        class Provider(trace.TracerProvider):
            def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
                return Tracer()

        cls.installed = Provider()
        trace.set_tracer_provider(cls.installed)
        assert trace.get_tracer_provider() is cls.installed


async def test_fastapi_opentelemetry_hooks_stay_off_with_a_tracer_provider_set(api: Api) -> None:
    """The service reports through its metrics and logs; FastAPI's own OpenTelemetry hooks,
    which look for a configured provider on every request, are switched off: even with a
    tracer provider installed, answering requests starts no span."""
    _RecordingTracerProvider.install()
    _RecordingTracerProvider.spans.clear()

    assert (await api.client.get("/healthz")).status_code == 200
    assert (await api.webhook(opt_in_payload())).status_code == 200
    assert _RecordingTracerProvider.spans == []
