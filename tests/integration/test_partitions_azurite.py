"""The partition manager on a real ``{hub}Partitions`` table in Azurite.

Three managers run their loops (``run()``) with short timings against one table; a monitor
checks throughout that no queue is ever in two managers' ``owned`` sets. Waits are bounded
and fail with what was seen; nothing asserts on how long things took.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableClient

from durable_azure.storage.azure_primitives import AzureStorageAccount
from durable_azure.storage.names import TaskHubNames
from durable_azure.storage.partitions import LeaseOptions, PartitionChanges, PartitionManager

pytestmark = pytest.mark.azurite

FAST = LeaseOptions(
    lease_interval=3.0,
    renew_interval=1.0,
    acquire_interval=1.0,
    claim_duration=3.0,
    drain_timeout=10.0,
    busy_interval=0.25,
)
#: Extra time allowed, on top of what the protocol needs, for Azurite and a busy machine.
SLACK = 10.0


@dataclass
class Node:
    """One simulated worker: its manager's loop and the pollers it would run."""

    worker_id: str
    account: AzureStorageAccount
    manager: PartitionManager
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    polling: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None

    async def on_change(self, changes: PartitionChanges) -> None:
        self.polling -= changes.lost | changes.released | changes.draining
        for queue in changes.draining:  # nothing in flight here: drained at once
            self.manager.mark_drained(queue)
        self.polling |= changes.acquired

    def start(self) -> None:
        self.task = asyncio.create_task(
            self.manager.run(self.on_change, self.stop), name=f"partitions {self.worker_id}"
        )

    async def kill(self) -> None:
        """Simulated death: the loop stops at once, nothing is released."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Monitor:
    """Samples every node's ``owned`` set and records any queue owned twice."""

    def __init__(self, nodes: Callable[[], list[Node]]) -> None:
        self.nodes = nodes
        self.violations: list[str] = []
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        owners: dict[str, str] = {}
        for node in self.nodes():
            for queue in node.manager.owned:
                if queue in owners:
                    self.violations.append(f"{queue}: {owners[queue]} and {node.worker_id}")
                owners[queue] = node.worker_id
        self.samples += 1

    async def _run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(0.005)

    def __enter__(self) -> Monitor:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


@pytest.fixture
async def cluster(azurite: Any, task_hub: str) -> AsyncIterator[Callable[..., Any]]:
    """Builds nodes on the test's hub; closes everything afterwards."""
    nodes: list[Node] = []

    async def make(partitions: int, count: int = 3) -> tuple[TaskHubNames, list[Node]]:
        names = TaskHubNames(task_hub, partitions)
        for i in range(count):
            account = AzureStorageAccount.from_connection_string(azurite.connection_string)
            manager = PartitionManager.for_account(account, names, f"worker{i}", options=FAST)
            nodes.append(Node(f"worker{i}", account, manager))
        await nodes[0].manager.create_rows()
        return names, list(nodes)

    try:
        yield make
    finally:
        for node in nodes:
            await node.kill()
            await node.account.close()


async def wait_for(condition: Callable[[], Any], what: str, timeout: float) -> None:
    """Poll ``condition`` (sync or async) until true; fail naming ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        await asyncio.sleep(0.05)


def sdk_rows(connection_string: str, names: TaskHubNames) -> dict[str, dict[str, Any]]:
    """The partitions table as the plain SDK (or Storage Explorer) sees it."""
    with TableClient.from_connection_string(connection_string, names.partitions_table) as t:
        return {e["RowKey"]: dict(e) for e in t.list_entities()}


def balanced(connection_string: str, names: TaskHubNames, nodes: list[Node]) -> bool:
    rows = sdk_rows(connection_string, names)
    ids = {n.worker_id for n in nodes}
    if len(rows) != names.partition_count or any(
        r.get("CurrentOwner") not in ids or r.get("NextOwner") or r.get("IsDraining")
        for r in rows.values()
    ):
        return False
    n, k = names.partition_count, len(nodes)
    counts = [len(node.manager.owned) for node in nodes]
    polled = [len(node.polling) for node in nodes]
    return counts == polled and sum(counts) == n and all(n // k <= c <= -(-n // k) for c in counts)


def describe(connection_string: str, names: TaskHubNames) -> str:
    rows = sdk_rows(connection_string, names)
    return "; ".join(
        f"{q}: {r.get('CurrentOwner')}->{r.get('NextOwner')}"
        f"{' draining' if r.get('IsDraining') else ''}"
        for q, r in sorted(rows.items())
    )


@pytest.mark.parametrize("partitions", [4, 8])
async def test_three_workers_balance_and_survive_a_death(
    azurite: Any, cluster: Callable[..., Any], partitions: int
) -> None:
    conn = azurite.connection_string
    names, nodes = await cluster(partitions)
    live = list(nodes)
    with Monitor(lambda: live) as monitor:
        for node in nodes:
            node.start()
        await wait_for(
            lambda: balanced(conn, names, live),
            f"3 workers to balance {partitions} partitions",
            timeout=60,
        )

        victim = max(live, key=lambda n: len(n.manager.owned))
        lost = victim.manager.owned
        await victim.kill()  # no release: its rows must expire
        live.remove(victim)
        rows = sdk_rows(conn, names)
        expiry = max(rows[q]["ExpiresAt"] for q in lost)
        # Owned again within lease expiry + one acquire interval (+ slack for Azurite).
        budget = (expiry - datetime.now(UTC)).total_seconds() + FAST.acquire_interval
        await wait_for(
            lambda: all(any(q in n.manager.owned for n in live) for q in lost),
            f"{sorted(lost)} (expiring {expiry:%H:%M:%S.%f}) to be owned again; "
            f"table: {describe(conn, names)}",
            timeout=max(budget, 0) + SLACK,
        )
        await wait_for(
            lambda: balanced(conn, names, live),
            f"2 survivors to balance {partitions} partitions",
            timeout=60,
        )
    monitor.check()
    assert monitor.samples > 10
    assert not monitor.violations, monitor.violations[:10]
    # The dead worker's rows are held by survivors now.
    rows = sdk_rows(conn, names)
    assert {rows[q]["CurrentOwner"] for q in lost} <= {n.worker_id for n in live}


async def test_graceful_stop_hands_over(azurite: Any, cluster: Callable[..., Any]) -> None:
    conn = azurite.connection_string
    names, nodes = await cluster(4, 2)
    with Monitor(lambda: nodes) as monitor:
        for node in nodes:
            node.start()
        await wait_for(lambda: balanced(conn, names, nodes), "2 workers to balance", 60)
        leaving, staying = nodes
        leaving.stop.set()
        assert leaving.task is not None
        await asyncio.wait_for(leaving.task, 30)  # drains, releases, returns
        assert leaving.manager.owned == set()
        assert leaving.polling == set()
        await wait_for(
            lambda: staying.manager.owned == set(names.control_queues),
            f"the other worker to take every queue; table: {describe(conn, names)}",
            timeout=30,
        )
    assert not monitor.violations, monitor.violations[:10]


async def test_rows_have_the_dtfx_columns(azurite: Any, task_hub: str) -> None:
    """Stepped by hand (default timings, real clock), read back with the plain SDK."""
    conn = azurite.connection_string
    names = TaskHubNames(task_hub, 4)
    accounts = [AzureStorageAccount.from_connection_string(conn) for _ in range(2)]
    try:
        a, b = (
            PartitionManager.for_account(acc, names, wid)
            for acc, wid in zip(accounts, ("a", "b"), strict=True)
        )
        await a.create_rows()
        await b.create_rows()  # 409s ignored
        rows = sdk_rows(conn, names)
        assert sorted(rows) == names.control_queues
        for row in rows.values():
            assert row["PartitionKey"] == ""
            assert row["IsDraining"] is False
            assert "CurrentOwner" not in row
            assert "ExpiresAt" not in row

        before = datetime.now(UTC)
        assert (await a.step()).acquired == set(names.control_queues)
        for row in sdk_rows(conn, names).values():
            assert row["CurrentOwner"] == "a"
            assert "NextOwner" not in row  # null: not written, as .NET does
            for column in ("OwnedSince", "LastRenewal", "ExpiresAt"):
                assert isinstance(row[column], datetime), column
                assert row[column].tzinfo is not None
            assert row["OwnedSince"] == row["LastRenewal"] >= before - timedelta(seconds=1)
            assert row["ExpiresAt"] - row["LastRenewal"] == timedelta(seconds=60)
            assert row["IsDraining"] is False

        asked = (await b.step()).requested
        assert len(asked) == 2
        rows = sdk_rows(conn, names)
        assert {q for q, r in rows.items() if r.get("NextOwner") == "b"} == asked
        assert (await a.step()).draining == asked
        rows = sdk_rows(conn, names)
        assert {q for q, r in rows.items() if r["IsDraining"]} == asked
        for queue in asked:
            a.mark_drained(queue)
        assert (await a.step()).released == asked
        rows = sdk_rows(conn, names)
        for queue in asked:
            assert "CurrentOwner" not in rows[queue]
            assert rows[queue]["NextOwner"] == "b"
            assert rows[queue]["IsDraining"] is False
        assert (await b.step()).acquired == asked
        rows = sdk_rows(conn, names)
        assert {q for q, r in rows.items() if r.get("CurrentOwner") == "b"} == asked
        assert all(set(r) >= {"CurrentOwner", "OwnedSince", "LastRenewal"} for r in rows.values())

        # A row written by another implementation (e.g. a .NET worker) is respected.
        with TableClient.from_connection_string(conn, names.partitions_table) as table:
            entity = table.get_entity("", names.control_queue(0))
            owner = entity["CurrentOwner"]
            now = datetime.now(UTC)
            entity.update(
                CurrentOwner="dotnet-worker",
                OwnedSince=now,
                LastRenewal=now,
                ExpiresAt=now + timedelta(minutes=5),
                IsDraining=False,
            )
            table.update_entity(entity)
        mine = a if owner == "a" else b
        changes = await mine.step()
        assert names.control_queue(0) in changes.lost
        assert names.control_queue(0) not in a.owned | b.owned
    finally:
        for account in accounts:
            with contextlib.suppress(Exception):
                await account.close()
