"""The benchmark suite runs end to end (``bench/run.py --smoke``) and writes every figure.

Only the shape of the results is checked, never a speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Every key of the JSON results, and the figures each must hold (dotted paths).
EXPECTED_FIGURES = {
    "hello_sequence5": [
        "instances",
        "seconds",
        "orchestrations_per_s",
        "activities_per_s",
        "latency_ms.p50",
        "latency_ms.p99",
    ],
    "storage_ops_per_orchestration": ["total"],
    "cpu_s_per_orchestration": [""],
    "single": ["latency_ms.p50", "latency_ms.p99"],
    "fanout_1000": ["n", "seconds"],
    "fanout_10000": [],
    "external_events": ["events", "events_per_s"],
    "idle": [
        "idle_seconds",
        "transactions_per_hour",
        "first_pickup_ms",
        "settle_seconds",
        "short_poll.max_poll_interval",
        "short_poll.transactions_per_hour",
        "short_poll.first_pickup_ms",
    ],
    "workers_3_vs_1": ["ratio", "one_worker_per_s", "three_workers_per_s"],
    "machine": ["cpus", "python"],
}


def figure(results: dict[str, Any], key: str, path: str) -> Any:
    value = results[key]
    for part in filter(None, path.split(".")):
        value = value[part]
    return value


def numbers(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every number under ``value`` with its dotted path."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in numbers(v, f"{path}.{k}")]
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return [(path, value)] if is_number else []


@pytest.mark.azurite
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_smoke_writes_every_figure(azurite: Any, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--smoke",
            "--connection",
            azurite.connection_string,
            "--json",
            str(out),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    results = json.loads(out.read_text())

    assert set(results) == set(EXPECTED_FIGURES)
    assert results["fanout_10000"] is None
    for key, paths in EXPECTED_FIGURES.items():
        for path in paths:
            assert figure(results, key, path) is not None, f"{key}.{path} is missing"
    for path, value in numbers({k: v for k, v in results.items() if k != "machine"}):
        assert math.isfinite(value), f"{path} = {value}"
        assert value > 0, f"{path} = {value}"
    assert results["machine"]["cpus"] > 0
    assert "skipped (--smoke)" in run.stdout
    assert results["hello_sequence5"]["instances"] == 20
    assert results["fanout_1000"]["n"] == 50
    assert results["external_events"]["events"] == 20


@pytest.mark.azurite
@pytest.mark.timeout(120)
def test_request_cost_prints_each_variant(azurite: Any) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "bench/request_cost.py",
            "--connection",
            azurite.connection_string,
            "--requests",
            "30",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    rows = {
        line[:20].strip(): [float(x) for x in line[20:].split()]
        for line in run.stdout.splitlines()[2:]
    }
    # Only the shape: a CPU and a wall figure per variant (speeds are printed, not judged).
    assert set(rows) == {"sdk get_entity", "sdk send_request", "bare aiohttp"}
    for name, figures in rows.items():
        assert len(figures) == 2, name
        assert all(math.isfinite(x) for x in figures), name
