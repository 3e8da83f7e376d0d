"""One connected OpenTelemetry trace across processes (issue 7).

Two worker processes share a hub of 2 partitions, one partition each; the parent
orchestration's id falls in one worker's partition and its sub-orchestration's in the
other's, so the parent's episodes run in one process and the child's in the other. A
third process is the client. Each records its spans with the SDK's in-memory exporter
(``tests/integration/otel_app.py``); together they must form one trace with one root,
the client's ``create_orchestration`` span, every other span's parent among them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from durable_azure.storage.names import TaskHubNames
from tests.integration import otel_app
from tests.integration.test_partition_workers import live_owners, wait_for

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 2
LEASE = 3.0


def _spawn(args: list[str], spans: Path, out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, otel_app.SPANS_ENV: str(spans)}
    env.pop("AZURE_STORAGE_CONNECTION_STRING", None)
    with out.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, *args], cwd=PROJECT_ROOT, env=env, stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def _worker(cs: str, hub: str, spans: Path, out: Path) -> subprocess.Popen[bytes]:
    return _spawn(
        ["-m", "durable_azure.cli", "--connection", cs, "--task-hub", hub,
         "--partitions", str(PARTITIONS), "worker", "tests.integration.otel_app:app",
         "--lease-seconds", str(LEASE), "--max-poll-interval", "0.5",
         "--shutdown-grace", "5"],
        spans, out,
    )  # fmt: skip


def _id_in(names: TaskHubNames, partition: str, prefix: str) -> str:
    return next(
        f"{prefix}-{i}"
        for i in range(1000)
        if names.control_queue(names.partition_of(f"{prefix}-{i}")) == partition
    )


def _read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_an_orchestration_across_two_workers_is_one_connected_trace(
    azurite: Any, task_hub: str, tmp_path: Path
) -> None:
    cs = azurite.connection_string
    spans = tmp_path / "spans.jsonl"
    workers = [_worker(cs, task_hub, spans, tmp_path / "worker-a.out")]
    try:

        def diagnostics() -> str:
            logs = [p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.out")]
            return f"owners: {live_owners(cs, task_hub)}\n" + "\n".join(logs)

        await wait_for(
            lambda: set(live_owners(cs, task_hub).values()) == {workers[0].pid}
            and len(live_owners(cs, task_hub)) == PARTITIONS,
            60, "the first worker owning both partitions", diagnostics,
        )  # fmt: skip
        workers.append(_worker(cs, task_hub, spans, tmp_path / "worker-b.out"))
        await wait_for(
            lambda: sorted(Counter(live_owners(cs, task_hub).values()).values()) == [1, 1]
            and None not in live_owners(cs, task_hub).values(),
            60, "one partition per worker", diagnostics,
        )  # fmt: skip
        owners = live_owners(cs, task_hub)
        names = TaskHubNames(task_hub, PARTITIONS)
        partition_of_pid = {pid: queue for queue, pid in owners.items()}
        parent_pid, child_pid = workers[0].pid, workers[1].pid
        parent = _id_in(names, partition_of_pid[parent_pid], "otel-parent")
        child = _id_in(names, partition_of_pid[child_pid], "otel-child")

        client = _spawn(
            ["-m", "tests.integration.otel_app", cs, task_hub, str(PARTITIONS), parent, child],
            spans, tmp_path / "client.out",
        )  # fmt: skip
        code = await asyncio.to_thread(client.wait, 90)
        answer = (tmp_path / "client.out").read_text()
        assert code == 0, answer + diagnostics()
        # double(1) = 2, double(2) = 4, child: double(4) + 1 = 9
        assert json.loads(answer.strip().splitlines()[-1]) == {
            "status": "Completed",
            "output": [2, 4, 9],
        }
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
    assert [p.returncode for p in workers] == [0, 0], diagnostics()

    recorded = _read_spans(spans)
    by_id = {s["span_id"]: s for s in recorded}
    assert len({s["trace_id"] for s in recorded}) == 1, "more than one trace"
    roots = [s for s in recorded if s["parent_id"] is None]
    assert [(r["name"], r["kind"]) for r in roots] == [
        ("create_orchestration:traced_parent", "PRODUCER")
    ]
    orphans = [s["name"] for s in recorded if s["parent_id"] and s["parent_id"] not in by_id]
    assert orphans == [], "spans whose parent was not recorded"

    def named(name: str) -> list[dict[str, Any]]:
        return [s for s in recorded if s["name"] == name]

    # Where each ran: the parent's episodes and activities in one worker, the child's in
    # the other, the client's span in the client process.
    assert roots[0]["pid"] == client.pid
    assert {s["pid"] for s in named("episode:traced_parent")} == {parent_pid}
    assert {s["pid"] for s in named("episode:traced_child")} == {child_pid}
    assert {s["pid"] for s in named("orchestration:traced_child")} == {child_pid}
    # One orchestration span per execution, each a child of what started it.
    (parent_span,) = named("orchestration:traced_parent")
    (child_span,) = named("orchestration:traced_child")
    assert parent_span["parent_id"] == roots[0]["span_id"]
    assert by_id[child_span["parent_id"]]["name"] == "episode:traced_parent"
    assert parent_span["attributes"]["durable_azure.runtime_status"] == "Completed"
    # Every episode hangs off what started its execution; each activity off an episode
    # of the orchestration that scheduled it.
    for episode in named("episode:traced_parent"):
        assert episode["parent_id"] == roots[0]["span_id"]
        assert episode["attributes"]["durable_azure.instance_id"] == parent
    for episode in named("episode:traced_child"):
        assert by_id[episode["parent_id"]]["name"] == "episode:traced_parent"
    activities = named("activity:double")
    assert len(activities) == 3
    owners_of = Counter(by_id[a["parent_id"]]["name"] for a in activities)
    assert owners_of == {"episode:traced_parent": 2, "episode:traced_child": 1}
    assert all(a["status"] != "ERROR" for a in activities)
