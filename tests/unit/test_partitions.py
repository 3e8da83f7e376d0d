"""The ``{hub}Partitions`` partition manager on the in-memory account, with a fake clock.

Several :class:`PartitionManager`\\ s share one account; the tests step them in various
orders (one after another, or concurrently so their storage operations interleave) and
play the worker's part: they track which queues each worker polls from the reported
:class:`PartitionChanges` and call ``mark_drained`` for the queues it was told to drain.

The safety invariant - no queue in two managers' ``owned`` sets - is checked by a fault
hook before *every* storage operation, and after every step together with: every owned
queue's row names its owner, and what the worker polls is what the manager reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable_azure.errors import ConditionFailedError, StorageError
from durable_azure.storage.names import TaskHubNames
from durable_azure.storage.partitions import (
    LeaseOptions,
    PartitionChanges,
    PartitionLease,
    PartitionManager,
    new_worker_id,
)
from durable_azure.storage.primitives import OpKind, Table, TableOp, TableValue, UpdateMode
from durable_azure.testing.memory import MemoryStorageAccount
from tests.unit.harness import FakeClock

HUB = "PartHub"
START = datetime(2030, 1, 1, tzinfo=UTC)
OPTIONS = LeaseOptions()  # DTFx defaults: lease 30 s, renew 10 s, claim 60 s, drain 60 s


@dataclass
class SimWorker:
    """The worker's side of the contract: pollers started and stopped from the changes."""

    manager: PartitionManager
    polling: set[str] = field(default_factory=set)
    to_drain: set[str] = field(default_factory=set)
    history: list[PartitionChanges] = field(default_factory=list)
    alive: bool = True

    def apply(self, changes: PartitionChanges) -> None:
        self.history.append(changes)
        assert not (changes.acquired & (changes.released | changes.lost))
        assert not (changes.acquired & changes.draining)
        self.polling -= changes.lost | changes.released
        self.to_drain -= changes.lost | changes.released
        self.polling -= changes.draining
        self.to_drain |= changes.draining
        assert not (changes.acquired & self.polling), "acquired twice without a loss between"
        self.polling |= changes.acquired

    def finish_drains(self) -> None:
        for queue in self.to_drain:
            self.manager.mark_drained(queue)


class Cluster:
    """Workers sharing one memory account and one fake clock."""

    def __init__(self, partitions: int, *, options: LeaseOptions = OPTIONS, seed: int = 0) -> None:
        self.clock = FakeClock(START)
        self.account = MemoryStorageAccount(clock=self.clock)
        self.names = TaskHubNames(HUB, partitions)
        self.table: Table = self.account.table(self.names.partitions_table)
        self.options = options
        self.workers: dict[str, SimWorker] = {}
        self.rng = random.Random(seed)
        self.steps = 0
        # Checked before every single storage operation, whoever makes it.
        self.account.faults.append(lambda _kind, _name: self.check_disjoint())

    def add(self, worker_id: str, *, table: Table | None = None) -> PartitionManager:
        manager = PartitionManager(
            table or self.table, self.names, worker_id, options=self.options, clock=self.clock
        )
        self.workers[worker_id] = SimWorker(manager)
        return manager

    def manager(self, worker_id: str) -> PartitionManager:
        return self.workers[worker_id].manager

    @property
    def live(self) -> list[str]:
        return [w for w, sim in self.workers.items() if sim.alive]

    async def create(self) -> None:
        await PartitionManager(self.table, self.names, "creator").create_rows()

    def check_polling(self, worker_id: str) -> None:
        """What the worker polls is exactly what its manager says it may receive from."""
        sim = self.workers[worker_id]
        active = {q for q in sim.manager.owned if sim.manager.may_receive(q)}
        assert sim.polling == active, (worker_id, sim.polling, active)

    def check_disjoint(self) -> None:
        owners: dict[str, str] = {}
        for worker_id, sim in self.workers.items():
            for queue in sim.manager.owned:
                assert queue not in owners, (
                    f"{queue} owned by both {owners[queue]} and {worker_id} "
                    f"at {self.clock() - START}"
                )
                owners[queue] = worker_id

    async def rows(self) -> dict[str, PartitionLease]:
        entities, _ = await self.table.query(partition_key="")
        return {e.row_key: PartitionLease.from_entity(e) for e in entities}

    async def check(self) -> None:
        self.check_disjoint()
        rows = await self.rows()
        for worker_id, sim in self.workers.items():
            for queue in sim.manager.owned:
                assert rows[queue].current_owner == worker_id, (queue, worker_id, rows[queue])

    async def step(self, worker_id: str) -> PartitionChanges:
        sim = self.workers[worker_id]
        sim.finish_drains()
        changes = await sim.manager.step()
        sim.apply(changes)
        self.steps += 1
        self.check_polling(worker_id)
        assert sim.to_drain <= sim.manager.draining, (sim.to_drain, sim.manager.draining)
        await self.check()
        return changes

    async def round(self, *, concurrent: bool = False, advance: float = 1.0) -> None:
        """Every live worker steps once (in a random order), then time moves on."""
        order = self.live
        self.rng.shuffle(order)
        if concurrent:
            results = await asyncio.gather(*(self._step_concurrently(w) for w in order))
            for worker_id, changes in zip(order, results, strict=True):
                self.workers[worker_id].apply(changes)
                self.check_polling(worker_id)
            await self.check()
        else:
            for worker_id in order:
                await self.step(worker_id)
        self.clock.advance(advance)

    async def _step_concurrently(self, worker_id: str) -> PartitionChanges:
        sim = self.workers[worker_id]
        sim.finish_drains()
        # A random head start, so one worker's read can fall between another's writes.
        for _ in range(self.rng.randrange(3 * len(self.names.control_queues))):
            await asyncio.sleep(0)
        return await sim.manager.step()

    async def balanced(self, workers: list[str] | None = None) -> bool:
        """Every row owned by one of ``workers``, nothing pending, floor/ceil shares."""
        workers = workers if workers is not None else self.live
        rows = await self.rows()
        if any(
            r.current_owner not in workers or r.next_owner or r.is_draining for r in rows.values()
        ):
            return False
        counts = [len(self.manager(w).owned) for w in workers]
        n, k = len(rows), len(workers)
        return sum(counts) == n and all(n // k <= c <= -(-n // k) for c in counts)

    async def run_until_balanced(
        self, max_rounds: int, *, concurrent: bool = False, workers: list[str] | None = None
    ) -> int:
        for rounds in range(1, max_rounds + 1):
            await self.round(concurrent=concurrent)
            if await self.balanced(workers):
                return rounds
        rows = await self.rows()
        raise AssertionError(
            f"not balanced after {max_rounds} rounds: "
            + ", ".join(f"{q}: {r.current_owner}->{r.next_owner}" for q, r in rows.items())
        )


def owners_of(rows: Mapping[str, PartitionLease]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for queue, row in rows.items():
        out.setdefault(row.current_owner or "", set()).add(queue)
    return out


# --- options and rows --------------------------------------------------------------------


def test_lease_options_defaults_and_validation() -> None:
    options = LeaseOptions()
    assert (options.lease_interval, options.renew_interval, options.acquire_interval) == (
        30.0,
        10.0,
        10.0,
    )
    assert (options.claim_duration, options.drain_timeout) == (60.0, 60.0)
    assert options.step_interval == 10.0
    for bad in (0, -1, float("nan"), float("inf"), True, "10"):
        with pytest.raises(ValueError, match="acquire_interval"):
            LeaseOptions(acquire_interval=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="half of lease_interval"):
        LeaseOptions(lease_interval=3, renew_interval=2)
    with pytest.raises(ValueError, match="half of claim_duration"):
        LeaseOptions(claim_duration=15)
    assert LeaseOptions(lease_interval=3, renew_interval=1, claim_duration=3).step_interval == 1
    with pytest.raises(ValueError, match="worker_id"):
        PartitionManager(MemoryStorageAccount().table("PartHubPartitions"), TaskHubNames(HUB), "")
    assert new_worker_id() != new_worker_id()


async def test_rows_are_created_once() -> None:
    cluster = Cluster(4)
    a, b = cluster.add("a"), cluster.add("b")
    await asyncio.gather(a.create_rows(), b.create_rows())
    rows = await cluster.rows()
    assert sorted(rows) == cluster.names.control_queues
    assert all(r == PartitionLease(r.queue, etag=r.etag) for r in rows.values())
    entities, _ = await cluster.table.query(partition_key="")
    assert {k for e in entities for k in e.properties} == {"PartitionKey", "RowKey", "IsDraining"}
    await cluster.step("a")
    before = await cluster.rows()
    await cluster.add("c").create_rows()  # a late worker: existing rows are left alone
    assert await cluster.rows() == before
    assert {r.current_owner for r in before.values()} == {"a"}


async def test_rows_carry_the_dtfx_columns() -> None:
    cluster = Cluster(4)
    await cluster.create()
    a = cluster.add("a")
    cluster.add("b")
    changes = await cluster.step("a")
    assert changes.acquired == set(cluster.names.control_queues)
    entities, _ = await cluster.table.query(partition_key="")
    now = cluster.clock()
    for entity in entities:
        assert entity.partition_key == ""
        assert entity.get("CurrentOwner") == "a"
        assert entity.get("NextOwner") is None  # null columns are not written
        assert entity.get("OwnedSince") == entity.get("LastRenewal") == now
        assert entity.get("ExpiresAt") == now + timedelta(seconds=OPTIONS.claim_duration)
        assert entity.get("IsDraining") is False
    await cluster.step("b")  # b asks for its share
    rows = await cluster.rows()
    asked = {q for q, r in rows.items() if r.next_owner == "b"}
    assert len(asked) == 2
    assert all(rows[q].current_owner == "a" for q in asked)
    await cluster.step("a")  # a starts draining them
    rows = await cluster.rows()
    assert {q for q, r in rows.items() if r.is_draining} == asked == a.draining


async def test_unknown_rows_are_ignored() -> None:
    cluster = Cluster(4)
    await cluster.create()
    await cluster.table.insert({"PartitionKey": "", "RowKey": "parthub-control-07"})
    a = cluster.add("a")
    await cluster.step("a")
    assert a.owned == set(cluster.names.control_queues)
    assert (await cluster.rows())["parthub-control-07"].current_owner is None


# --- balancing ---------------------------------------------------------------------------


@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "interleaved"])
@pytest.mark.parametrize("partitions", [4, 8, 16])
@pytest.mark.parametrize("workers", [1, 2, 3])
async def test_workers_starting_together_end_up_balanced(
    workers: int, partitions: int, concurrent: bool
) -> None:
    cluster = Cluster(partitions, seed=workers * 100 + partitions)
    await cluster.create()
    for i in range(workers):
        cluster.add(f"w{i}")
    await cluster.run_until_balanced(20, concurrent=concurrent)
    # ...and it stays that way: no churn once balanced, leases renewed as time passes.
    before = {w: cluster.manager(w).owned for w in cluster.live}
    for _ in range(3 * int(OPTIONS.lease_interval)):
        await cluster.round(concurrent=concurrent)
    assert {w: cluster.manager(w).owned for w in cluster.live} == before
    assert await cluster.balanced()


@pytest.mark.parametrize("partitions", [4, 8, 16])
async def test_joining_workers_get_their_share_by_cooperative_hand_over(partitions: int) -> None:
    cluster = Cluster(partitions, seed=partitions)
    await cluster.create()
    for i in range(3):
        cluster.add(f"w{i}")
        await cluster.run_until_balanced(20)
    # Every queue that moved went draining -> released at the old owner, then acquired.
    moved = 0
    for worker_id, sim in cluster.workers.items():
        drained = set().union(*(c.draining for c in sim.history))
        released = set().union(*(c.released for c in sim.history))
        assert released == drained, worker_id
        assert not set().union(*(c.lost for c in sim.history)), worker_id
        moved += len(released)
    acquired = sum(len(c.acquired) for sim in cluster.workers.values() for c in sim.history)
    assert acquired == partitions + moved


async def test_hand_over_waits_for_the_drain() -> None:
    cluster = Cluster(4)
    await cluster.create()
    a, b = cluster.add("a"), cluster.add("b")
    await a.step()
    assert a.owned == set(cluster.names.control_queues)
    ask = await b.step()
    assert len(ask.requested) == 2
    assert ask.waiting
    assert not ask.acquired
    assert not b.owned

    start = await a.step()
    assert start.draining == ask.requested == a.draining
    assert a.owned == set(cluster.names.control_queues)  # still a's while it drains
    assert not any(a.may_receive(q) for q in a.draining)
    for _ in range(5):  # b waits as long as a drains; time passes, a keeps the leases
        cluster.clock.advance(5)
        assert not (await a.step()).changed
        assert not (await b.step()).acquired
        await cluster.check()
    assert a.draining == ask.requested

    for queue in ask.requested:
        a.mark_drained(queue)
    a.mark_drained("not-draining")  # ignored
    release = await a.step()
    assert release.released == ask.requested
    assert a.owned == set(cluster.names.control_queues) - ask.requested
    take = await b.step()
    assert take.acquired == ask.requested == b.owned
    assert not take.waiting
    await cluster.check()


async def test_a_drain_that_never_finishes_is_released_after_drain_timeout() -> None:
    cluster = Cluster(4)
    await cluster.create()
    a, b = cluster.add("a"), cluster.add("b")
    await a.step()
    ask = await b.step()
    assert (await a.step()).draining == ask.requested
    elapsed = 0.0
    while elapsed < OPTIONS.drain_timeout:
        cluster.clock.advance(5)
        elapsed += 5
        changes = await a.step()
        await cluster.check()
        if changes.released:
            break
        assert not (await b.step()).acquired
    assert changes.released == ask.requested
    assert elapsed >= OPTIONS.drain_timeout
    assert (await b.step()).acquired == ask.requested


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [4, 8])
async def test_a_dead_worker_loses_its_rows_after_lease_expiry(partitions: int) -> None:
    cluster = Cluster(partitions, seed=7)
    await cluster.create()
    cluster.add("a")
    cluster.add("b")
    await cluster.run_until_balanced(20)
    for _ in range(int(OPTIONS.claim_duration) + 5):  # past the first (1-minute) claims
        await cluster.round()
    a, b = cluster.manager("a"), cluster.manager("b")
    theirs, ours = a.owned, b.owned
    cluster.workers["a"].alive = False  # a stops stepping (crash, or a long stall)
    expiries = {r.expires_at for r in (await cluster.rows()).values() if r.current_owner == "a"}
    assert len(expiries) == 1  # renewed together
    expiry = expiries.pop()
    assert expiry is not None

    rounds = 0
    while cluster.clock() < expiry:
        await cluster.round()
        rounds += 1
        assert b.owned == ours, "b took a row of a before its lease expired"
        if cluster.clock() < expiry:
            assert a.owned == theirs
    assert rounds <= OPTIONS.lease_interval + 1
    # a's belief lapsed with its leases, although a never stepped again.
    assert a.owned == set()
    await cluster.round()  # the next step of b claims every expired row
    assert b.owned == set(cluster.names.control_queues)

    # a comes back: it learns it lost its queues, then gets its share back by hand-over.
    cluster.workers["a"].alive = True
    back = await cluster.step("a")
    assert back.lost == theirs
    assert not back.acquired
    await cluster.run_until_balanced(20)


async def test_a_stalled_worker_that_resumes_reports_the_loss() -> None:
    cluster = Cluster(4)
    await cluster.create()
    a = cluster.add("a")
    await cluster.step("a")
    cluster.clock.advance(OPTIONS.claim_duration)  # a stalls past its lease; nobody else
    assert a.owned == set()
    assert not any(a.may_receive(q) for q in cluster.names.control_queues)
    changes = await a.step()  # lapsed, but still free: claimed again at once
    assert a.owned == set(cluster.names.control_queues)
    assert not changes.lost
    assert not changes.acquired


async def test_another_current_owner_means_the_queue_is_lost() -> None:
    cluster = Cluster(4)
    await cluster.create()
    a = cluster.add("a")
    await cluster.step("a")
    queue = cluster.names.control_queue(2)
    row = (await cluster.rows())[queue]
    # Someone whose clock runs ahead claimed it "after expiry".
    intruder = replace_row(row, current_owner="intruder")
    await cluster.table.update(intruder, etag=row.etag, mode=UpdateMode.REPLACE)
    changes = await cluster.step("a")
    assert changes.lost == {queue}
    assert queue not in a.owned
    assert cluster.workers["a"].polling == a.owned


def replace_row(row: PartitionLease, **changes: Any) -> dict[str, TableValue]:
    return dataclasses.replace(row, **changes).to_entity()


async def test_two_claims_of_the_same_rows_in_the_same_step() -> None:
    cluster = Cluster(4)
    await cluster.create()
    a, b = cluster.add("a"), cluster.add("b")
    first, second = await asyncio.gather(a.step(), b.step())
    cluster.workers["a"].apply(first)
    cluster.workers["b"].apply(second)
    await cluster.check()
    assert first.conflicts + second.conflicts >= 1
    assert a.owned | b.owned == set(cluster.names.control_queues)
    assert not a.owned & b.owned
    rows = await cluster.rows()
    assert owners_of(rows) == {k: v for k, v in {"a": a.owned, "b": b.owned}.items() if v}
    await cluster.run_until_balanced(10, concurrent=True)


async def test_a_412_on_renewal_is_retried_without_losing_the_row() -> None:
    cluster = Cluster(4)
    await cluster.create()
    a = cluster.add("a")
    await cluster.step("a")
    cluster.clock.advance(OPTIONS.renew_interval)
    cluster.account.fail_next(
        OpKind.TABLE_WRITE,
        ConditionFailedError("injected", status=412, code="UpdateConditionNotSatisfied"),
    )
    changes = await cluster.step("a")
    assert changes.conflicts == 1
    assert changes.retry_now
    assert not changes.changed
    assert a.owned == set(cluster.names.control_queues)
    changes = await cluster.step("a")
    assert not changes.retry_now
    rows = await cluster.rows()
    assert {r.last_renewal for r in rows.values()} == {cluster.clock()}


class ReplyLostTable:
    """A table whose next ``update`` is written but answered with an error (a lost reply)."""

    def __init__(self, inner: Table) -> None:
        self.inner = inner
        self.lose_next_reply = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update(self, entity: Mapping[str, TableValue], *, etag: str, mode: UpdateMode) -> str:
        new_etag = await self.inner.update(entity, etag=etag, mode=mode)
        if self.lose_next_reply:
            self.lose_next_reply = False
            raise StorageError("connection reset after the write", status=None)
        return new_etag


async def test_a_claim_whose_reply_was_lost_is_claimed_again() -> None:
    cluster = Cluster(1)
    await cluster.create()
    flaky = ReplyLostTable(cluster.table)
    a = cluster.add("a", table=flaky)
    b = cluster.add("b")
    flaky.lose_next_reply = True
    changes = await cluster.step("a")
    assert changes.errors == 1
    assert not a.owned
    assert (await cluster.rows())[cluster.names.control_queue(0)].current_owner == "a"
    assert not (await cluster.step("b")).acquired  # the row is a's until it expires
    assert (await cluster.step("a")).acquired == {cluster.names.control_queue(0)}
    assert not b.owned


async def test_a_release_whose_reply_was_lost_is_not_taken_back() -> None:
    cluster = Cluster(2)
    await cluster.create()
    flaky = ReplyLostTable(cluster.table)
    a = cluster.add("a", table=flaky)
    b = cluster.add("b")
    await cluster.step("a")
    ask = await cluster.step("b")
    assert len(ask.requested) == 1
    assert (await cluster.step("a")).draining == ask.requested
    flaky.lose_next_reply = True
    changes = await cluster.step("a")  # drained (the sim marks it), released; reply lost
    assert changes.released == ask.requested
    assert changes.errors == 1
    assert (await cluster.step("b")).acquired == ask.requested
    assert not (await cluster.step("a")).changed
    assert a.owned | b.owned == set(cluster.names.control_queues)


# --- shutdown ----------------------------------------------------------------------------


async def test_release_all_hands_over_immediately() -> None:
    cluster = Cluster(8)
    await cluster.create()
    a, b = cluster.add("a"), cluster.add("b")
    await cluster.run_until_balanced(20)
    theirs = a.owned
    changes = await a.release_all()
    cluster.workers["a"].apply(changes)
    assert changes.released == theirs
    assert not changes.lost
    assert a.owned == set()
    assert a.shutting_down
    assert not (await a.step()).changed  # closed: steps do nothing
    # No time passes: b claims everything at its next step.
    assert (await cluster.step("b")).acquired == theirs
    assert b.owned == set(cluster.names.control_queues)


async def test_release_all_withdraws_pending_requests() -> None:
    cluster = Cluster(4)
    await cluster.create()
    a, b = cluster.add("a"), cluster.add("b")
    await cluster.step("a")
    ask = await cluster.step("b")
    await b.release_all()
    rows = await cluster.rows()
    assert all(r.next_owner is None for r in rows.values())
    changes = await cluster.step("a")  # nothing to hand over any more
    assert not changes.draining
    assert a.owned == set(cluster.names.control_queues)
    assert ask.requested


async def test_shutdown_drains_then_hands_over_to_a_worker_that_asks() -> None:
    cluster = Cluster(4)
    await cluster.create()
    a = cluster.add("a")
    cluster.add("b")
    await cluster.step("a")
    a.begin_shutdown()
    drain = await cluster.step("a")
    assert drain.draining == set(cluster.names.control_queues) == a.draining
    assert all(r.is_draining and not r.next_owner for r in (await cluster.rows()).values())
    ask = await cluster.step("b")  # the owner is shutting down: b lines up for every row
    assert ask.requested == set(cluster.names.control_queues)
    assert ask.waiting
    release = await cluster.step("a")  # the sim worker drained them all
    assert release.released == set(cluster.names.control_queues)
    assert (await cluster.step("b")).acquired == set(cluster.names.control_queues)
    assert not (await cluster.step("a")).changed
    assert not a.owned


# --- the loop ----------------------------------------------------------------------------

FAST = LeaseOptions(
    lease_interval=2.0,
    renew_interval=0.5,
    acquire_interval=0.1,
    claim_duration=2.0,
    drain_timeout=5.0,
    busy_interval=0.05,
)


async def wait_until(condition: Any, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def test_run_balances_hands_over_and_shuts_down() -> None:
    account = MemoryStorageAccount()  # real clock: run() really sleeps
    names = TaskHubNames(HUB, 4)
    table = account.table(names.partitions_table)
    managers = {w: PartitionManager(table, names, w, options=FAST) for w in ("a", "b")}
    polling: dict[str, set[str]] = {w: set() for w in managers}
    stops = {w: asyncio.Event() for w in managers}

    def disjoint(*_: object) -> None:
        assert not managers["a"].owned & managers["b"].owned

    account.faults.append(disjoint)
    # Reads of the table fail now and then: the loop must shrug that off.
    account.fail_next(OpKind.TABLE_QUERY, StorageError("injected", status=500), times=3)

    def handler(worker_id: str) -> Any:
        async def on_change(changes: PartitionChanges) -> None:
            polling[worker_id] -= changes.lost | changes.released | changes.draining
            for queue in changes.draining:
                managers[worker_id].mark_drained(queue)  # nothing in flight: drained at once
            polling[worker_id] |= changes.acquired

        return on_change

    await managers["a"].create_rows()
    tasks = {
        w: asyncio.create_task(m.run(handler(w), stops[w]), name=f"partitions {w}")
        for w, m in managers.items()
    }
    try:
        await wait_until(
            lambda: (
                all(len(p) == 2 for p in polling.values())
                and all(len(m.owned) == 2 for m in managers.values())
            ),
            "a 2/2 balance",
        )
        disjoint()
        stops["a"].set()
        await asyncio.wait_for(tasks["a"], 20)
        assert managers["a"].owned == set()
        assert polling["a"] == set()
        await wait_until(lambda: len(polling["b"]) == 4, "b to take over every queue")
        assert managers["b"].owned == set(names.control_queues)
        stops["b"].set()
        await asyncio.wait_for(tasks["b"], 20)
        entities, _ = await table.query(partition_key="")
        assert all(e.get("CurrentOwner") is None for e in entities)
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_run_survives_a_failing_change_handler() -> None:
    account = MemoryStorageAccount()
    names = TaskHubNames(HUB, 2)
    options = dataclasses.replace(FAST, drain_timeout=1.0)
    manager = PartitionManager.for_account(account, names, "a", options=options)
    await manager.create_rows()
    calls = itertools.count()

    async def on_change(changes: PartitionChanges) -> None:
        next(calls)
        raise RuntimeError("handler bug")

    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(on_change, stop))
    try:
        await wait_until(lambda: manager.owned == set(names.control_queues), "the claims")
        stop.set()
        await asyncio.wait_for(task, 20)  # drains (mark_drained never comes) until timeout
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert next(calls) >= 2  # acquired, then draining (and released)
    assert manager.owned == set()


async def test_cancelling_run_always_stops_it() -> None:
    """Worker.stop() cancels the lease loop and waits for it. A cancellation that lands
    just as a step finishes must still end the loop (asyncio.wait_for on Python 3.11
    swallowed it there, and the loop outlived its worker: stop() hung)."""
    account = MemoryStorageAccount()
    names = TaskHubNames(HUB, 2)
    manager = PartitionManager.for_account(account, names, "a", options=FAST)
    await manager.create_rows()
    stop = asyncio.Event()

    async def on_change(changes: PartitionChanges) -> None:
        return None

    still_running = 0
    for attempt in range(200):
        task = asyncio.create_task(manager.run(on_change, stop))
        # Land the cancel at many different points of the step (each storage operation
        # yields to the loop once).
        for _ in range(attempt % 12):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if not done:
            still_running += 1
            stop.set()  # let it end before the next attempt
            await asyncio.gather(task, return_exceptions=True)
            stop.clear()
    assert still_running == 0, f"{still_running} of 200 cancelled loops kept running"


# --- fewer requests: batched renewals, reads skipped in a steady state --------------------


class CountingTable:
    """One manager's view of the shared table, counting the requests it makes."""

    def __init__(self, inner: Table) -> None:
        self.inner = inner
        self.ops: Counter[str] = Counter()
        self.before_transaction: Any = None  # async () -> None, run once (a racing writer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def take(self) -> dict[str, int]:
        """The requests since the last take."""
        ops = dict(self.ops)
        self.ops.clear()
        return ops

    async def query(self, **kwargs: Any) -> Any:
        self.ops["query"] += 1
        return await self.inner.query(**kwargs)

    async def update(self, entity: Mapping[str, TableValue], *, etag: str, mode: UpdateMode) -> str:
        self.ops["write"] += 1
        return await self.inner.update(entity, etag=etag, mode=mode)

    async def transaction(self, ops: Sequence[TableOp]) -> list[str]:
        self.ops["batch"] += 1
        race, self.before_transaction = self.before_transaction, None
        if race is not None:
            await race()
        return await self.inner.transaction(ops)


def add_counted(cluster: Cluster, worker_id: str, **kwargs: Any) -> CountingTable:
    table = CountingTable(cluster.table)
    if kwargs:
        manager = PartitionManager(
            table, cluster.names, worker_id, options=cluster.options, clock=cluster.clock, **kwargs
        )
        cluster.workers[worker_id] = SimWorker(manager)
    else:
        cluster.add(worker_id, table=table)
    return table


async def steady(cluster: Cluster, worker_id: str) -> None:
    """Claim, then one more step a renewal later: the worker is in a steady state."""
    await cluster.step(worker_id)
    cluster.clock.advance(cluster.options.step_interval)
    await cluster.step(worker_id)


async def test_renewals_are_batched_in_one_transaction() -> None:
    cluster = Cluster(4)
    await cluster.create()
    counted = add_counted(cluster, "a")
    a = cluster.manager("a")
    await steady(cluster, "a")
    before = await cluster.rows()
    cluster.clock.advance(OPTIONS.step_interval)
    counted.take()
    changes = await cluster.step("a")
    assert counted.take() == {"batch": 1}  # no read: one request
    assert not changes.changed
    assert not changes.retry_now
    rows = await cluster.rows()
    now = cluster.clock()
    for queue, row in rows.items():
        assert row.etag != before[queue].etag
        assert row.current_owner == "a"
        assert row.last_renewal == now
        assert row.expires_at == now + timedelta(seconds=OPTIONS.lease_interval)
        assert row.owned_since == before[queue].owned_since
    assert a.owned == set(cluster.names.control_queues)
    # DTFx's columns, nothing else (no wake address was given).
    entities, _ = await cluster.table.query(partition_key="")
    assert {k for e in entities for k in e.properties} == {
        "PartitionKey",
        "RowKey",
        "CurrentOwner",
        "OwnedSince",
        "LastRenewal",
        "ExpiresAt",
        "IsDraining",
    }
    # Owning every row, it never needs to read (past idle_read_interval too); a step that
    # reads (here on request) renews in one transaction as well.
    for _ in range(3):
        cluster.clock.advance(OPTIONS.step_interval)
        await cluster.step("a")
        assert counted.take() == {"batch": 1}
    a.request_read()
    cluster.clock.advance(OPTIONS.step_interval)
    await cluster.step("a")
    assert counted.take() == {"query": 1, "batch": 1}


async def test_a_lone_idle_worker_only_renews() -> None:
    """The idle cost of one worker owning all 4 partitions with the default timings, stepped
    at the loop's cadence for an hour (printed; run with -s): one renewal transaction per
    step and no read - a newcomer's request would fail a renewal's If-Match. Before
    batching and skipped reads, a step was a query and 4 writes: 1,800 requests an hour."""
    clock = FakeClock(START)
    account = MemoryStorageAccount(clock=clock)
    names = TaskHubNames(HUB, 4)
    a = PartitionManager.for_account(account, names, "a", clock=clock)
    await a.create_rows()
    await a.step()
    interval = a.options.step_interval
    clock.advance(interval)
    await a.step()
    account.stats.reset()
    steps = 0
    while steps * interval < 3600:
        clock.advance(interval)
        steps += 1
        changes = await a.step()
        assert not changes.changed
        assert not changes.retry_now
    total = account.stats.total()
    print(f"\nidle worker, 4 partitions, default LeaseOptions: {total} table requests/hour")
    assert a.owned == set(names.control_queues)
    assert account.stats.snapshot() == {"table_batch": steps}


async def test_an_idle_worker_sharing_the_table_reads_every_idle_read_interval() -> None:
    # Two workers, two rows each: a must read now and then to see b's rows (one released
    # or expired would be claimable); between reads it only renews.
    cluster = Cluster(4, options=LeaseOptions())
    await cluster.create()
    counted = add_counted(cluster, "a")
    cluster.add("b")
    await cluster.run_until_balanced(20)
    interval = cluster.options.step_interval
    for _ in range(2):  # both steady
        cluster.clock.advance(interval)
        await cluster.step("a")
        await cluster.step("b")
    counted.take()
    per_step = []
    for _ in range(12):
        cluster.clock.advance(interval)
        await cluster.step("b")
        await cluster.step("a")
        per_step.append(counted.take())
    assert all(ops.get("batch") == 1 for ops in per_step), per_step
    reads = [i for i, ops in enumerate(per_step) if "query" in ops]
    every = round(cluster.options.idle_read_interval / interval)
    assert len(reads) == len(per_step) // every, per_step
    assert all(b - a == every for a, b in itertools.pairwise(reads)), reads


async def test_a_412_in_the_batch_falls_back_and_the_hand_over_works() -> None:
    cluster = Cluster(4)
    await cluster.create()
    counted = add_counted(cluster, "a")
    a, b = cluster.manager("a"), cluster.add("b")
    await steady(cluster, "a")
    ask = await cluster.step("b")  # NextOwner on two of a's rows: their ETags change
    assert len(ask.requested) == 2
    cluster.clock.advance(OPTIONS.step_interval)
    counted.take()
    changes = await cluster.step("a")  # batch without a read -> 412 -> read, row by row
    assert counted.take() == {"batch": 1, "query": 1, "write": 4}
    assert changes.draining == ask.requested == a.draining
    assert not changes.lost
    assert a.owned == set(cluster.names.control_queues)
    rows = await cluster.rows()
    assert {q for q, r in rows.items() if r.is_draining} == ask.requested
    assert {r.last_renewal for r in rows.values()} == {cluster.clock()}
    release = await cluster.step("a")  # the sim worker marks them drained first
    assert release.released == ask.requested
    assert (await cluster.step("b")).acquired == ask.requested == b.owned
    await cluster.run_until_balanced(10)


async def test_a_412_in_the_batch_of_a_reading_step_falls_back() -> None:
    cluster = Cluster(4)
    await cluster.create()
    counted = add_counted(cluster, "a")
    a = cluster.manager("a")
    await steady(cluster, "a")
    queue = cluster.names.control_queue(1)

    async def b_asks() -> None:  # lands between a's read and its renewal transaction
        row = (await cluster.rows())[queue]
        new = replace_row(row, next_owner="b")
        await cluster.table.update(new, etag=row.etag, mode=UpdateMode.REPLACE)

    counted.take()
    cluster.clock.advance(OPTIONS.step_interval)
    await cluster.step("a")
    assert counted.take() == {"batch": 1}
    cluster.clock.advance(OPTIONS.step_interval)
    a.request_read()  # a step that reads (a owns every row: it reads only when asked)
    counted.before_transaction = b_asks
    changes = await cluster.step("a")
    # read, batch (412), read again, then row by row: one row starts draining, 3 renewed
    assert counted.take() == {"query": 2, "batch": 1, "write": 4}
    assert changes.draining == {queue} == a.draining
    rows = await cluster.rows()
    assert rows[queue].is_draining
    assert rows[queue].next_owner == "b"
    assert all(r.current_owner == "a" for r in rows.values())
    assert {r.last_renewal for r in rows.values()} == {cluster.clock()}


async def test_a_failed_batch_is_an_error_and_the_next_step_reads() -> None:
    cluster = Cluster(4)
    await cluster.create()
    counted = add_counted(cluster, "a")
    a = cluster.manager("a")
    await steady(cluster, "a")
    cluster.clock.advance(OPTIONS.step_interval)
    cluster.account.fail_next(OpKind.TABLE_BATCH, StorageError("injected", status=500))
    changes = await cluster.step("a")
    assert changes.errors == 1
    assert changes.retry_now
    assert a.owned == set(cluster.names.control_queues)  # still believed: not lapsed
    counted.take()
    changes = await cluster.step("a")
    assert not changes.retry_now
    assert counted.take() == {"query": 1, "write": 4}  # after a failure: row by row
    rows = await cluster.rows()
    assert {r.last_renewal for r in rows.values()} == {cluster.clock()}


async def test_reads_are_not_skipped_on_request_or_while_anything_is_in_motion() -> None:
    cluster = Cluster(4)
    await cluster.create()
    counted = add_counted(cluster, "a")
    a = cluster.manager("a")
    await steady(cluster, "a")
    counted.take()
    a.request_read()
    await cluster.step("a")
    assert counted.take() == {"query": 1}  # no renewal due yet
    await cluster.step("a")
    assert counted.take() == {}  # steady, nothing due: no request at all
    a.begin_shutdown()
    await cluster.step("a")
    assert counted.take() == {"query": 1, "write": 4}  # every row marked draining
    assert a.draining == set(cluster.names.control_queues)
    for _ in range(3):
        cluster.clock.advance(1)
        await cluster.step("a")
        assert counted.take()["query"] == 1
    assert not a.owned


async def test_a_dead_workers_rows_are_claimed_at_their_expiry_without_idle_reads() -> None:
    """With reads skipped, another worker's rows are read (and claimed) as soon as the
    ExpiresAt last read has passed, not only every idle_read_interval."""
    cluster = Cluster(4, options=dataclasses.replace(OPTIONS, idle_read_interval=1000.0))
    await cluster.create()
    cluster.add("a")
    counted = add_counted(cluster, "b")
    a, b = cluster.manager("a"), cluster.manager("b")
    await cluster.run_until_balanced(20)
    for _ in range(int(OPTIONS.claim_duration) + 5):
        await cluster.round()
    cluster.workers["a"].alive = False
    theirs = a.owned
    rows = await cluster.rows()
    expiry = max(r.expires_at for r in rows.values() if r.expires_at and r.current_owner == "a")
    counted.take()
    rounds = 0
    while cluster.clock() < expiry:
        await cluster.round()
        rounds += 1
        assert b.owned.isdisjoint(theirs)
    assert counted.take().get("query", 0) <= 2 < rounds  # not every step
    await cluster.round()  # the first step at or after the expiry reads and claims
    assert b.owned == set(cluster.names.control_queues)


# --- WakeAddress -------------------------------------------------------------------------


async def test_the_wake_address_is_written_renewed_and_cleared() -> None:
    cluster = Cluster(4)
    await cluster.create()
    address = "127.0.0.1:4711"
    add_counted(cluster, "a", wake_address=address)
    a, b = cluster.manager("a"), cluster.add("b")  # b: no wake address
    assert (a.wake_address, b.wake_address) == (address, None)
    await steady(cluster, "a")
    entities, _ = await cluster.table.query(partition_key="")
    assert all(e.get("WakeAddress") == address for e in entities)
    cluster.clock.advance(OPTIONS.step_interval)
    await cluster.step("a")  # a batch renewal keeps it
    assert {r.wake_address for r in (await cluster.rows()).values()} == {address}

    b_asked = False
    for _ in range(20):  # b's share: asked for (a's address stays), released, claimed
        await cluster.round()
        rows = await cluster.rows()
        for queue, row in rows.items():
            if row.current_owner == "a":
                assert row.wake_address == address, queue
            else:
                assert row.wake_address is None, queue  # released by a, or claimed by b
            b_asked = b_asked or row.next_owner == "b"
        if await cluster.balanced():
            break
    assert b_asked
    assert len(b.owned) == 2

    changes = await a.release_all()
    cluster.workers["a"].apply(changes)
    entities, _ = await cluster.table.query(partition_key="")
    assert all("WakeAddress" not in e.properties for e in entities)


def test_rows_without_a_wake_address_read_as_none() -> None:
    lease = PartitionLease(queue="q", current_owner="a")
    assert lease.wake_address is None
    assert "WakeAddress" not in lease.to_entity()
    assert dataclasses.replace(lease, wake_address="[::1]:9").to_entity()["WakeAddress"] == (
        "[::1]:9"
    )
    with pytest.raises(ValueError, match="wake_address"):
        PartitionManager(
            MemoryStorageAccount().table("PartHubPartitions"),
            TaskHubNames(HUB),
            "a",
            wake_address="",
        )
