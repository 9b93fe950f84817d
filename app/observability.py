"""Logging (JSON or console, masked), Prometheus metrics and the HTTP middleware that feeds both."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.jsontext import ascii_line
from app.redaction import scrub

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# --- metrics ---------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "optin_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "optin_http_request_duration_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOKS = Counter("optin_webhooks_total", "Webhooks by event and outcome", ["event", "outcome"])
LINK_REQUESTS = Counter("optin_link_requests_total", "Link requests by outcome", ["outcome"])
DELIVERIES = Counter(
    "optin_deliveries_total", "Delivery attempts by kind and result", ["kind", "status"]
)
QUEUE_DEPTH = Gauge(
    "optin_delivery_queue_depth", "Delivery jobs not finished, by status", ["status"]
)
QUEUE_OLDEST_AGE = Gauge(
    "optin_delivery_oldest_pending_age_seconds", "Age of the oldest pending job"
)
DELIVERY_JOBS = Gauge(
    "optin_delivery_jobs",
    "Delivery jobs in the database by kind and status (read at scrape time)",
    ["kind", "status"],
)
JOB_KINDS = ("subscribe", "opt_out", "trigger", "audience_delete")
JOB_STATUSES = ("pending", "in_progress", "done", "dead", "skipped", "cancelled")
UPSTREAM_LATENCY = Histogram(
    "optin_upstream_request_duration_seconds",
    "Latency of calls to third parties",
    ["service"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def set_queue_gauges(stats: dict[str, Any]) -> None:
    """Publish one `outbox.queue_stats` reading; absent combinations read 0, not stale."""
    counts: dict[str, int] = stats["counts"]
    for status in ("pending", "in_progress", "dead"):
        QUEUE_DEPTH.labels(status).set(counts.get(status, 0))
    QUEUE_OLDEST_AGE.set(stats["oldest_pending_age_seconds"])
    by_kind: dict[tuple[str, str], int] = stats["by_kind"]
    for kind, status in set(by_kind) | {(k, s) for k in JOB_KINDS for s in JOB_STATUSES}:
        DELIVERY_JOBS.labels(kind, status).set(by_kind.get((kind, status), 0))


# --- logging ---------------------------------------------------------------------------------
_secrets: list[str] = []
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def _extra_fields(record: logging.LogRecord) -> list[str]:
    """The names of the fields a record was given beyond the standard ones (`extra=`), sorted:
    worked out by a set difference rather than a look at each of its ~25 attributes."""
    extra = record.__dict__.keys() - _RESERVED
    return sorted(extra) if extra else []


class RedactingFilter(logging.Filter):
    """Masks secrets, phone numbers and emails in every record, including libraries' records."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = scrub(message, _secrets)
        record.args = None
        fields = record.__dict__
        for key in _extra_fields(record):
            value = fields[key]
            if isinstance(value, str):
                fields[key] = scrub(value, _secrets)
        return True


Extras = list[tuple[str, Any]]


class LineFormatter(logging.Formatter):
    """A record as one line, made by `line` from the record's parts: the access log writes its
    lines from the same parts without a record (`log_info`)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        extras = [(key, fields[key]) for key in _extra_fields(record) if not key.startswith("_")]
        error = scrub(self.formatException(record.exc_info), _secrets) if record.exc_info else None
        return self.line(
            record.created, record.levelname, record.name, record.getMessage(), extras, error
        )

    def line(
        self,
        created: float,
        levelname: str,
        name: str,
        message: str,
        extras: Extras,
        error: str | None = None,
    ) -> str:
        raise NotImplementedError


class JsonFormatter(LineFormatter):
    def line(
        self,
        created: float,
        levelname: str,
        name: str,
        message: str,
        extras: Extras,
        error: str | None = None,
    ) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(created, UTC).isoformat(),
            "level": levelname.lower(),
            "logger": name,
            "msg": message,
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update(extras)
        if error:
            entry["exc"] = error
        return ascii_line(entry)


class ConsoleFormatter(LineFormatter):
    def line(
        self,
        created: float,
        levelname: str,
        name: str,
        message: str,
        extras: Extras,
        error: str | None = None,
    ) -> str:
        extra_text = " ".join(f"{key}={value}" for key, value in extras)
        stamp = datetime.fromtimestamp(created, UTC).strftime("%H:%M:%S")
        line = f"{stamp} {levelname:<7} {name}: {message}"
        request_id = request_id_var.get()
        if request_id:
            extra_text = f"{extra_text} request_id={request_id}".lstrip()
        if extra_text:
            line = f"{line}  {extra_text}"
        if error:
            line = f"{line}\n{error}"
        return line


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time (it may be swapped, e.g. by a test runner).

    On the event loop's thread, the lines of one turn of the loop are kept and go out in one
    write, at the start of the next turn (before the loop waits for anything), instead of one
    write each: a system call per request saved under load, whether stdout buffers or not
    (PYTHONUNBUFFERED, common in container images, makes every write to stdout a system call).
    Elsewhere (threads, the CLI) each line goes out at once, after any kept lines. A process
    killed outright loses at most the lines of the turn it was in.
    """

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self._kept: list[str] = []  # lines of this loop turn, not yet written
        # The loop a write is scheduled on (a loop stopped before running it schedules none).
        self._write_scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (Handler.handle).
        try:
            self._keep(self.format(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def takes_lines(self) -> LineFormatter | None:
        """The formatter to make a line for this handler without a record (`log_info`),
        when the handler is as `configure_logging` made it: its one filter the redaction."""
        formatter = self.formatter
        filters = self.filters
        if (
            isinstance(formatter, LineFormatter)
            and len(filters) == 1
            and isinstance(filters[0], RedactingFilter)
        ):
            return formatter
        return None

    def emit_line(self, line: str) -> None:
        """A line made (and redacted) by the caller, as `emit` would write a record's."""
        with self.lock:  # type: ignore[union-attr]
            self._keep(line)

    def _keep(self, line: str) -> None:
        self._kept.append(line + self.terminator)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_kept()
            return
        if self._write_scheduled_on is not loop:
            self._write_scheduled_on = loop
            loop.call_soon(self._write_turn)

    def _write_kept(self) -> None:
        if self._kept:
            lines = "".join(self._kept)
            self._kept.clear()
            stream = self.stream
            stream.write(lines)
            stream.flush()

    def _write_turn(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_scheduled_on = None
            self._write_kept()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_kept()

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(
    log_format: str, level: str, secrets: list[str], stream: TextIO | None = None
) -> None:
    """Root logging for the service (stdout, or `stream`: the CLI keeps stdout for its output);
    httpx/httpcore are quietened (they log full URLs), and scrubbed if turned up."""
    _secrets[:] = sorted(set(secrets), key=len, reverse=True)
    # No record carries the caller's file and line, thread or process (the formatters print none
    # of them): the logging HOWTO's "Optimization" switches, saving work on every line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler: logging.StreamHandler = (
        logging.StreamHandler(stream) if stream is not None else StdoutHandler()
    )
    handler.setFormatter(JsonFormatter() if log_format == "json" else ConsoleFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_optin", False):
            root.removeHandler(existing)
    handler._optin = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("httpx", "httpcore", "hpack"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # Our middleware writes one access line per request, masked; uvicorn's would repeat it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


access_log = logging.getLogger("optin.access")


def log_info(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """`logger.info(message, extra=fields)`, to every handler that would get that record, its
    fields in the order the formatters give them (sorted): for the lines written many times a
    second (each request's access line, each delivered job's).

    For the service's own stdout handler the line is made from its parts, without a LogRecord,
    the logging machinery or the redaction filter (the message and fields are redacted here,
    as the filter would, before any handler sees them): a third of the CPU of a line (~6
    against ~19 µs); the access line alone was ~12 % of a link request's CPU. Any other handler
    (a test runner's, an operator's own logging configuration) gets the record, made once, the
    usual way."""
    if not logger.isEnabledFor(logging.INFO):
        return
    message = scrub(message, _secrets)
    fields = {
        key: scrub(value, _secrets) if isinstance(value, str) else value
        for key, value in fields.items()
    }
    if logger.filters:  # a filter on the logger itself decides first: the usual way
        logger.info(message, extra=fields)
        return
    created = time.time()
    extras: Extras | None = None
    record: logging.LogRecord | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if handler.level > logging.INFO:
                continue
            if isinstance(handler, StdoutHandler) and (formatter := handler.takes_lines()):
                if extras is None:
                    extras = sorted(fields.items())
                handler.emit_line(formatter.line(created, "INFO", logger.name, message, extras))
                continue
            if record is None:
                record = logger.makeRecord(
                    logger.name, logging.INFO, "(unknown file)", 0, message, (), None, extra=fields
                )
                record.created = created
            handler.handle(record)
        current = current.parent if current.propagate else None


def log_access(method: str, path: str, status: int, duration_ms: float) -> None:
    """The access line of a request (`log_info`)."""
    fields = {"method": method, "path": path, "status": status, "duration_ms": duration_ms}
    log_info(access_log, "request", fields)


SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
DEFAULT_CSP = b"default-src 'none'; frame-ancestors 'none'"
INTERNAL_ERROR_BODY = json.dumps(
    {"code": "internal_error", "detail": "internal error; quote the X-Request-ID when reporting"}
).encode()


_REQUEST_METRICS: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _request_metrics(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request counter's and latency histogram's series for these labels: `labels()` checks
    and locks on every call; the series are looked up once (for at most 1024 label sets)."""
    key = (method, route, status)
    series = _REQUEST_METRICS.get(key)
    if series is None:
        series = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_LATENCY.labels(method, route),
        )
        if len(_REQUEST_METRICS) < 1024:
            _REQUEST_METRICS[key] = series
    return series


def new_request_id() -> str:
    """32 hex digits to correlate a request's log lines: unique, not secret, so drawn from the
    process's PRNG (reseeded after a fork) rather than the OS's random source (a system call)."""
    return f"{random.getrandbits(128):032x}"


class RequestsInFlight:
    """How many HTTP requests the app is serving right now (`HttpMiddleware` counts them): the
    in-process delivery worker gives way to a busy API by it (app/delivery/worker.py)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class HttpMiddleware:
    """Request id (X-Request-ID in and out), security headers, metrics and one access log line;
    it also counts the requests in flight (`in_flight`).

    A plain ASGI middleware: no per-request task or body copy, so the hot routes stay fast.
    """

    def __init__(self, app: ASGIApp, in_flight: RequestsInFlight) -> None:
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")[:100]
                break
        request_id = incoming if incoming and incoming.isprintable() else new_request_id()
        token = request_id_var.set(request_id)
        # Swagger UI and ReDoc pages load their own scripts: they keep the other headers only.
        docs_page = scope["path"] in ("/docs", "/redoc", "/docs/oauth2-redirect")
        started = time.perf_counter()
        status_code = 500
        response_started = False
        self.in_flight.count += 1

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status_code = message["status"]
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                for name, value in SECURITY_HEADERS:
                    if name not in present:
                        headers.append((name, value))
                if b"content-security-policy" not in present and not docs_page:
                    headers.append((b"content-security-policy", DEFAULT_CSP))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # A bug still gets a JSON 500 with the security headers and the request id; the
            # exception goes on up to be logged (the server sees the response already sent).
            if not response_started:
                await send_wrapper(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send_wrapper({"type": "http.response.body", "body": INTERNAL_ERROR_BODY})
            raise
        finally:
            self.in_flight.count -= 1
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            requests, latency = _request_metrics(method, route, status_code)
            requests.inc()
            latency.observe(elapsed)
            log_access(method, scope["path"], status_code, round(elapsed * 1000, 2))
            request_id_var.reset(token)
