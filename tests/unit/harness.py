"""A deterministic driver for the real runner/provider code on the in-memory storage account.

:class:`Harness` plays the part of one worker process, one poll at a time: it receives from
every control queue (running one episode per instance with the real
:class:`~durable_azure.runner.EpisodeRunner`), then from the work-item queue (running each
activity with the real :class:`~durable_azure.activities.ActivityRunner`). Time is a
:class:`FakeClock` the driver advances when every message left is invisible, so visibility
timeouts and abandon backoffs play out without waiting.

Crashes: :class:`CrashSwitch` is a fault hook of the memory account. Armed for "the n-th
operation of kind K (on queue Q) during episode E of instance I", it raises
:class:`SimulatedCrash` there and then fails *every* later storage operation, like a process
that died mid-checkpoint (concurrent sends of the same ``gather`` die with it). The driver
then :meth:`Harness.restart`\\ s: new runners with empty history caches, the switch reset,
and the clock moved past the visibility timeout so the messages the dead process held
reappear.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from durable_azure.activities import ActivityRunner
from durable_azure.client import DurableClient
from durable_azure.engine import serialization
from durable_azure.engine.history import (
    ExecutionCompleted,
    HistoryEvent,
    OrchestrationStatus,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
)
from durable_azure.engine.replay import Orchestrator
from durable_azure.runner import EpisodeRunner
from durable_azure.storage.names import MAX_MESSAGES_PER_RECEIVE, TaskHubNames
from durable_azure.storage.primitives import OpKind, TableOp, TableValue, UpdateMode
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.storage.queues import DEFAULT_VISIBILITY_TIMEOUT, ReceivedMessage
from durable_azure.testing.memory import MemoryQueue, MemoryStorageAccount, MemoryTable

HUB = "TestHub"
VISIBILITY = DEFAULT_VISIBILITY_TIMEOUT


class FakeClock:
    """The memory account's clock; it moves only when the test says so, or - after
    :meth:`follow_real_time`, for a real :class:`~durable_azure.worker.Worker` that polls
    and backs off in real time - with the wall clock, from where it stood."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)
        self._offset: timedelta | None = None

    def __call__(self) -> datetime:
        if self._offset is not None:
            return datetime.now(UTC) + self._offset
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def follow_real_time(self) -> None:
        self._offset = self.now - datetime.now(UTC)


# --- size-recording storage ----------------------------------------------------------------


class RecordingQueue(MemoryQueue):
    """A memory queue that remembers the largest body it was asked to store."""

    largest_body = 0

    async def send(self, content: str, *, visibility_timeout: float = 0.0) -> None:
        size = len(content.encode("utf-8"))
        await super().send(content, visibility_timeout=visibility_timeout)
        self.largest_body = max(self.largest_body, size)


def _largest_string(entity: Mapping[str, TableValue]) -> int:
    sizes = [len(v.encode("utf-16-le")) for v in entity.values() if isinstance(v, str)]
    return max(sizes, default=0)


class RecordingTable(MemoryTable):
    """A memory table that remembers the largest string property (UTF-16 bytes) written."""

    largest_property = 0

    def _note(self, entities: Sequence[Mapping[str, TableValue]]) -> None:
        for entity in entities:
            self.largest_property = max(self.largest_property, _largest_string(entity))

    async def insert(self, entity: Mapping[str, TableValue]) -> str:
        etag = await super().insert(entity)
        self._note([entity])
        return etag

    async def upsert(self, entity: Mapping[str, TableValue], mode: UpdateMode) -> str:
        etag = await super().upsert(entity, mode)
        self._note([entity])
        return etag

    async def update(self, entity: Mapping[str, TableValue], *, etag: str, mode: UpdateMode) -> str:
        new_etag = await super().update(entity, etag=etag, mode=mode)
        self._note([entity])
        return new_etag

    async def transaction(self, ops: Sequence[TableOp]) -> list[str]:
        etags = await super().transaction(ops)
        self._note([op.entity for op in ops])
        return etags


class RecordingAccount(MemoryStorageAccount):
    """A :class:`MemoryStorageAccount` whose queues and tables record what they stored."""

    def queue(self, name: str) -> MemoryQueue:
        return self._queues.setdefault(name, RecordingQueue(self, name))

    def table(self, name: str) -> MemoryTable:
        return self._tables.setdefault(name, RecordingTable(self, name))

    @property
    def largest_queue_body(self) -> int:
        return max((getattr(q, "largest_body", 0) for q in self._queues.values()), default=0)

    @property
    def largest_table_property(self) -> int:
        return max((getattr(t, "largest_property", 0) for t in self._tables.values()), default=0)

    def next_visible_time(self) -> datetime | None:
        """When the next hidden message of any queue becomes visible (reads private state:
        the storage API has no such query)."""
        times = [m.visible_at for q in self._state.queues.values() for m in q.values()]
        return min(times, default=None)


# --- crashes -------------------------------------------------------------------------------


class SimulatedCrash(Exception):
    """The worker process died at this storage operation."""


@dataclass(frozen=True)
class CrashPoint:
    """Crash at the ``nth`` operation of ``kind`` (on resource ``on``, if given) during the
    ``episode``-th episode (1-based ``EpisodeRunner.process`` call) of the instance, or -
    with ``episode=None`` - whenever it comes next (e.g. inside an activity)."""

    kind: OpKind
    nth: int = 1
    episode: int | None = None
    on: str | None = None


class CrashSwitch:
    """A memory-account fault hook: armed, it kills the "process" at one operation."""

    def __init__(self) -> None:
        self.point: CrashPoint | None = None
        self.seen = 0
        self.crashed = False
        self.fired = 0

    def arm(self, point: CrashPoint) -> None:
        self.point = point
        self.seen = 0

    def disarm(self) -> None:
        self.point = None

    def __call__(self, kind: OpKind, resource: str) -> None:
        if self.crashed:
            raise SimulatedCrash(f"{kind.value} on {resource} after the process died")
        point = self.point
        if point is None or kind is not point.kind or point.on not in (None, resource):
            return
        self.seen += 1
        if self.seen == point.nth:
            self.crashed = True
            self.fired += 1
            self.point = None
            raise SimulatedCrash(f"process died at {kind.value} #{self.seen} on {resource}")


# --- the harness ---------------------------------------------------------------------------


class Harness:
    """One simulated worker process over a :class:`RecordingAccount`."""

    def __init__(
        self,
        orchestrators: Mapping[str, Orchestrator],
        activities: Mapping[str, Callable[[Any], Any]],
        *,
        partition_count: int = 4,
        cache_size: int = 1000,
    ) -> None:
        self.clock = FakeClock()
        self.account = RecordingAccount(clock=self.clock)
        self.names = TaskHubNames(HUB, partition_count)
        self.orchestrators = dict(orchestrators)
        self.activity_functions = dict(activities)
        self.cache_size = cache_size
        self.switch = CrashSwitch()
        self.account.faults.append(self.switch)
        #: Activity invocations by name.
        self.calls: Counter[str] = Counter()
        #: Episodes run (``process`` calls) by instance id.
        self.episodes_run: Counter[str] = Counter()
        self.crashes = 0
        self._plan: tuple[str, CrashPoint] | None = None
        self.restart()

    # --- processes -----------------------------------------------------------------------

    def restart(self) -> None:
        """A new worker process: fresh runners and caches, same storage."""
        self.provider = AzureStorageProvider(self.account, self.names)
        self.client = DurableClient(self.provider)
        self.episodes = EpisodeRunner(
            self.provider, self.orchestrators.get, cache_size=self.cache_size, clock=self.clock
        )
        self.activities = ActivityRunner(self.provider, self._activity, executor=None)

    def _activity(self, name: str) -> Callable[[Any], Any] | None:
        fn = self.activity_functions.get(name)
        if fn is None:
            return None

        def counted(value: Any) -> Any:
            self.calls[name] += 1
            return fn(value)

        return counted

    def crash_at(self, instance_id: str, point: CrashPoint) -> None:
        """Arrange for the process to die at ``point`` (see :class:`CrashPoint`)."""
        if point.episode is None:
            self.switch.arm(point)
        else:
            self._plan = (instance_id, point)

    async def _recover(self) -> None:
        # Let the dead process's concurrent operations (gather siblings) run into the
        # switch and fail, then start a new process once the held messages reappear.
        for _ in range(10):
            await asyncio.sleep(0)
        self.crashes += 1
        self.switch.crashed = False
        self.switch.disarm()
        self.restart()
        self.clock.advance(VISIBILITY.total_seconds() + 1)

    # --- polling -------------------------------------------------------------------------

    async def start(self, name: str, instance_id: str, value: Any = None) -> str:
        return await self.client.start_new(name, instance_id, value)

    async def run_episodes(self) -> int:
        """One poll of every control queue; runs an episode per instance received."""
        count = 0
        for queue in self.provider.control_queues:
            received, unreadable = await queue.receive(MAX_MESSAGES_PER_RECEIVE, VISIBILITY)
            assert not unreadable, [u.error for u in unreadable]
            count += len(received)
            by_instance: dict[str, list[ReceivedMessage]] = {}
            for message in received:
                by_instance.setdefault(message.message.instance_id, []).append(message)
            for instance_id, batch in by_instance.items():
                await self._episode(instance_id, batch)
        return count

    async def _episode(self, instance_id: str, batch: list[ReceivedMessage]) -> None:
        self.episodes_run[instance_id] += 1
        plan = self._plan
        armed = (
            plan is not None
            and plan[0] == instance_id
            and plan[1].episode == self.episodes_run[instance_id]
        )
        if armed:
            assert plan is not None
            self.switch.arm(plan[1])
            self._plan = None
        await self.episodes.process(instance_id, batch)
        if armed and not self.switch.crashed:
            raise AssertionError(f"crash point {plan} was never reached in that episode")

    async def run_activities(self) -> int:
        """One poll of the work-item queue; runs every activity received."""
        received, unreadable = await self.provider.work_items.receive(
            MAX_MESSAGES_PER_RECEIVE, VISIBILITY
        )
        assert not unreadable, [u.error for u in unreadable]
        for message in received:
            await self.activities.process(message)
        return len(received)

    async def step(self) -> int:
        """Episodes, then activities; a crash restarts the process. Returns messages seen."""
        try:
            return await self.run_episodes() + await self.run_activities()
        except SimulatedCrash:
            await self._recover()
            return 1

    async def queued(self) -> int:
        """Messages left in the hub's control and work-item queues, visible or not."""
        queues = [*self.provider.control_queues, self.provider.work_items]
        counts = [await q.queue.approximate_count() for q in queues]
        return sum(counts)

    async def drain(self, max_rounds: int = 200) -> None:
        """Run until every queue is empty, moving the clock when all that is left is hidden."""
        for _ in range(max_rounds):
            if await self.step():
                continue
            if not await self.queued():
                return
            when = self.account.next_visible_time()
            assert when is not None
            self.clock.now = max(self.clock.now, when)
        raise AssertionError(f"the task hub did not go idle in {max_rounds} rounds")

    # --- reading state -------------------------------------------------------------------

    async def history(self, instance_id: str) -> list[HistoryEvent]:
        return (await self.provider.load_history(instance_id)).events

    async def output(self, instance_id: str) -> Any:
        row = await self.provider.read_instance(instance_id)
        assert row is not None
        text = await self.provider.payloads.fetch_instance_value(row.output)
        return serialization.loads(text)

    async def assert_completed(self, instance_id: str, expected: Any) -> None:
        """History and Instances row both say Completed with ``expected``; the history has
        no duplicate scheduling or completion; the queues are empty."""
        events = await self.history(instance_id)
        check_history(events)
        completions = [e for e in events if isinstance(e, ExecutionCompleted)]
        assert len(completions) == 1, completions
        assert completions[0].orchestration_status is OrchestrationStatus.Completed
        assert serialization.loads(completions[0].result) == expected
        row = await self.provider.read_instance(instance_id)
        assert row is not None
        assert row.runtime_status is OrchestrationStatus.Completed
        assert row.execution_id == (await self.provider.load_history(instance_id)).execution_id
        assert await self.output(instance_id) == expected
        assert await self.queued() == 0


def check_history(events: Sequence[HistoryEvent]) -> None:
    """No TaskScheduled id twice, no task completed twice, every completion scheduled."""
    scheduled = [e.event_id for e in events if isinstance(e, TaskScheduled)]
    completed = [e.task_scheduled_id for e in events if isinstance(e, (TaskCompleted, TaskFailed))]
    assert len(scheduled) == len(set(scheduled)), f"duplicate TaskScheduled: {scheduled}"
    assert len(completed) == len(set(completed)), f"duplicate completions: {completed}"
    assert set(completed) <= set(scheduled), (completed, scheduled)
