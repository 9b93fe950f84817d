"""`optin-backend`: one console script for the service's commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from app.settings import Settings

EXIT_FAILED = 1
EXIT_CONFIG = 2
_DURATION = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class CommandError(Exception):
    """A failure the command explains in one line (exit status 1)."""


def when(text: str) -> datetime:
    """`--since`/`--until`: an ISO 8601 time (UTC if no zone), or an age like 90m, 24h, 7d."""
    text = text.strip()
    age = _DURATION.match(text)
    if age:
        return datetime.now(UTC) - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time (2026-11-24T18:00:00Z) nor an age (24h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def per_page(text: str) -> int:
    """`--per-page`: 1 to 1000."""
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 1000")
    return int(text)


def load_settings() -> Settings:
    """Settings for a one-shot command, with logs on stderr (stdout carries its output)."""
    from app.observability import configure_logging
    from app.settings import Settings, secret_values

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, secret_values(settings), sys.stderr)
    return settings


def cmd_serve(_args: argparse.Namespace) -> int:
    import uvicorn

    from app.server import OneWriteHttpToolsProtocol
    from app.settings import Settings

    settings = Settings()
    # Client IPs behind a proxy are resolved by the app itself (TRUSTED_PROXIES), so uvicorn
    # must not rewrite them from X-Forwarded-For on its own.
    uvicorn.run(
        "app.main:app",
        http=OneWriteHttpToolsProtocol,
        host=settings.host,
        port=settings.port,
        proxy_headers=False,
        server_header=False,
        log_config=None,
        timeout_graceful_shutdown=25,
    )
    return 0


def cmd_worker(_args: argparse.Namespace) -> int:
    from app.worker import main as worker_main

    worker_main()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.migrate import upgrade_head

    upgrade_head(args.url)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from app.clients.loopmessage import LoopMessageError
    from app.main import build_services, close_services
    from app.webhooks.reconcile import reconcile

    settings = load_settings()
    if settings.loop_api_key is None:
        raise CommandError("LOOP_API_KEY is not set: the webhook history cannot be read")
    until = args.until or datetime.now(UTC)
    if args.since >= until:
        raise CommandError("--since must be before --until")

    async def run() -> dict[str, object]:
        services = build_services(settings)
        try:
            client = services.require_loopmessage()
            report = await reconcile(
                services.engine,
                settings,
                client,
                args.since,
                until,
                per_page=args.per_page,
                max_pages=args.max_pages,
            )
        except LoopMessageError as exc:
            raise CommandError(
                f"reading LoopMessage's webhook history failed: {exc.detail}"
            ) from None
        finally:
            await close_services(services)
        return report.as_dict()

    report = asyncio.run(run())
    print(json.dumps(report, indent=2))
    if report["truncated"]:
        print(
            f"stopped after {args.max_pages} pages: narrow the window or raise --max-pages",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.admin.export import opt_ins_csv
    from app.admin.queries import OptInFilters
    from app.db import create_engine

    settings = load_settings()
    filters = OptInFilters(args.click_id, args.contact, args.utm_campaign, args.since, args.until)

    async def run(out: TextIO) -> None:
        engine = create_engine(settings.database_url)
        try:
            async for chunk in opt_ins_csv(engine, filters):
                out.write(chunk)
        finally:
            await engine.dispose()

    target = (
        nullcontext(sys.stdout)
        if args.output == "-"
        else open(args.output, "w", newline="", encoding="utf-8")  # noqa: SIM115
    )
    with target as out:
        asyncio.run(run(out))
    return 0


def cmd_retry_dead(args: argparse.Namespace) -> int:
    from app.db import create_engine
    from app.delivery.outbox import retry_jobs

    settings = load_settings()

    async def run() -> int:
        engine = create_engine(settings.database_url)
        try:
            async with engine.begin() as conn:
                return await retry_jobs(conn, args.job_ids or None)
        finally:
            await engine.dispose()

    retried = asyncio.run(run())
    print(json.dumps({"retried": retried}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optin-backend",
        description="LoopMessage opt-in links, webhook intake and Call Loop delivery. "
        "Configuration comes from the environment and .env (see .env.example).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve the HTTP API on HOST:PORT (with the delivery worker if RUN_WORKER)"
    )
    serve.set_defaults(func=cmd_serve)
    worker = commands.add_parser("worker", help="run the delivery worker alone (no HTTP API)")
    worker.set_defaults(func=cmd_worker)
    migrate = commands.add_parser(
        "migrate", help="apply database migrations (alembic upgrade head)"
    )
    migrate.add_argument("--url", help="database URL (default: DATABASE_URL)")
    migrate.set_defaults(func=cmd_migrate)

    reconcile = commands.add_parser(
        "reconcile",
        help="recover opt-ins and STOPs missed during an outage from LoopMessage's history",
        description="Read LoopMessage's webhook history (GET /api/v1/webhooks/history/, page "
        "by page) and feed every opt-in and STOP message created in [--since, --until) through "
        "the same intake as a live webhook. Webhooks already stored are skipped by webhook_id, "
        "so running it again is safe. Needs LOOP_API_KEY. Prints a JSON report; exit status 1 "
        "if LoopMessage fails or --max-pages stops it early.",
        epilog="example: optin-backend reconcile --since 24h",
    )
    reconcile.add_argument(
        "--since", type=when, required=True, help="window start: ISO 8601 time, or an age (6h, 2d)"
    )
    reconcile.add_argument(
        "--until", type=when, help="window end (exclusive): ISO 8601 or age; default: now"
    )
    reconcile.add_argument(
        "--per-page",
        type=per_page,
        default=100,
        metavar="N",
        help="items per history page, 1 to 1000 (default 100)",
    )
    reconcile.add_argument(
        "--max-pages",
        type=int,
        default=1000,
        metavar="N",
        help="stop after N pages (default 1000)",
    )
    reconcile.set_defaults(func=cmd_reconcile)

    export = commands.add_parser(
        "export",
        help="write the opt-ins, with their consent evidence, as CSV",
        description="Write the completed opt-ins as CSV (the same columns as "
        "GET /v1/opt-ins.csv: attribution plus consent time, IP, user agent, page, text, "
        "evidence, message_id, webhook time), newest first. Filters as in the admin API.",
        epilog="example: optin-backend export --utm-campaign spring --since 7d -o spring.csv",
    )
    export.add_argument("-o", "--output", default="-", help="file to write (default: - for stdout)")
    export.add_argument("--click-id", help="only this click_id")
    export.add_argument("--contact", help="only this contact (phone number or email)")
    export.add_argument("--utm-campaign", help="only this utm_campaign")
    export.add_argument("--since", type=when, help="received at or after (ISO 8601 or age)")
    export.add_argument("--until", type=when, help="received before (ISO 8601 or age)")
    export.set_defaults(func=cmd_export)

    retry = commands.add_parser(
        "retry-dead",
        help="give dead delivery jobs a fresh set of attempts",
        description="Put dead delivery jobs (those that used up DELIVERY_MAX_ATTEMPTS or "
        "failed permanently) back in the queue with a fresh attempt budget; the running "
        'worker sends them at its next poll. Prints {"retried": N}.',
        epilog="example: optin-backend retry-dead --id 42 --id 43",
    )
    retry.add_argument(
        "--id",
        dest="job_ids",
        type=int,
        action="append",
        metavar="JOB_ID",
        help="retry only this job (repeatable); default: every dead job",
    )
    retry.set_defaults(func=cmd_retry_dead)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValidationError as exc:
        # Only where and what: pydantic's own text would print the (possibly secret) value.
        for error in exc.errors(include_input=False):
            where = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            print(f"configuration error: {where}: {error['msg']}", file=sys.stderr)
        return EXIT_CONFIG
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
