"""Three worker processes share a task hub's partitions through leases (issue 5).

They split 4, 8 and 16 partitions evenly (each owns the floor or the ceiling of N/3);
after one is SIGKILLed, its partitions are owned again once its leases expire (waited
for with a bound of lease + 10 s), and every instance completes with the right output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient

from durable_azure import DurableClient
from tests.integration import worker_app

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LEASE = 3.0


def spawn(cs: str, hub: str, partitions: int, log: Path, out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, worker_app.LOG_ENV: str(log), worker_app.SLEEP_ENV: "0.05"}
    env.pop("AZURE_STORAGE_CONNECTION_STRING", None)
    with out.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "durable_azure.cli", "--connection", cs, "--task-hub", hub,
             "--partitions", str(partitions), "worker", "tests.integration.worker_app:app",
             "--lease-seconds", str(LEASE), "--visibility-timeout", "5",
             "--max-poll-interval", "0.5", "--shutdown-grace", "5"],
            cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip


def live_owners(cs: str, hub: str) -> dict[str, int | None]:
    """Control queue -> pid of its live owner (None if no live owner)."""
    table = TableServiceClient.from_connection_string(cs).get_table_client(f"{hub}Partitions")
    now = datetime.now(UTC)
    owners: dict[str, int | None] = {}
    try:
        rows = list(table.query_entities("PartitionKey eq ''"))
    except ResourceNotFoundError:  # the workers have not created the table yet
        return owners
    for row in rows:
        owner, expires = row.get("CurrentOwner"), row.get("ExpiresAt")
        live = owner and expires is not None and expires > now
        owners[row["RowKey"]] = int(owner.rsplit("-", 2)[1]) if live else None
    return owners


async def wait_for(predicate: Any, bound: float, what: str, diagnostics: Any) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {bound:.0f} s\n{diagnostics()}")
        await asyncio.sleep(0.25)


@pytest.mark.parametrize("partitions", [4, 8, 16])
async def test_three_workers_share_partitions_and_take_over_a_killed_ones(
    azurite: Any, task_hub: str, tmp_path: Path, partitions: int
) -> None:
    cs = azurite.connection_string
    workers = [
        spawn(cs, task_hub, partitions, tmp_path / "log", tmp_path / f"w{i}.out") for i in range(3)
    ]
    pids = {w.pid for w in workers}

    def diagnostics() -> str:
        return f"owners: {live_owners(cs, task_hub)}; workers: {pids}"

    def balanced(alive: set[int]) -> bool:
        owners = live_owners(cs, task_hub)
        counts = Counter(owners.values())
        share = partitions // len(alive)
        return (
            len(owners) == partitions
            and None not in counts
            and set(counts) == alive
            and all(share <= counts[p] <= share + 1 for p in alive)
        )

    try:
        await wait_for(lambda: balanced(pids), 60, "an even split over 3 workers", diagnostics)
        async with DurableClient.from_settings(
            worker_app.app.settings(
                connection_string=cs, task_hub=task_hub, partition_count=partitions
            )
        ) as client:
            ids = [await client.start_new("chain10", f"p{partitions}-{i}", i) for i in range(6)]
            busiest = Counter(live_owners(cs, task_hub).values()).most_common(1)[0][0]
            victim = next(w for w in workers if w.pid == busiest)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            survivors = pids - {victim.pid}
            await wait_for(
                lambda: balanced(survivors),
                LEASE + 10,
                "the killed worker's partitions owned again (lease expiry + 10 s)",
                diagnostics,
            )
            for i, instance_id in enumerate(ids):
                status = await client.wait_for_completion(instance_id, timeout=120)
                assert status.runtime_status.name == "Completed", status
                assert status.output == worker_app.expected_chain10(i)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        for w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.wait(timeout=10)
