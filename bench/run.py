"""`make bench`: the service under wrk, on SQLite and on PostgreSQL, against fakes on loopback.

For each database: start the real service (`optin-backend serve`, one uvicorn worker, delivery
worker in-process) on a private database, then measure with wrk from another process:
  /healthz (the baseline), the fake LoopMessage called directly (the link baseline),
  POST /v1/opt-in-links, POST /v1/webhooks/loopmessage (unique webhooks, every acknowledged
  id written down by wrk and checked against the database afterwards), in interleaved rounds
  so each ratio's two sides see the same machine; then the delivery
  latency webhook-200 -> Call Loop fake receipt, and the service's peak RSS (VmHWM).
Only ratios measured in the same run are compared with the targets: the machine is shared.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select, text  # noqa: E402

from app.db import create_engine  # noqa: E402
from app.migrate import upgrade_head  # noqa: E402
from app.models import DeliveryJob, OptIn  # noqa: E402
from tests.fakes.servers import free_port  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "12"))  # per figure, over all rounds
# Each figure is measured in rounds, interleaved with the figure it is compared with, so a
# slow spell on the shared machine weighs on both sides of a ratio alike.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
THREADS = 2
POSTGRES_SERVER = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432"
)
DELIVERY_SAMPLES = 100
SECRET = "whsec-bench"  # noqa: S105 (a throwaway value for the benchmark run)
LOOP_KEY = "loop-key-bench"
RESULTS = ROOT / "bench" / "results.md"

TARGETS = {
    "sqlite": {"webhook_ratio": 0.50},
    "postgresql": {"webhook_ratio": 0.30},
}
LINK_TARGET = 0.40
DELIVERY_P50_TARGET_MS = 100.0
RSS_TARGET_MB = 150.0
P99_FACTOR_TARGET = 10.0

DONE_LUA = """
function done(summary, latency, requests)
  local e = summary.errors
  local acked = 0
  for _, t in ipairs(threads) do acked = acked + (t:get("acked_n") or 0) end
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,'
    .. '"p50_us":%d,"p99_us":%d,"acked":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), acked))
end
"""

STATIC_LUA = """
threads = {}
function setup(thread) table.insert(threads, thread) end
wrk.method = %(method)s
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(extra_headers)s
"""

WEBHOOK_LUA = """
threads = {}
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
local counter = 0
local acked_file = nil
acked_n = 0
function request()
  counter = counter + 1
  local wid = string.format("%(run)s-%%d-%%d", tid, counter)
  local phone = string.format("+1%%03d55%%05d",
                              201 + %(round)d * 100 + tid * 10 + math.floor(counter / 100000),
                              counter %% 100000)
  local body = '{"contact":"' .. phone .. '","event":"message_inbound","type":"opt_in",'
    .. '"language":{"code":"en","name":"English"},"message_id":"m-' .. wid .. '",'
    .. '"organization_id":"org-bench","parameters":{"utm_source":"bench","click_id":"c-'
    .. wid .. '"},"text":"Yes, send me text updates!","webhook_id":"' .. wid .. '"}'
  return wrk.format("POST", "/v1/webhooks/loopmessage",
    {["Content-Type"] = "application/json", ["Authorization"] = "%(secret)s"}, body)
end
function response(status, headers, body)
  if status == 200 then
    local wid = body:match('"webhook_id":"([^"]+)"')
    if acked_file == nil then
      acked_file = io.open(string.format("%(acked_dir)s/acked-%%d.txt", tid), "w")
      acked_file:setvbuf("line")
    end
    acked_file:write(wid, "\\n")
    acked_n = acked_n + 1
  end
end
"""


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int
    acked: int = 0
    cpu_seconds: float = 0.0  # used by the process serving the load (user + system)

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6 if self.requests else float("nan")


def combined(loads: list[Load]) -> Load:
    """Several rounds of one figure: requests over total time; the median round's p50/p99."""
    seconds = sum(load.requests / load.rps for load in loads)
    return Load(
        rps=sum(load.requests for load in loads) / seconds,
        p50_ms=statistics.median(load.p50_ms for load in loads),
        p99_ms=statistics.median(load.p99_ms for load in loads),
        requests=sum(load.requests for load in loads),
        failures=sum(load.failures for load in loads),
        acked=sum(load.acked for load in loads),
        cpu_seconds=sum(load.cpu_seconds for load in loads),
    )


@dataclass
class DbResult:
    database: str
    healthz: Load | None = None
    upstream: Load | None = None
    link: Load | None = None
    bare_proxy: Load | None = None
    webhook: Load | None = None
    delivery_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    acked_missing: int = 0
    stored: int = 0
    notes: list[str] = field(default_factory=list)
    round_ratios: dict[str, list[float]] = field(default_factory=dict)


def lua_string(value: str) -> str:
    return json.dumps(value)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    url: str, script: str, workdir: Path, seconds: float = SECONDS, server_pid: int | None = None
) -> Load:
    """wrk against `url`; with `server_pid`, also the CPU time that process used meanwhile."""
    script_path = workdir / f"wrk-{uuid.uuid4().hex[:6]}.lua"
    script_path.write_text(script + DONE_LUA)
    command = [
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds:g}s",
        "--timeout",
        "20s",
        "-s",
        str(script_path),
        url,
    ]
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    cpu_used = cpu_seconds(server_pid) - cpu_before if server_pid else 0.0
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {completed.stdout}\n{completed.stderr}")
    data = json.loads(line[len("BENCH ") :])
    duration = data["duration_us"] / 1e6
    return Load(
        rps=data["requests"] / duration,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=data["requests"],
        failures=data["socket_errors"] + data["non2xx"],
        acked=data["acked"],
        cpu_seconds=cpu_used,
    )


def static_script(method: str, body: str, headers: dict[str, str] | None = None) -> str:
    extra = "\n".join(
        f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in (headers or {}).items()
    )
    return STATIC_LUA % {
        "method": lua_string(method),
        "body": lua_string(body),
        "extra_headers": extra,
    }


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("wrk is missing: installing Debian's package", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "install", "-y", "wrk"], check=True, env=env)


def wait_http(url: str, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {seconds:g} s")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def scalar(url: str, query: Any) -> Any:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(query)).scalar()
    finally:
        await engine.dispose()


async def stored_webhook_ids(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(OptIn.webhook_id))
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


async def admin_execute(statement: str) -> None:
    engine = create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def wait_drained(url: str, seconds: float) -> bool:
    deadline = time.time() + seconds
    pending_query = (
        select(func.count())
        .select_from(DeliveryJob)
        .where(DeliveryJob.status.in_(("pending", "in_progress")))
    )
    while time.time() < deadline:
        if asyncio.run(scalar(url, pending_query)) == 0:
            return True
        time.sleep(0.5)
    return False


def measure_delivery(base: str, callloop: str, run: str) -> list[float]:
    """Webhooks one at a time (light load); time from each 200 to Call Loop's receipt."""
    acknowledged: dict[str, float] = {}
    with httpx.Client(base_url=base, timeout=20) as client:
        for n in range(DELIVERY_SAMPLES):
            phone = f"+1309555{n:04d}"
            wid = f"{run}-delivery-{n}"
            body = {
                "contact": phone,
                "event": "message_inbound",
                "type": "opt_in",
                "webhook_id": wid,
                "message_id": f"m-{wid}",
                "parameters": {},
            }
            response = client.post(
                "/v1/webhooks/loopmessage", json=body, headers={"Authorization": SECRET}
            )
            if response.status_code == 200:
                acknowledged[phone] = time.time()
            time.sleep(0.02)
    deadline = time.time() + 20
    latencies: dict[str, float] = {}
    while time.time() < deadline and len(latencies) < len(acknowledged):
        receipts = httpx.get(f"{callloop}/__bench/receipts", timeout=10).json()
        for phone, received_at in receipts:
            if phone in acknowledged:
                latencies[phone] = (received_at - acknowledged[phone]) * 1000
        time.sleep(0.2)
    return list(latencies.values())


@dataclass
class Fakes:
    """The processes the service is measured against (and their pids, for their CPU time)."""

    loop_url: str
    callloop_url: str
    fakes_pid: int  # fake LoopMessage and Call Loop
    proxy_url: str
    proxy_pid: int  # the bare proxy


def bench_database(kind: str, workdir: Path, fakes: Fakes) -> DbResult:
    loop_url, callloop_url = fakes.loop_url, fakes.callloop_url
    result = DbResult(kind)
    run = uuid.uuid4().hex[:8]
    pg_name = f"optin_bench_{run}"
    if kind == "sqlite":
        db_url = f"sqlite+aiosqlite:///{workdir / f'bench-{run}.db'}"
    else:
        asyncio.run(admin_execute(f'CREATE DATABASE "{pg_name}"'))
        db_url = f"{POSTGRES_SERVER}/{pg_name}"
    service: subprocess.Popen[bytes] | None = None
    try:
        upgrade_head(db_url)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_FORMAT": "json",
            "LOOP_API_KEY": LOOP_KEY,
            "LOOP_API_BASE_URL": loop_url,
            "LOOP_WEBHOOK_SECRET": SECRET,
            "CALLLOOP_GROUP_URL": f"{callloop_url}/r/?benchgroup",
            "RATE_LIMIT_LINKS": "100000000/minute",
            "RUN_WORKER": "true",
            "DELIVERY_POLL_INTERVAL_SECONDS": "1.0",
        }
        log_file = (workdir / f"service-{kind}.log").open("wb")
        service = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "optin-backend"), "serve"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        wait_http(f"{base}/healthz")
        print(f"[{kind}] service pid {service.pid} on {base}", flush=True)

        run_wrk(f"{base}/healthz", static_script("GET", ""), workdir, seconds=2)  # warm-up
        upstream_body = json.dumps(
            {
                "body": "Yes, send me text updates! [opt-in-code]",
                "click_id": "clk-bench",
                "utm_source": "bench",
                "optin_ref": "lr_bench",
            }
        )
        link_body = json.dumps({"click_id": "clk-bench", "utm_source": "bench"})
        acked_dir = workdir / f"acked-{kind}"
        acked_dir.mkdir()
        seconds = SECONDS / ROUNDS
        rounds: dict[str, list[Load]] = {
            "healthz": [],
            "upstream": [],
            "bare proxy": [],
            "link": [],
            "webhook": [],
        }
        for number in range(ROUNDS):
            rounds["upstream"].append(
                run_wrk(
                    f"{loop_url}/api/v1/opt-in/generate-url/",
                    static_script("POST", upstream_body, {"Authorization": LOOP_KEY}),
                    workdir,
                    seconds,
                    fakes.fakes_pid,
                )
            )
            rounds["bare proxy"].append(
                run_wrk(
                    fakes.proxy_url,
                    static_script("POST", upstream_body),
                    workdir,
                    seconds,
                    fakes.proxy_pid,
                )
            )
            rounds["link"].append(
                run_wrk(
                    f"{base}/v1/opt-in-links",
                    static_script("POST", link_body, {"User-Agent": "Mozilla/5.0 (iPhone) bench"}),
                    workdir,
                    seconds,
                    service.pid,
                )
            )
            rounds["healthz"].append(
                run_wrk(f"{base}/healthz", static_script("GET", ""), workdir, seconds, service.pid)
            )
            round_dir = acked_dir / f"round-{number}"
            round_dir.mkdir()
            script = WEBHOOK_LUA % {
                "run": f"{run}r{number}",
                "round": number,
                "secret": SECRET,
                "acked_dir": str(round_dir),
            }
            rounds["webhook"].append(
                run_wrk(f"{base}/v1/webhooks/loopmessage", script, workdir, seconds, service.pid)
            )
            # The next round starts with the delivery backlog of this one sent.
            if not wait_drained(db_url, 120):
                result.notes.append(f"round {number}: the delivery backlog was not drained")
            print(
                f"[{kind}] round {number + 1}/{ROUNDS}: "
                + ", ".join(f"{name} {loads[-1].rps:.0f} rps" for name, loads in rounds.items()),
                flush=True,
            )
        result.healthz = combined(rounds["healthz"])
        result.upstream = combined(rounds["upstream"])
        result.link = combined(rounds["link"])
        result.bare_proxy = combined(rounds["bare proxy"])
        result.webhook = combined(rounds["webhook"])
        result.round_ratios = {
            "webhook/healthz": [
                w.rps / h.rps for w, h in zip(rounds["webhook"], rounds["healthz"], strict=True)
            ],
            "link/upstream": [
                lk.rps / up.rps for lk, up in zip(rounds["link"], rounds["upstream"], strict=True)
            ],
            "bare proxy/upstream": [
                bp.rps / up.rps
                for bp, up in zip(rounds["bare proxy"], rounds["upstream"], strict=True)
            ],
        }

        acked: set[str] = set()
        for path in acked_dir.glob("round-*/acked-*.txt"):
            acked.update(line for line in path.read_text().splitlines() if line)
        stored = asyncio.run(stored_webhook_ids(db_url))
        result.stored = len(stored)
        result.acked_missing = len(acked - stored)
        if len(acked) != result.webhook.acked:
            result.notes.append(
                f"wrk counted {result.webhook.acked} acknowledgements but wrote {len(acked)} ids"
            )

        result.delivery_ms = measure_delivery(base, callloop_url, run)
        if len(result.delivery_ms) < DELIVERY_SAMPLES:
            result.notes.append(
                f"only {len(result.delivery_ms)}/{DELIVERY_SAMPLES} deliveries arrived in time"
            )
        result.peak_rss_mb = peak_rss_mb(service.pid)
    finally:
        if service is not None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(30)
            except subprocess.TimeoutExpired:
                service.kill()
        if kind == "postgresql":
            asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
    return result


def verdict(ok: bool) -> str:
    return "ok" if ok else "**MISSED**"


def table(results: list[DbResult]) -> tuple[str, bool]:
    lines = [
        "| database | figure | measured | ratio / value | target | |",
        "|---|---|---|---|---|---|",
    ]
    all_ok = True
    for r in results:
        assert r.healthz and r.webhook and r.link and r.upstream
        h, w, lk, up = r.healthz, r.webhook, r.link, r.upstream
        rows: list[tuple[str, str, str, str, bool]] = []
        ratio = w.rps / h.rps
        target = TARGETS[r.database]["webhook_ratio"]
        rows.append(
            (
                "webhook intake rps / healthz rps",
                f"{w.rps:.0f} / {h.rps:.0f}",
                f"{ratio:.2f}",
                f">= {target:.2f}",
                ratio >= target,
            )
        )
        p99_factor = w.p99_ms / h.p99_ms if h.p99_ms else float("inf")
        rows.append(
            (
                "webhook p50 / p99 (healthz p50 / p99)",
                f"{w.p50_ms:.1f} / {w.p99_ms:.1f} ms ({h.p50_ms:.1f} / {h.p99_ms:.1f} ms)",
                f"p99 {p99_factor:.1f}x healthz",
                f"< {P99_FACTOR_TARGET:.0f}x",
                p99_factor < P99_FACTOR_TARGET,
            )
        )
        rows.append(
            (
                "acknowledged webhooks missing from the database",
                f"{w.acked} acked, {r.stored} stored, {w.failures} failed",
                str(r.acked_missing),
                "0",
                r.acked_missing == 0 and w.acked > 0,
            )
        )
        link_ratio = lk.rps / up.rps
        rows.append(
            (
                "link endpoint rps / direct upstream rps",
                f"{lk.rps:.0f} / {up.rps:.0f}",
                f"{link_ratio:.2f}",
                f">= {LINK_TARGET:.2f}",
                link_ratio >= LINK_TARGET and lk.failures == 0,
            )
        )
        if r.bare_proxy is not None:
            rows.append(
                (
                    "reference: bare Python proxy rps / direct upstream rps",
                    f"{r.bare_proxy.rps:.0f} / {up.rps:.0f}",
                    f"{r.bare_proxy.rps / up.rps:.2f}",
                    "— (the ceiling)",
                    True,
                )
            )
        rows.append(
            (
                "link p50 / p99 (upstream p50 / p99)",
                f"{lk.p50_ms:.1f} / {lk.p99_ms:.1f} ms ({up.p50_ms:.1f} / {up.p99_ms:.1f} ms)",
                f"{lk.failures} failed",
                "—",
                True,
            )
        )
        d50 = percentile(r.delivery_ms, 50)
        d99 = percentile(r.delivery_ms, 99)
        rows.append(
            (
                "webhook 200 -> Call Loop receipt p50 / p99",
                f"{len(r.delivery_ms)} samples",
                f"{d50:.1f} / {d99:.1f} ms",
                f"p50 < {DELIVERY_P50_TARGET_MS:.0f} ms",
                d50 < DELIVERY_P50_TARGET_MS and len(r.delivery_ms) == DELIVERY_SAMPLES,
            )
        )
        rows.append(
            (
                "service CPU per request: healthz / webhook / link",
                "user + system, /proc",
                f"{h.cpu_us_per_request:.0f} / {w.cpu_us_per_request:.0f} / "
                f"{lk.cpu_us_per_request:.0f} µs",
                "—",
                True,
            )
        )
        if r.bare_proxy is not None:
            rows.append(
                (
                    "reference CPU per request: upstream / bare proxy",
                    "user + system, /proc",
                    f"{up.cpu_us_per_request:.0f} / {r.bare_proxy.cpu_us_per_request:.0f} µs",
                    "—",
                    True,
                )
            )
        rows.append(
            (
                "peak RSS of the service",
                "VmHWM",
                f"{r.peak_rss_mb:.0f} MB",
                f"< {RSS_TARGET_MB:.0f} MB",
                r.peak_rss_mb < RSS_TARGET_MB,
            )
        )
        for figure, measured, value, target_text, ok in rows:
            all_ok &= ok
            cells = [r.database, figure, measured, value, target_text, verdict(ok)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), all_ok


def main() -> int:
    ensure_wrk()
    kinds = os.environ.get("BENCH_DATABASES", "sqlite,postgresql").split(",")
    workdir = Path(tempfile.mkdtemp(prefix="optin-bench-"))
    loop_port, callloop_port = free_port(), free_port()
    fake_servers = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fakes.py"), str(loop_port), str(callloop_port)],
        cwd=ROOT,
    )
    loop_url = f"http://127.0.0.1:{loop_port}"
    callloop_url = f"http://127.0.0.1:{callloop_port}"
    proxy_port = free_port()
    proxy = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "fakes.py"),
            "proxy",
            str(proxy_port),
            f"{loop_url}/api/v1/opt-in/generate-url/",
        ],
        cwd=ROOT,
    )
    fakes = Fakes(
        loop_url=loop_url,
        callloop_url=callloop_url,
        fakes_pid=fake_servers.pid,
        proxy_url=f"http://127.0.0.1:{proxy_port}/",
        proxy_pid=proxy.pid,
    )
    results: list[DbResult] = []
    try:
        wait_http(f"{callloop_url}/__bench/receipts")
        wait_http(f"{loop_url}/api/v1/webhooks/history/")
        for kind in kinds:
            results.append(bench_database(kind, workdir, fakes))
    finally:
        for process in (fake_servers, proxy):
            process.send_signal(signal.SIGTERM)
            process.wait(10)
    rendered, all_ok = table(results)
    notes = [
        f"- {r.database}: {name} per round: " + ", ".join(f"{value:.2f}" for value in values)
        for r in results
        for name, values in r.round_ratios.items()
    ]
    notes += [f"- {r.database}: {note}" for r in results for note in r.notes]
    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {os.cpu_count()} cores, "
        f"{ROUNDS} interleaved rounds of wrk -t{THREADS} -c{CONNECTIONS} "
        f"-d{SECONDS / ROUNDS:g}s per figure (rps over all rounds, p50/p99 of the median round), "
        "one uvicorn worker with the delivery worker in-process, fakes on loopback. "
        "Delivery latency: "
        f"{DELIVERY_SAMPLES} webhooks sent one at a time after the load backlog drained."
    )
    document = "\n".join(
        ["# Benchmark results (`make bench`)", "", header, "", rendered, "", *notes, ""]
    )
    print("\n" + rendered + ("\n" + "\n".join(notes) if notes else ""))
    RESULTS.write_text(document)
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")
    shutil.rmtree(workdir, ignore_errors=True)
    missing = sum(r.acked_missing for r in results)
    if missing:
        print(f"\nFAIL: {missing} acknowledged webhooks are missing from the database")
        return 2
    if not all_ok:
        print("\nsome targets were missed (see the table)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
