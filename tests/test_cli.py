"""The `optin-backend` console script, run as a real process against the test database and the
fake third parties: --help, migrate, reconcile, export, retry-dead, configuration errors."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.admin.export import HEADER
from app.db import table_of
from app.models import Subscriber
from app.settings import Settings
from tests.conftest import (
    LOOP_API_KEY,
    Api,
    ApiFactory,
    Fakes,
    opt_in_payload,
    wait_until,
)
from tests.fakes.servers import Scripted

SCRIPT = Path(sys.executable).with_name("optin-backend")
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def cli_env(db_url: str, fakes: Fakes, **settings: str) -> dict[str, str]:
    """The caller's environment without any service setting, then the test's settings."""
    env = {key: value for key, value in os.environ.items() if key.upper() not in SETTING_NAMES}
    env.update(
        DATABASE_URL=db_url,
        LOG_FORMAT="json",
        LOOP_API_KEY=LOOP_API_KEY,
        LOOP_API_BASE_URL=fakes.loop.base_url,
        CALLLOOP_GROUP_URL=fakes.group_url,
    )
    env.update(settings)
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    # cwd is an empty directory, so no developer's .env is read.
    result = subprocess.run(
        [str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


async def arun_cli(
    *args: str, env: dict[str, str], cwd: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`run_cli` without blocking the event loop: the app under test (its worker holds SQLite
    transactions across awaits) keeps running while the command does."""
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    result = subprocess.CompletedProcess(
        list(args), process.returncode or 0, out.decode(), err.decode()
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "cwd"
    path.mkdir()
    return path


# --- --help --------------------------------------------------------------------------------


def test_help_lists_every_command_and_each_explains_itself(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "")}
    top = run_cli("--help", env=env, cwd=tmp_path).stdout
    for command in ("serve", "worker", "migrate", "reconcile", "export", "retry-dead"):
        assert command in top
    expectations = {
        "reconcile": ["--since", "--until", "--per-page", "--max-pages", "webhook_id", "example"],
        "export": ["--output", "--utm-campaign", "--contact", "consent", "example"],
        "retry-dead": ["--id", "DELIVERY_MAX_ATTEMPTS", "example"],
        "migrate": ["--url"],
        "serve": ["usage"],
        "worker": ["usage"],
    }
    for command, words in expectations.items():
        text = " ".join(run_cli(command, "--help", env=env, cwd=tmp_path).stdout.split())
        for word in words:
            assert word in text, (command, word)


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "")}
    result = run_cli("reconcile", "--since", "last tuesday", env=env, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "ISO 8601" in result.stderr
    assert run_cli("reconcile", env=env, cwd=tmp_path, check=False).returncode == 2
    zero = run_cli(
        "reconcile", "--since", "1h", "--per-page", "0", env=env, cwd=tmp_path, check=False
    )
    assert zero.returncode == 2 and "1 to 1000" in zero.stderr


def test_configuration_error_is_one_clear_line_without_the_secret(tmp_path: Path) -> None:
    secret_url = "https://www.callloop.com/no-marker/?topSecretGroup9"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
        "CALLLOOP_GROUP_URL": secret_url,
        "DELIVERY_MAX_ATTEMPTS": "0",
    }
    result = run_cli("retry-dead", env=env, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert "DELIVERY_MAX_ATTEMPTS" in result.stderr
    assert "Traceback" not in result.stderr
    assert "topSecretGroup9" not in result.stderr + result.stdout


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    target = tmp_path / "fresh.db"
    env = {"PATH": os.environ.get("PATH", ""), "LOG_LEVEL": "WARNING"}
    run_cli("migrate", "--url", f"sqlite+aiosqlite:///{target}", env=env, cwd=tmp_path)
    import sqlite3

    with sqlite3.connect(target) as conn:
        [(version,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert version
    assert {"opt_ins", "delivery_jobs", "erasures"} <= tables


# --- reconcile -----------------------------------------------------------------------------

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def history_item(payload: Any, created: Any, event_type: str, as_text: bool) -> dict[str, Any]:
    return {
        "attempt": 1,
        "create_date": created,
        "event_type": event_type,
        "json": json.dumps(payload) if as_text and not isinstance(payload, str) else payload,
    }


def stop_message(contact: str) -> dict[str, Any]:
    return {
        "contact": contact,
        "event": "message_inbound",
        "text": " stop ",
        "webhook_id": f"stop-{contact}",
    }


async def test_reconcile_recovers_missed_opt_ins_and_stops_once(
    api: Api, fakes: Fakes, db_url: str, db_engine: AsyncEngine, workdir: Path
) -> None:
    live = opt_in_payload(contact="+15555550200", click_id="live")
    assert (await api.webhook(live)).json()["status"] == "stored"  # received before the outage
    missed_a = opt_in_payload(contact="+15555550201", click_id="rec-a", utm_campaign="spring")
    missed_b = opt_in_payload(contact="+15555550202", click_id="rec-b")
    no_event = opt_in_payload(contact="+15555550203", click_id="rec-c")
    no_event.pop("event")
    no_event.pop("type")
    too_old = opt_in_payload(contact="+15555550204", click_id="too-old")
    beyond = opt_in_payload(contact="+15555550205", click_id="never-fetched")
    delivered = {"event": "message_delivered", "webhook_id": "d-1", "contact": "+15555550201"}
    # Newest first, as LoopMessage pages them; dates in the three forms seen in the wild.
    fakes.loop.state.history_pages = [
        {
            "data": [
                history_item(
                    stop_message("+15555550201"), at(9).isoformat(), "message_inbound", False
                ),
                history_item(
                    delivered, at(8).strftime("%Y-%m-%d %H:%M:%S"), "message_delivered", True
                ),
                history_item(
                    missed_b, at(7).isoformat().replace("+00:00", "Z"), "message_inbound", True
                ),
                history_item(live, int(at(6).timestamp()), "message_inbound", True),
            ],
            "total": 9,
        },
        {
            "data": [
                history_item(missed_a, at(5).isoformat(), "message_inbound", False),
                history_item("{not json", at(4).isoformat(), "message_inbound", False),
                history_item(no_event, at(3).isoformat(), "opt-in", True),
                history_item(too_old, at(-30).isoformat(), "message_inbound", True),
            ],
            "total": 9,
        },
        {"data": [history_item(beyond, at(2).isoformat(), "message_inbound", True)], "total": 9},
    ]
    env = cli_env(db_url, fakes)
    window = ["--since", T0.isoformat(), "--until", at(60).isoformat(), "--per-page", "4"]

    first = json.loads((await arun_cli("reconcile", *window, env=env, cwd=workdir)).stdout)
    assert first["pages"] == 2  # page 2 reached past --since: page 3 is never asked for
    assert first["items"] == 8
    assert first["outside_window"] == 1
    assert first["invalid"] == 1
    assert first["ignored"] == 1
    assert first["outcomes"] == {"stored": 3, "duplicate": 1, "opted_out": 1}
    assert first["truncated"] is False
    calls = fakes.loop.state.received("/webhooks/history/")
    assert [call.raw_query.decode() for call in calls] == [
        "page=1&per_page=4&sort_by=create_date",
        "page=2&per_page=4&sort_by=create_date",
    ]
    assert all(call.headers["authorization"] == LOOP_API_KEY for call in calls)

    listing = (await api.admin_get("/v1/opt-ins", limit=100)).json()
    assert sorted(item["click_id"] for item in listing["items"]) == [
        "live",
        "rec-a",
        "rec-b",
        "rec-c",
    ]
    [recovered] = [item for item in listing["items"] if item["click_id"] == "rec-a"]
    assert recovered["utm_campaign"] == "spring"
    assert recovered["webhook_id"] == missed_a["webhook_id"]
    # The opt-in came before the STOP, so the contact ends opted out, not subscribed.
    async with db_engine.connect() as conn:
        status = (
            await conn.execute(
                select(table_of(Subscriber).c.status).where(Subscriber.contact == "+15555550201")
            )
        ).scalar()
    assert status == "opted_out"

    # Running it again changes nothing.
    again = json.loads((await arun_cli("reconcile", *window, env=env, cwd=workdir)).stdout)
    assert again["outcomes"] == {"duplicate": 5}
    assert (await api.admin_get("/v1/opt-ins")).json()["total"] == 4
    # The recovered opt-ins are delivered to Call Loop by the worker, once each.
    await wait_until(lambda: len(fakes.callloop.state.received("/r/")) == 3)
    added = sorted(call.raw_query.decode() for call in fakes.callloop.state.received("/r/"))
    assert not any("5555550201" in query for query in added)  # its add was cancelled by STOP


async def test_reconcile_needs_the_api_key_and_reports_upstream_failure(
    make_api: ApiFactory, fakes: Fakes, db_url: str, workdir: Path
) -> None:
    await make_api(run_worker=False)
    no_key = await arun_cli(
        "reconcile",
        "--since",
        "1h",
        env=cli_env(db_url, fakes, LOOP_API_KEY=""),
        cwd=workdir,
        check=False,
    )
    assert no_key.returncode == 1
    assert "LOOP_API_KEY" in no_key.stderr and "Traceback" not in no_key.stderr

    down = cli_env(db_url, fakes, LOOP_API_BASE_URL="http://127.0.0.1:9")
    failed = await arun_cli("reconcile", "--since", "1h", env=down, cwd=workdir, check=False)
    assert failed.returncode == 1
    assert "webhook history failed" in failed.stderr
    assert "Traceback" not in failed.stderr


async def test_reconcile_stops_at_max_pages_and_says_so(
    make_api: ApiFactory, fakes: Fakes, db_url: str, workdir: Path
) -> None:
    await make_api(run_worker=False)
    now = datetime.now(UTC)
    fakes.loop.state.history_pages = [
        {
            "data": [
                history_item(opt_in_payload(), (now - timedelta(minutes=n)).isoformat(), "x", True)
            ]
        }
        for n in range(1, 4)
    ]
    env = cli_env(db_url, fakes)
    result = await arun_cli(
        "reconcile",
        "--since",
        "1d",
        "--per-page",
        "1",
        "--max-pages",
        "2",
        env=env,
        cwd=workdir,
        check=False,
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["truncated"] is True and report["pages"] == 2
    assert report["outcomes"] == {"stored": 2}
    assert "--max-pages" in result.stderr


# --- export --------------------------------------------------------------------------------


async def test_export_writes_csv_to_stdout_or_a_file(
    make_api: ApiFactory, fakes: Fakes, db_url: str, workdir: Path
) -> None:
    api = await make_api(run_worker=False)
    await api.webhook(opt_in_payload(contact="+15555550210", click_id="x-1", utm_campaign="fall"))
    await api.webhook(opt_in_payload(contact="+15555550211", click_id="x-2", utm_campaign="spring"))
    env = cli_env(db_url, fakes, LOG_LEVEL="DEBUG")  # logs go to stderr, never into the CSV

    out = (await arun_cli("export", "--utm-campaign", "spring", env=env, cwd=workdir)).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["click_id"] for row in rows] == ["x-2"]
    assert rows[0]["contact"] == "+15555550211"
    assert out.splitlines()[0].split(",") == list(HEADER)

    target = workdir / "all.csv"
    await arun_cli("export", "-o", str(target), "--since", "1h", env=env, cwd=workdir)
    with target.open(newline="", encoding="utf-8") as handle:
        saved = list(csv.DictReader(handle))
    assert [row["click_id"] for row in saved] == ["x-2", "x-1"]
    # The same rows as the admin API's CSV.
    api_csv = (
        await api.admin_get(
            "/v1/opt-ins.csv", since=(datetime.now(UTC) - timedelta(hours=1)).isoformat()
        )
    ).text
    assert target.read_bytes().decode("utf-8") == api_csv  # CRLF rows, as RFC 4180 says

    none = (await arun_cli("export", "--contact", "+19999999999", env=env, cwd=workdir)).stdout
    assert none.splitlines() == [",".join(HEADER)]


# --- retry-dead ----------------------------------------------------------------------------


async def test_retry_dead_requeues_dead_jobs_for_the_worker(
    api: Api, fakes: Fakes, db_url: str, workdir: Path
) -> None:
    fakes.callloop.state.always(Scripted(404, text="no such group"))
    await api.webhook(opt_in_payload(contact="+15555550220"))
    [dead] = await wait_until(lambda: api.deliveries("dead"))
    env = cli_env(db_url, fakes)

    assert json.loads(
        (await arun_cli("retry-dead", "--id", str(dead["id"] + 100), env=env, cwd=workdir)).stdout
    ) == {"retried": 0}
    fakes.callloop.state.always(None)
    result = await arun_cli("retry-dead", "--id", str(dead["id"]), env=env, cwd=workdir)
    assert json.loads(result.stdout) == {"retried": 1}
    [done] = await wait_until(lambda: api.deliveries("done"))
    assert done["id"] == dead["id"]
    assert json.loads((await arun_cli("retry-dead", env=env, cwd=workdir)).stdout) == {"retried": 0}


# --- worker (standalone, with its own metrics port) ----------------------------------------


async def test_standalone_worker_delivers_and_serves_its_metrics(
    make_api: ApiFactory, fakes: Fakes, db_url: str, workdir: Path
) -> None:
    import signal

    import httpx

    from tests.fakes.servers import free_port

    intake = await make_api(run_worker=False)
    await intake.webhook(opt_in_payload(contact="+15555550230"))
    port = free_port()
    env = cli_env(db_url, fakes, HOST="127.0.0.1", WORKER_METRICS_PORT=str(port), LOG_LEVEL="INFO")
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        "worker",
        env=env,
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until(lambda: fakes.callloop.state.received("/r/"), timeout=60)
        await wait_until(lambda: intake.deliveries("done"), timeout=30)

        async def scraped() -> str | None:
            try:
                async with httpx.AsyncClient() as client:
                    response = await client.get(f"http://127.0.0.1:{port}/metrics")
            except httpx.TransportError:
                return None
            text = response.text
            done = 'optin_deliveries_total{kind="subscribe",status="done"} 1.0'
            return text if done in text else None

        text = await wait_until(scraped, timeout=30)
        assert 'optin_upstream_request_duration_seconds_count{service="callloop"} 1.0' in text
        assert "optin_delivery_queue_depth" in text
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    logs = out.decode()
    assert "delivery worker started" in logs
    assert "+15555550230" not in logs and "15555550230" not in logs
