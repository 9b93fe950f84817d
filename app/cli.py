"""`optin-backend`: one console script for the service's commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def cmd_serve(_args: argparse.Namespace) -> int:
    import uvicorn

    from app.settings import Settings

    settings = Settings()
    # Client IPs behind a proxy are resolved by the app itself (TRUSTED_PROXIES), so uvicorn
    # must not rewrite them from X-Forwarded-For on its own.
    uvicorn.run(
        "app.main:app",
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


def cmd_retry_dead(args: argparse.Namespace) -> int:
    import asyncio

    from app.db import create_engine
    from app.delivery import outbox
    from app.settings import Settings

    async def retry() -> int:
        engine = create_engine(args.url or Settings().database_url)
        try:
            async with engine.begin() as conn:
                return await outbox.retry_jobs(conn, args.job_ids or None)
        finally:
            await engine.dispose()

    retried = asyncio.run(retry())
    print(f"{retried} dead job(s) pending again; a running worker picks them up")
    return 1 if args.job_ids and retried < len(args.job_ids) else 0


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
    retry = commands.add_parser(
        "retry-dead",
        help="give dead delivery jobs (all, or the ids given) a fresh set of attempts",
    )
    retry.add_argument("job_ids", nargs="*", type=int, metavar="JOB_ID")
    retry.add_argument("--url", help="database URL (default: DATABASE_URL)")
    retry.set_defaults(func=cmd_retry_dead)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
