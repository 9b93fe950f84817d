"""Fault-suite harness: the real service as separate processes, on loopback, on PostgreSQL.

- `pg_url`: a fresh, migrated database on the shared server (TEST_POSTGRES_URL), dropped after.
- `private_postgres`: a throw-away PostgreSQL cluster of our own (initdb into a temp dir, a free
  port) that a test may stop and start; the shared server is never touched.
- `procs`: starts `python -m app.cli serve` / `python -m app.worker` subprocesses with env vars
  (fresh cwd, so no `.env` is read) and kills whatever is left at the end.
- The fake LoopMessage / Call Loop servers come from tests/conftest.py (`fakes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.pool import NullPool

import tests.conftest as root_conftest
from app.db import create_engine
from app.migrate import upgrade_head
from tests.conftest import (
    ADMIN_TOKEN,
    LOOP_API_KEY,
    POSTGRES_URL,
    WEBHOOK_SECRET,
    Fakes,
    _admin_execute,
    asyncpg_url,
)
from tests.fakes.servers import free_port


def _postgres_bin() -> Path:
    """TEST_PG_BIN, or the newest server installed the Debian way (/usr/lib/postgresql/N/bin)."""
    if os.environ.get("TEST_PG_BIN"):
        return Path(os.environ["TEST_PG_BIN"])
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return versions[-1].parent if versions else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _postgres_bin()
START_TIMEOUT = 40.0  # seconds for a process to come up on a busy 2-core machine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.postgres)


# --- databases ---------------------------------------------------------------------------------


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A new database on the shared PostgreSQL server, migrated to head; dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("fault suite needs TEST_POSTGRES_URL")
    root_conftest._postgres_ran += 1  # counted in the run's PostgreSQL summary
    base = asyncpg_url(POSTGRES_URL)
    name = f"optin_fault_{uuid.uuid4().hex[:10]}"
    server_url, _, _ = base.rpartition("/")
    await _admin_execute(base, f'CREATE DATABASE "{name}"')
    url = f"{server_url}/{name}"
    try:
        await asyncio.to_thread(upgrade_head, url)
        yield url
    finally:
        await _admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_postgres_user(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster owned by one test: start, stop and restart it at will."""

    datadir: Path
    port: int
    logfile: Path

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/optin"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres_user([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} "
            "-c fsync=off -c max_connections=100"
        )
        self._ctl("start", "-w", "-t", "30", "-l", str(self.logfile), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-w", "-t", "30", "-m", mode)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    initdb = PG_BIN / "initdb"
    if not initdb.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{initdb} not found: the PostgreSQL restart test must run in CI")
        pytest.skip(f"{initdb} not found (set TEST_PG_BIN)")
    root = Path(tempfile.mkdtemp(prefix="optin-pg-"))
    datadir = root / "data"
    datadir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(datadir, "postgres", "postgres")
    subprocess.run(
        _as_postgres_user(
            [str(initdb), "-D", str(datadir), "-A", "trust", "-U", "postgres", "--no-sync"]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster = PrivatePostgres(datadir, free_port(), root / "postgres.log")
    cluster.start()
    try:
        subprocess.run(
            [
                *(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port)),
                *("-U", "postgres", "optin"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        upgrade_head(cluster.url)
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# --- service processes -------------------------------------------------------------------------


def service_env(database_url: str, fakes: Fakes, **overrides: Any) -> dict[str, str]:
    """The environment of one service process: our settings only, plus what Python needs."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TZ") if name in os.environ}
    settings: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "LOOP_API_KEY": LOOP_API_KEY,
        "LOOP_API_BASE_URL": fakes.loop.base_url,
        "LOOP_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "CALLLOOP_GROUP_URL": fakes.group_url,
        "RATE_LIMIT_LINKS": "10000/minute",
        "LOOP_TIMEOUT_SECONDS": 5,
        "CALLLOOP_TIMEOUT_SECONDS": 2,
        "DELIVERY_POLL_INTERVAL_SECONDS": 0.2,
        "DELIVERY_BACKOFF_BASE_SECONDS": 0.1,
        "DELIVERY_BACKOFF_MAX_SECONDS": 0.5,
        "DELIVERY_MAX_ATTEMPTS": 50,
        "DELIVERY_LEASE_SECONDS": 3,
        "DELIVERY_CONCURRENCY": 4,
    }
    settings.update({key.upper(): value for key, value in overrides.items()})
    env.update({key: str(value) for key, value in settings.items() if value is not None})
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServiceProcess:
    """One `serve` or `worker` process; restartable with the same port and settings."""

    kind: str  # serve | worker
    env: dict[str, str]
    workdir: Path
    name: str
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.logs[-1]

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs if path.exists())

    async def start(self) -> ServiceProcess:
        self.starts += 1
        log = self.workdir / f"{self.name}-{self.starts}.log"
        self.logs.append(log)
        env = dict(self.env)
        if self.kind == "serve":
            env.update(HOST="127.0.0.1", PORT=str(self.port))
            argv = [sys.executable, "-m", "app.cli", "serve"]
        else:
            argv = [sys.executable, "-m", "app.worker"]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        await self._wait_started()
        return self

    async def _wait_started(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"{self.name} exited at start:\n{self.log_text()[-3000:]}")
                if self.kind == "serve":
                    try:
                        if (await client.get(f"{self.url}/healthz")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                elif "delivery worker started" in self.log.read_text(errors="replace"):
                    return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} did not start:\n{self.log_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float = 40.0) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not exit:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.05)
        return int(self.process.returncode)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash or an OOM kill."""
        self.signal(signal.SIGKILL)
        await self.wait_exit()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cleanup(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[ServiceProcess] = []

    async def api(self, env: dict[str, str], name: str = "api") -> ServiceProcess:
        proc = ServiceProcess("serve", env, self.workdir, f"{name}{len(self.started)}", free_port())
        self.started.append(proc)
        return await proc.start()

    async def worker(self, env: dict[str, str], name: str = "worker") -> ServiceProcess:
        proc = ServiceProcess("worker", env, self.workdir, f"{name}{len(self.started)}")
        self.started.append(proc)
        return await proc.start()


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    yield processes
    for proc in processes.started:
        proc.cleanup()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in processes.started:
            print(f"----- {proc.name} log (tail) -----\n{proc.log_text()[-4000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# --- checks through the database ----------------------------------------------------------------


async def query(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return list(await conn.execute(text(sql), params))
    finally:
        await engine.dispose()


async def stored_webhook_ids(url: str) -> set[str]:
    return {row[0] for row in await query(url, "SELECT webhook_id FROM opt_ins")}


async def job_counts(url: str) -> dict[str, int]:
    rows = await query(url, "SELECT status, count(*) FROM delivery_jobs GROUP BY status")
    return {status: count for status, count in rows}


async def all_jobs_finished(url: str) -> bool:
    counts = await job_counts(url)
    return counts.get("pending", 0) == 0 and counts.get("in_progress", 0) == 0


def phone(n: int) -> str:
    """The n-th distinct, possible US number (202 area code)."""
    return f"+1202555{n:04d}"
