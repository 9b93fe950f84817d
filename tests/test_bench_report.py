"""`make bench`'s verdicts (bench/run.py): each target of the performance issue is checked
against the measured figures, and a miss marks its row and fails the run."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "run.py"
_SPEC = importlib.util.spec_from_file_location("bench_run", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
bench: Any = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_run"] = bench
_SPEC.loader.exec_module(bench)


def load(rps: float, p99_ms: float = 2.0, **kw: Any) -> Any:
    return bench.Load(rps=rps, p50_ms=1.0, p99_ms=p99_ms, requests=int(rps * 4), failures=0, **kw)


def passing(database: str) -> Any:
    """A run that meets every target, each by a small margin."""
    intake = {"sqlite": 5100.0, "postgresql": 3100.0}[database]
    return bench.DbResult(
        database,
        healthz=load(10_000),
        upstream=load(10_000),
        link=load(4_100),
        bare_proxy=load(6_500),
        webhook=load(intake, p99_ms=19.0, acked=int(intake * 4)),
        delivery_ms=[50.0] * bench.DELIVERY_SAMPLES,
        peak_rss_mb=149.0,
        stored=int(intake * 4),
    )


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_run_meeting_every_target_passes(database: str) -> None:
    rendered, all_ok = bench.table([passing(database)])
    assert all_ok
    assert "MISSED" not in rendered


def _missed_rows(rendered: str) -> list[str]:
    return [line.split(" | ")[1] for line in rendered.splitlines() if "MISSED" in line]


@pytest.mark.parametrize(
    ("database", "change", "row"),
    [
        ("sqlite", {"webhook": load(4_900, p99_ms=19.0, acked=19_600)}, "webhook intake rps"),
        ("postgresql", {"webhook": load(2_900, p99_ms=19.0, acked=11_600)}, "webhook intake rps"),
        ("sqlite", {"webhook": load(5_100, p99_ms=20.0, acked=20_400)}, "webhook p50 / p99"),
        ("sqlite", {"acked_missing": 1}, "acknowledged webhooks missing"),
        ("sqlite", {"webhook": load(5_100, p99_ms=19.0, acked=0)}, "acknowledged webhooks"),
        ("postgresql", {"link": load(3_900)}, "link endpoint rps"),
        ("sqlite", {"link": replace(load(4_100), failures=1)}, "link endpoint rps"),
        ("sqlite", {"delivery_ms": [100.0] * 100}, "webhook 200 -> Call Loop receipt"),
        ("sqlite", {"delivery_ms": [50.0] * 99}, "webhook 200 -> Call Loop receipt"),
        ("postgresql", {"peak_rss_mb": 150.0}, "peak RSS"),
    ],
)
def test_each_missed_target_marks_its_row_and_fails_the_run(
    database: str, change: dict[str, Any], row: str
) -> None:
    rendered, all_ok = bench.table([replace(passing(database), **change)])
    assert not all_ok
    [missed] = _missed_rows(rendered)
    assert missed.startswith(row)


def test_rounds_combine_into_requests_over_total_time() -> None:
    fast = bench.Load(rps=10_000, p50_ms=1.0, p99_ms=2.0, requests=40_000, failures=0)
    slow = bench.Load(rps=5_000, p50_ms=3.0, p99_ms=6.0, requests=20_000, failures=1)
    both = bench.combined([fast, slow, fast])
    assert both.rps == pytest.approx(100_000 / 12)  # 100,000 requests in 4 + 4 + 4 s
    assert (both.p50_ms, both.p99_ms, both.failures) == (1.0, 2.0, 1)
