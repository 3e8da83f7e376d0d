"""Benchmarks against Azurite, printed as a table (and written as JSON with --json).

    python bench/run.py [--quick] [--json FILE] [--instances N] [--connection CS]

Scenario ``hello_sequence5``: N instances (default 200) of five sequential activities,
all started at once, run by ONE worker process. Reported: orchestrations/s and
activities/s (first start to last completion), start-to-completion latency p50/p99
(from the Instances row's CreatedTime and CompletedTime), the storage operations per
orchestration by kind as counted by the worker's and the client's own provider (the
client's polling for completion is excluded), and worker CPU seconds per orchestration.

Azurite is started on a free port for the run (or ``--connection`` names a running one).
Numbers are Azurite-on-this-machine numbers, not Azure numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from durable_azure import DurableClient, OrchestrationStatus  # noqa: E402
from durable_azure import azurite as azurite_tool  # noqa: E402
from durable_azure.settings import StorageSettings  # noqa: E402
from durable_azure.storage.primitives import AnyOf, Cmp, Op  # noqa: E402
from durable_azure.testing.hub_cleanup import delete_hub_resources  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class WorkerProcess:
    """The benchmark worker, in its own process (so the client does not share its GIL)."""

    def __init__(self, connection: str, task_hub: str) -> None:
        self.stats_file = Path(tempfile.mkdtemp(prefix="durable-bench-")) / "stats.json"
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "worker_main.py"),
                connection,
                task_hub,
                str(self.stats_file),
            ],
            cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while not Path(str(self.stats_file) + ".ready").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark worker did not start")
            time.sleep(0.05)

    def reset_counters(self) -> None:
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(0.2)

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        return dict(json.loads(self.stats_file.read_text()))


async def hello_sequence5(connection: str, instances: int) -> dict[str, Any]:
    task_hub = "bench" + uuid.uuid4().hex[:10]
    settings = StorageSettings.resolve(connection_string=connection, task_hub=task_hub)
    worker = WorkerProcess(connection, task_hub)
    try:
        async with DurableClient.from_settings(settings) as client:
            await client.provider.create_if_not_exists()
            worker.reset_counters()
            client.provider.account.stats.reset()
            started = time.time()
            ids = [f"hs5-{i:05d}" for i in range(instances)]
            await asyncio.gather(*(client.start_new("hello_sequence5", i) for i in ids))
            start_ops = client.provider.account.stats.snapshot()
            table = client.provider.instances.table
            done_filter = [
                AnyOf(tuple(Cmp("RuntimeStatus", Op.EQ, s) for s in ("Completed", "Failed")))
            ]
            while True:
                rows, _ = await table.query(where=done_filter, select=["RuntimeStatus"])
                if len(rows) >= instances:
                    break
                if time.time() - started > 600:
                    raise RuntimeError(f"only {len(rows)}/{instances} finished in 600 s")
                await asyncio.sleep(0.25)
            rows, _ = await table.query(select=["RuntimeStatus", "CreatedTime", "CompletedTime"])
    finally:
        worker_stats = worker.stop()
        delete_hub_resources(connection, task_hub)
    failed = [r for r in rows if r.get("RuntimeStatus") != OrchestrationStatus.Completed.name]
    if failed:
        raise RuntimeError(f"{len(failed)} orchestrations did not complete")
    latencies = [
        (r.get("CompletedTime") - r.get("CreatedTime")).total_seconds() * 1000 for r in rows
    ]
    first = min(r.get("CreatedTime") for r in rows)
    last = max(r.get("CompletedTime") for r in rows)
    elapsed = (last - first).total_seconds()
    ops: dict[str, int] = {}
    for source in (worker_stats["ops"], start_ops):
        for kind, count in source.items():
            if not kind.endswith("_admin"):
                ops[kind] = ops.get(kind, 0) + count
    return {
        "instances": instances,
        "seconds": round(elapsed, 3),
        "orchestrations_per_s": round(instances / elapsed, 2),
        "activities_per_s": round(5 * instances / elapsed, 2),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p99": round(percentile(latencies, 99), 1),
        },
        "storage_ops_per_orchestration": {
            "total": round(sum(ops.values()) / instances, 2),
            **{k: round(v / instances, 2) for k, v in sorted(ops.items())},
        },
        "cpu_s_per_orchestration": round(worker_stats["cpu_s"] / instances, 4),
    }


def print_table(results: dict[str, Any]) -> None:
    hs = results["hello_sequence5"]
    print(f"\nhello_sequence5 x {hs['instances']} (one worker process, Azurite)")
    print(f"  orchestrations/s   {hs['orchestrations_per_s']:>10}")
    print(f"  activities/s       {hs['activities_per_s']:>10}")
    print(f"  latency p50 (ms)   {hs['latency_ms']['p50']:>10}")
    print(f"  latency p99 (ms)   {hs['latency_ms']['p99']:>10}")
    print(f"  worker CPU s/orch  {hs['cpu_s_per_orchestration']:>10}")
    print("  storage ops per orchestration:")
    for kind, value in hs["storage_ops_per_orchestration"].items():
        print(f"    {kind:<16} {value:>8}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (50 instances)")
    parser.add_argument("--instances", type=int, help="HelloSequence5 instances (default 200)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--connection", help="use this storage instead of a fresh Azurite")
    args = parser.parse_args()
    instances = args.instances or (50 if args.quick else 200)

    def run(connection: str) -> dict[str, Any]:
        return {"hello_sequence5": asyncio.run(hello_sequence5(connection, instances))}

    if args.connection:
        results = run(args.connection)
    else:
        host = azurite_tool.DEFAULT_HOST
        ports = azurite_tool.AzuritePorts.from_base(azurite_tool.find_free_port_base(host))
        with azurite_tool.AzuriteProcess(host=host, ports=ports) as emulator:
            results = run(emulator.connection_string)
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
