"""Running orchestration episodes and activities against the provider.

The :class:`EpisodeRunner` takes the control-queue messages of one instance, decides which
of them to apply (duplicates, stale executions and early responses are deleted or deferred,
never applied twice), replays the orchestrator through the pure engine and commits the
result through :meth:`AzureStorageProvider.commit`.

The :class:`ActivityRunner` runs one work item and sends its response.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from durable_azure import effects, telemetry
from durable_azure import logevents as ev
from durable_azure.engine.actions import (
    CompleteOrchestration,
    CreateSubOrchestration,
    CreateTimer,
    ScheduleTask,
)
from durable_azure.engine.history import (
    ExecutionCompleted,
    ExecutionRewound,
    ExecutionStarted,
    ExecutionTerminated,
    FailureDetails,
    GenericEvent,
    HistoryEvent,
    OrchestrationStatus,
    OrchestratorCompleted,
    OrchestratorStarted,
    ParentInstance,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerFired,
)
from durable_azure.engine.replay import EpisodeResult, Orchestrator, run_episode
from durable_azure.errors import SessionAbortedError, StorageError
from durable_azure.storage.codec import completion_of
from durable_azure.storage.messages import TaskMessage
from durable_azure.storage.poison import DEFAULT_MAX_DEQUEUE_COUNT
from durable_azure.storage.provider import AzureStorageProvider, Checkpoint, Outbound
from durable_azure.storage.queues import ReceivedMessage
from durable_azure.storage.tracking import InstanceRecord, LoadedHistory

logger = logging.getLogger(__name__)

#: A message for an instance that does not exist is retried this many times (its start
#: may still be on the way) before it is deleted as an orphan.
MAX_ORPHAN_DEQUEUES = 5

#: A start message whose Instances row names another execution is deferred this many
#: times (its client may not have written the row yet) before it is deleted as stale.
MAX_START_DEFERRALS = 10

#: Continue-as-new executions run back to back in one work item at most this many times
#: (an eternal orchestration working off buffered events); then the next one is woken by
#: a message, so one instance cannot hold a worker forever.
MAX_INLINE_GENERATIONS = 100

#: A timer or scheduled start that arrives more than this early is parked again.
_EARLY = timedelta(seconds=1)

#: How many instances' histories a worker keeps in memory between episodes.
DEFAULT_HISTORY_CACHE_SIZE = 1000

#: An episode folds the results of its quick local activities into at most this many
#: further passes of the orchestrator before it checkpoints (see ``EpisodeRunner._fold``).
MAX_FOLDED_PASSES = 50

#: The tag (a DTFx ``TaskScheduled.Tags`` entry) on an activity that the worker running the
#: orchestration ran in-process instead of sending it to the work-item queue.
DISPATCH_TAG = "durable-azure.dispatch"
DISPATCH_LOCAL = "local"


@dataclass(frozen=True, slots=True)
class LocalTask:
    """An activity the caller must run in-process and hand back as a :class:`LocalResult`."""

    instance_id: str
    execution_id: str
    scheduled: TaskScheduled


@dataclass(frozen=True, slots=True)
class LocalResult:
    """The outcome of a :class:`LocalTask`, for the instance's next episode."""

    execution_id: str
    event: TaskCompleted | TaskFailed


#: Runs local activities and returns the results of those that finished in time (see
#: ``EpisodeRunner.process``).
Fold = Callable[[list[LocalTask]], Awaitable[list[LocalResult]]]

_RESULTS = (TaskCompleted, TaskFailed)


@dataclass
class EpisodeOutcome:
    """What the caller of :meth:`EpisodeRunner.process` must do next.

    Attributes:
        local: activities to run in this process now.
        anchor: a message of the instance kept hidden (not deleted) while local activities
            run: the caller renews its visibility and passes it to the next ``process``
            call. If this process dies, the anchor reappears and whoever receives it runs
            the instance's unfinished local activities again (see docs/design.md).
        retry: results of local activities this episode could not checkpoint (storage
            failed): pass them to a later ``process`` call, after a backoff.
    """

    local: list[LocalTask] = field(default_factory=list)
    anchor: ReceivedMessage | None = None
    retry: list[LocalResult] = field(default_factory=list)


def is_local(event: HistoryEvent) -> bool:
    """True for a TaskScheduled that was dispatched in-process."""
    return (
        isinstance(event, TaskScheduled) and (event.tags or {}).get(DISPATCH_TAG) == DISPATCH_LOCAL
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Triage:
    """What to do with each message of a batch (see :meth:`EpisodeRunner._triage`)."""

    history: LoadedHistory
    accepted: list[ReceivedMessage] = field(default_factory=list)
    discard: list[ReceivedMessage] = field(default_factory=list)
    #: Messages to hide again, with their delay (None: the dequeue-count backoff).
    defer: list[tuple[ReceivedMessage, float | None]] = field(default_factory=list)
    #: Timers and scheduled starts that arrived early, to be parked again.
    early: list[ReceivedMessage] = field(default_factory=list)
    new_start: ExecutionStarted | None = None
    rewind: ExecutionRewound | None = None
    terminate_pending: ExecutionTerminated | None = None
    #: Rows of the execution a new start replaces.
    previous_length: int = 0


class HistoryCache:
    """Recently checkpointed histories, so the next episode needs no table query.

    An entry is only ever used with its sentinel ETag: if another writer changed the
    history meanwhile, the commit fails with SessionAbortedError and the entry is dropped.
    A message is never deferred or deleted on the word of a cached entry alone (see
    :meth:`EpisodeRunner._process`), and the worker forgets the entries of a partition
    when it stops owning it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[LoadedHistory, tuple[Any, Any] | None]] = (
            OrderedDict()
        )

    def get(self, instance_id: str) -> LoadedHistory | None:
        entry = self._entries.get(instance_id)
        if entry is None:
            return None
        self._entries.move_to_end(instance_id)
        return entry[0]

    def row_of(self, instance_id: str) -> tuple[Any, Any] | None:
        """(RuntimeStatus, CustomStatus) as this worker last wrote them to the Instances
        row along with the cached history, if it did."""
        entry = self._entries.get(instance_id)
        return entry[1] if entry is not None else None

    def put(
        self, instance_id: str, history: LoadedHistory, *, row: tuple[Any, Any] | None = None
    ) -> None:
        if self.capacity <= 0:
            return
        self._entries[instance_id] = (history, row)
        self._entries.move_to_end(instance_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def drop(self, instance_id: str) -> None:
        self._entries.pop(instance_id, None)

    def drop_where(self, predicate: Callable[[str], bool]) -> None:
        """Forget every instance whose id satisfies ``predicate``."""
        for instance_id in [i for i in self._entries if predicate(i)]:
            del self._entries[instance_id]


class EpisodeRunner:
    """Processes batches of control-queue messages, one instance at a time."""

    def __init__(
        self,
        provider: AzureStorageProvider,
        orchestrators: Callable[[str], Orchestrator | None],
        *,
        cache_size: int = DEFAULT_HISTORY_CACHE_SIZE,
        clock: Callable[[], datetime] = _utcnow,
        max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT,
    ) -> None:
        self.provider = provider
        self.orchestrators = orchestrators
        self.cache = HistoryCache(cache_size)
        self.max_dequeue_count = max_dequeue_count
        # Episode times, timer due checks and row times come from here (tests pass a fake
        # clock shared with the in-memory storage to exercise days-long timers).
        self.clock = clock

    def _ids(self, instance_id: str, execution_id: str | None = None) -> dict[str, Any]:
        """The log fields naming an instance: its id, execution and partition."""
        names = self.provider.names
        return {
            "instance_id": instance_id,
            "execution_id": execution_id,
            "partition": names.control_queue(names.partition_of(instance_id)),
        }

    async def process(
        self,
        instance_id: str,
        batch: list[ReceivedMessage],
        *,
        results: Sequence[LocalResult] = (),
        anchor: ReceivedMessage | None = None,
        running: AbstractSet[int] = frozenset(),
        run_locally: Callable[[str], bool] | None = None,
        fold: Fold | None = None,
    ) -> EpisodeOutcome:
        """Run one episode for ``batch`` (messages of one instance) and ``results`` (of
        activities this process ran for it). Never raises for storage trouble: the
        messages (and the anchor) are abandoned and come back later.

        Args:
            anchor: the message kept by the previous outcome, while local activities run.
            running: task ids of this instance's local activities still running here.
            run_locally: asked once per new activity (by name): True if the caller takes
                it in-process (it has the function and room for it). None: every new
                activity goes to the work-item queue.
            fold: with ``run_locally``: runs the given local activities and returns the
                results of those that finished within the caller's window (none once it
                has passed). The episode then goes on with them before it checkpoints,
                so a chain of quick activities costs one history write, not one each.
        """
        poisoned = [m for m in batch if m.dequeue_count > self.max_dequeue_count]
        if poisoned:
            batch = [m for m in batch if m.dequeue_count <= self.max_dequeue_count]
            try:
                await self._set_aside(instance_id, poisoned)
            except (StorageError, SessionAbortedError) as exc:
                # Still in the queue: the next delivery repeats the set-aside (same blob
                # name) against a fresh history, so nothing is lost or done twice.
                self.cache.drop(instance_id)
                logger.warning(
                    "could not set aside poison messages: %s",
                    exc,
                    extra=ev.fields(ev.EPISODE_STORAGE_FAILED, **self._ids(instance_id)),
                )
        if not batch and not results:
            return EpisodeOutcome(anchor=anchor)
        held = [*batch, anchor] if anchor is not None else batch
        try:
            return await self._process(
                instance_id, batch, results, anchor, running, run_locally, fold
            )
        except SessionAbortedError as exc:
            logger.warning("%s", exc, extra=ev.fields(ev.EPISODE_ABORTED, **self._ids(instance_id)))
            self.cache.drop(instance_id)
            return await _after_storage_failure(batch, results, anchor, running, delay=1.0)
        except (TimeoutError, StorageError, OSError) as exc:
            logger.warning(
                "episode of %s failed on storage, messages abandoned: %s",
                instance_id,
                exc,
                extra=ev.fields(ev.EPISODE_STORAGE_FAILED, **self._ids(instance_id)),
            )
            self.cache.drop(instance_id)
            return await _after_storage_failure(batch, results, anchor, running, delay=None)
        except Exception:
            # A bug or a payload this version cannot handle: keep the messages (never
            # drop them) and retry with a growing delay rather than in a tight loop.
            logger.exception(
                "episode of %s failed unexpectedly, messages abandoned with backoff",
                instance_id,
                extra=ev.fields(ev.EPISODE_FAILED, **self._ids(instance_id)),
            )
            self.cache.drop(instance_id)
            await _abandon_all(held)
        # A bug may be in the results' path too: they are dropped, and the abandoned
        # anchor brings the instance back (its unfinished local activities then run
        # again, and the anchor's dequeue count leads a repeating failure to poison).
        return EpisodeOutcome()

    async def _process(
        self,
        instance_id: str,
        batch: list[ReceivedMessage],
        results: Sequence[LocalResult],
        anchor: ReceivedMessage | None,
        running: AbstractSet[int],
        run_locally: Callable[[str], bool] | None,
        fold: Fold | None,
    ) -> EpisodeOutcome:
        batch = sorted(batch, key=lambda m: (m.raw.inserted_on, m.message.sequence_number))
        cached = self.cache.get(instance_id)
        history = cached or await self.provider.load_history(instance_id)
        triage = await self._triage(instance_id, batch, history)
        if cached is not None and (triage.defer or triage.discard):
            # A cached history may be stale: another worker may have moved the instance on
            # while this one did not own its partition. It is good enough to apply
            # messages (the commit's ETag check catches staleness), never to hold one
            # back or delete it: judge those against storage.
            self.cache.drop(instance_id)
            history = await self.provider.load_history(instance_id)
            triage = await self._triage(instance_id, batch, history)
        history = triage.history
        await _gather(m.queue.abandon(m.raw, delay) for m, delay in triage.defer)
        await _gather(self._send_again_later(m) for m in triage.early)
        fresh = _fresh_results(history, results)
        # Local activities of this instance that no process runs any more (the process that
        # took them died or lost the partition) run here, again.
        here = {*running, *(e.task_scheduled_id for e in fresh)}
        orphans = [] if triage.new_start else _orphaned_local_tasks(instance_id, history, here)
        if triage.rewind is not None:
            await self._rewind(instance_id, history, triage, anchor)
            return EpisodeOutcome()
        if not triage.accepted and not fresh:
            if triage.terminate_pending is not None:
                await self._terminate_before_start(instance_id, triage.terminate_pending)
            elif triage.discard or results:
                # Duplicates, or results an episode already committed before it failed
                # at a later step: the Instances row may lag the history (step 3).
                await self._repair_instance_row(instance_id, history)
            consumed, kept = _settle_anchor(triage.discard, anchor, keep=bool(running or orphans))
            await _gather(m.queue.delete(m.raw) for m in consumed)
            return EpisodeOutcome(local=orphans, anchor=kept)
        # The episode runs in its span (durable_azure.telemetry): the messages it sends
        # and the activities it runs in-process carry that span's context.
        started = triage.new_start or history.started
        assert started is not None
        began = time.perf_counter()
        with telemetry.span(
            f"episode:{started.name}",
            parent=started.parent_trace_context,
            attributes={
                "durable_azure.instance_id": instance_id,
                "durable_azure.execution_id": started.execution_id,
                "durable_azure.replayed_events": len(history.events),
            },
        ):
            outcome = await self._run_and_commit(
                instance_id, started, history, triage, fresh, anchor, running, orphans,
                run_locally, fold,
            )  # fmt: skip
        telemetry.record_episode(time.perf_counter() - began, len(history.events), started.name)
        return outcome

    async def _set_aside(self, instance_id: str, poisoned: list[ReceivedMessage]) -> None:
        """Move messages that failed too often to the poison container and fail their
        instance, naming them. Order: copy, fail, delete - a crash in between repeats the
        copy (same blob name) and finds the instance already failed; nothing is lost."""
        notes = []
        for received in poisoned:
            record = await self.provider.poison.set_aside(
                received.queue.name,
                received.raw,
                reason=f"delivered {received.dequeue_count} times without being processed",
                instance_id=instance_id,
            )
            notes.append(
                f"message {received.raw.id} ({type(received.message.event).__name__}) was "
                f"delivered {received.dequeue_count} times without being processed; it was "
                f"set aside as {self.provider.poison.container.name}/{record.name}"
            )
            logger.error(
                "poison message: %s",
                notes[-1],
                extra=ev.fields(
                    ev.POISON_MOVED,
                    **self._ids(instance_id, received.message.execution_id),
                    queue=received.queue.name,
                    message_id=received.raw.id,
                ),
            )
        await self._fail_instance(instance_id, "; ".join(notes))
        await _gather(m.queue.delete(m.raw) for m in poisoned)

    async def _fail_instance(self, instance_id: str, reason: str) -> None:
        """End the instance's current execution as Failed (through a real checkpoint, so
        history and Instances agree, and it can be rewound once the message is fixed)."""
        self.cache.drop(instance_id)
        history = await self.provider.load_history(instance_id)
        started = history.started
        now = self.clock()
        failure = FailureDetails(error_type="PoisonMessageError", error_message=reason)
        if started is None:
            row = await self.provider.read_instance(instance_id)
            if row is not None and not row.runtime_status.is_terminal:
                await self.provider.instances.merge(
                    instance_id,
                    {
                        "RuntimeStatus": OrchestrationStatus.Failed.name,
                        "Output": effects.output_column(None, failure),
                        "CompletedTime": now,
                        "LastUpdatedTime": now,
                    },
                )
            return
        if completion_of(history.events) is not None:
            return  # already finished: nothing to fail
        result = effects.failed_result(
            failure, [OrchestratorStarted(timestamp=now)], history.events, now
        )
        execution_id = history.execution_id or started.execution_id
        episode = effects.next_episode(history.events)
        await self._commit(
            instance_id,
            Checkpoint(
                instance_id=instance_id,
                execution_id=execution_id,
                outbound=self._outbound(instance_id, started, execution_id, episode, result, now),
                history_start=len(history.events),
                new_events=result.new_events,
                history_etag=history.etag,
                instance_update=effects.instance_update(result, None, now),
            ),
            history,
            result,
        )

    async def _triage(
        self, instance_id: str, batch: list[ReceivedMessage], history: LoadedHistory
    ) -> _Triage:
        """Sort a batch into messages to apply, defer, delete or send again later."""
        t = _Triage(history)
        terminal = completion_of(history.events) is not None
        failed = effects.failed(history.events)
        scheduled, completed = effects.task_ids(history.events)
        if failed and any(isinstance(m.message.event, ExecutionRewound) for m in batch):
            # A rewind in this batch: judge the other messages against the history as it
            # will be once rewound (e.g. a requeued poison message is applied, not lost).
            terminal = False
            scheduled, completed = effects.task_ids(effects.without_failures(history.events))
        now = self.clock()
        pending_row: InstanceRecord | bool | None = False  # False: not read yet
        for received in batch:
            event = received.message.event
            if isinstance(event, ExecutionStarted):
                if event.scheduled_start_time and event.scheduled_start_time > now + _EARLY:
                    t.early.append(received)  # a scheduled start, parked in steps
                    continue
                verdict = await self._judge_start(instance_id, received, t.history, t.new_start)
                if verdict == "accept":
                    t.new_start = event
                    t.accepted.append(received)
                    # A restarted instance starts from an empty history; the old rows are
                    # replaced, and the old sentinel's ETag guards that first write.
                    t.previous_length = len(t.history.events)
                    t.history = LoadedHistory([], event.execution_id, t.history.etag)
                    terminal, failed = False, False
                    scheduled, completed = set(), set()
                elif verdict == "defer":
                    t.defer.append((received, None))
                else:
                    t.discard.append(received)
                continue
            current = t.history.execution_id if t.history.started or t.new_start else None
            if current is None:
                # The instance has not started: its start may be on the way (or scheduled
                # for later). Keep the message while the Instances row says Pending.
                if pending_row is False:
                    pending_row = await self.provider.read_instance(instance_id)
                row = pending_row if isinstance(pending_row, InstanceRecord) else None
                is_pending = row is not None and row.runtime_status is OrchestrationStatus.Pending
                if isinstance(event, ExecutionTerminated) and is_pending:
                    t.terminate_pending = event
                    t.discard.append(received)
                elif is_pending:
                    t.defer.append((received, effects.pending_delay(row, received, now)))
                elif received.dequeue_count > MAX_ORPHAN_DEQUEUES:
                    logger.warning(
                        "deleting %s for instance %s, which does not exist",
                        type(event).__name__,
                        instance_id,
                        extra=ev.fields(ev.MESSAGE_DISCARDED, **self._ids(instance_id)),
                    )
                    t.discard.append(received)
                else:
                    t.defer.append((received, None))
            elif received.message.execution_id not in (None, current):
                t.discard.append(received)  # for an older execution
            elif isinstance(event, ExecutionRewound):
                if failed and t.rewind is None:
                    t.rewind = event
                    t.accepted.insert(0, received)  # the rewind comes first in its episode
                else:
                    logger.warning(
                        "ignoring rewind of %s: only a Failed instance can be rewound",
                        instance_id,
                        extra=ev.fields(ev.MESSAGE_DISCARDED, **self._ids(instance_id, current)),
                    )
                    t.discard.append(received)
            elif terminal:
                t.discard.append(received)  # the execution has finished
            elif isinstance(event, effects.RESPONSE_TYPES) and effects.task_id(event) in completed:
                t.discard.append(received)  # a redelivered or duplicate response
            elif isinstance(event, TimerFired) and event.fire_at > now + _EARLY:
                t.early.append(received)
            elif (
                isinstance(event, effects.RESPONSE_TYPES)
                and effects.task_id(event) not in scheduled
            ):
                # Its scheduling event is not committed yet (a response that raced the
                # checkpoint of another worker): retry shortly.
                t.defer.append((received, None))
            else:
                t.accepted.append(received)
        return t

    async def _run_and_commit(
        self,
        instance_id: str,
        started: ExecutionStarted,
        history: LoadedHistory,
        triage: _Triage,
        fresh: list[TaskCompleted | TaskFailed],
        anchor: ReceivedMessage | None,
        running: AbstractSet[int],
        orphans: list[LocalTask],
        run_locally: Callable[[str], bool] | None,
        fold: Fold | None,
    ) -> EpisodeOutcome:
        now = self.clock()
        new_events: list[HistoryEvent] = [OrchestratorStarted(timestamp=now)]
        new_events += [m.message.event for m in triage.accepted]
        new_events += fresh
        result = self._run(started, instance_id, history.events, new_events, now)
        if not result.actions and len(result.new_events) == 2 and not result.is_complete:
            # Every message was a duplicate the engine ignored: nothing to record.
            await self._repair_instance_row(instance_id, history)
            consumed, kept = _settle_anchor(
                triage.accepted + triage.discard, anchor, keep=bool(running or orphans)
            )
            await _gather(m.queue.delete(m.raw) for m in consumed)
            return EpisodeOutcome(local=orphans, anchor=kept)
        execution_id = history.execution_id or started.execution_id
        local_ids: set[int] = set()
        if run_locally is not None and result.status is not OrchestrationStatus.ContinuedAsNew:
            result, local_ids = _dispatch_locally(result, run_locally)
        episode = effects.next_episode(history.events)
        outbound = self._outbound(
            instance_id, started, execution_id, episode, result, now, skip=local_ids
        )
        if fold is not None and run_locally is not None and local_ids:
            result, local_ids, more = await self._fold(
                instance_id, started, history, result, local_ids, episode, fold, run_locally
            )
            outbound += more
        previous_length = triage.previous_length
        history_start = len(history.events)
        update = effects.instance_update(result, triage.new_start, now)
        rewrites_row = triage.new_start is not None or result.is_complete
        if result.status is OrchestrationStatus.ContinuedAsNew:
            # The next execution starts now, in this same checkpoint: its history replaces
            # the old one from row 0, and the old rows beyond it are deleted.
            previous_length = max(previous_length, len(history.events))
            history_start = 0
            started, result, more = self._next_generations(instance_id, started, result, now)
            outbound += more
            execution_id = started.execution_id
            episode = 1
            outbound += self._outbound(instance_id, started, execution_id, episode, result, now)
            update = effects.instance_update(result, started, now)
            update.pop("CreatedTime")  # the instance was created once, not per generation
            history = LoadedHistory([], execution_id, history.etag)
            orphans = []
        folded = {e.task_scheduled_id for e in result.new_events if isinstance(e, _RESULTS)}
        to_start = local_ids - folded
        local = [
            _local_task(instance_id, execution_id, e)
            for e in result.new_events
            if isinstance(e, TaskScheduled) and e.event_id in to_start
        ]
        if result.is_complete:
            local, orphans = [], []  # whatever still runs here can no longer matter
        still_running = bool(local or orphans) or (
            not result.is_complete and bool(set(running) - {e.task_scheduled_id for e in fresh})
        )
        consumed, kept = _settle_anchor(
            triage.accepted + triage.discard, anchor, keep=still_running
        )
        row = (update.get("RuntimeStatus"), update.get("CustomStatus"))
        if not rewrites_row and self.cache.row_of(instance_id) == row:
            # Same status and custom status as this worker last wrote: skip the write (the
            # row's LastUpdatedTime then tells when its status last changed).
            update = {}
        await self._commit(
            instance_id,
            Checkpoint(
                instance_id=instance_id,
                execution_id=execution_id,
                outbound=outbound,
                history_start=history_start,
                new_events=result.new_events,
                history_etag=history.etag,
                instance_update=update,
                consumed=consumed,
                previous_length=previous_length,
                instance_defaults=effects.instance_defaults(started),
            ),
            history,
            result,
            row,
        )
        if result.is_complete:
            _trace_completion(instance_id, started, result, now)
        return EpisodeOutcome(local=local + orphans, anchor=kept)

    async def _fold(
        self,
        instance_id: str,
        started: ExecutionStarted,
        history: LoadedHistory,
        result: EpisodeResult,
        local_ids: set[int],
        episode: int,
        fold: Fold,
        run_locally: Callable[[str], bool],
    ) -> tuple[EpisodeResult, set[int], list[Outbound]]:
        """Go on with the episode while its local activities finish within the caller's
        window: each round's results feed another pass of the orchestrator (an episode of
        its own in the history: OrchestratorStarted ... OrchestratorCompleted), and all
        the passes are checkpointed together. Returns the passes as one result (the last
        pass's status), every local task id they scheduled, and the later passes' messages.

        A crash before the checkpoint re-runs the folded activities, as it re-runs any
        local activity whose result is not in history yet (docs/design.md).
        """
        execution_id = history.execution_id or started.execution_id
        events, actions = list(result.new_events), list(result.actions)
        all_local, newest = set(local_ids), local_ids
        outbound: list[Outbound] = []
        for _ in range(MAX_FOLDED_PASSES):
            if result.status is not OrchestrationStatus.Running or not newest:
                break
            tasks = [
                _local_task(instance_id, execution_id, e)
                for e in result.new_events
                if isinstance(e, TaskScheduled) and e.event_id in newest
            ]
            done = [r.event for r in await fold(tasks) if r.execution_id == execution_id]
            if not done:
                break
            now = self.clock()
            result = self._run(
                started,
                instance_id,
                history.events + events,
                [OrchestratorStarted(timestamp=now), *done],
                now,
            )
            newest = set()
            if result.status is not OrchestrationStatus.ContinuedAsNew:
                result, newest = _dispatch_locally(result, run_locally)
            episode += 1
            outbound += self._outbound(
                instance_id, started, execution_id, episode, result, now, skip=newest
            )
            events += result.new_events
            actions += result.actions
            all_local |= newest
        return replace(result, new_events=events, actions=actions), all_local, outbound

    def _run(
        self,
        started: ExecutionStarted,
        instance_id: str,
        history: list[HistoryEvent],
        new_events: list[HistoryEvent],
        now: datetime,
    ) -> EpisodeResult:
        orchestrator = self.orchestrators(started.name)
        if orchestrator is None:
            return effects.unknown_orchestrator_result(started.name, new_events, history, now)
        result = run_episode(
            orchestrator, instance_id=instance_id, history=history, new_events=new_events
        )
        for note in result.dropped:
            logger.info(
                "%s: dropped %s",
                instance_id,
                note,
                extra=ev.fields(ev.EVENT_DROPPED, **self._ids(instance_id, started.execution_id)),
            )
        return result

    def _next_generations(
        self,
        instance_id: str,
        started: ExecutionStarted,
        result: EpisodeResult,
        now: datetime,
    ) -> tuple[ExecutionStarted, EpisodeResult, list[Outbound]]:
        """Run the executions that continue-as-new produces, in memory, one after the
        other (each consumes carried-over events), up to a bound; returns the last one."""
        outbound: list[Outbound] = []
        for generation in range(MAX_INLINE_GENERATIONS):
            completion = result.actions[-1]
            assert isinstance(completion, CompleteOrchestration)
            started = ExecutionStarted(
                timestamp=now,
                name=started.name,
                instance_id=instance_id,
                execution_id=uuid.uuid4().hex,
                input=completion.result,
                version=started.version,
                parent_instance=started.parent_instance,
                tags=started.tags,
                generation=(started.generation or 0) + 1,
                parent_trace_context=started.parent_trace_context,
            )
            first: list[HistoryEvent] = [OrchestratorStarted(timestamp=now), started]
            first += completion.carryover
            if generation == MAX_INLINE_GENERATIONS - 1:
                # Bound reached (an orchestration that continues without waiting): record
                # the new execution unrun and wake it with a message, so other instances
                # get their turn.
                wake = GenericEvent(timestamp=now, data="continue-as-new")
                outbound.append(
                    Outbound(
                        TaskMessage(
                            event=wake,
                            instance_id=instance_id,
                            execution_id=started.execution_id,
                        )
                    )
                )
                pending = EpisodeResult(
                    new_events=[*first, OrchestratorCompleted(timestamp=now)],
                    actions=[],
                    status=OrchestrationStatus.Running,
                    custom_status=result.custom_status,
                )
                return started, pending, outbound
            result = self._run(started, instance_id, [], first, now)
            if result.status is not OrchestrationStatus.ContinuedAsNew:
                return started, result, outbound
            outbound += self._outbound(instance_id, started, started.execution_id, 1, result, now)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _commit(
        self,
        instance_id: str,
        checkpoint: Checkpoint,
        history: LoadedHistory,
        result: EpisodeResult,
        row: tuple[Any, Any] | None = None,
    ) -> None:
        etag = await self.provider.commit(checkpoint)
        if result.is_complete:
            self.cache.drop(instance_id)
        else:
            # Exactly what is now committed: the rows before history_start, then the rows
            # this checkpoint wrote.
            committed = history.events[: checkpoint.history_start] + checkpoint.new_events
            self.cache.put(
                instance_id, LoadedHistory(committed, checkpoint.execution_id, etag), row=row
            )
        self._log_checkpoint(checkpoint, result, history)

    def _log_checkpoint(
        self, checkpoint: Checkpoint, result: EpisodeResult, history: LoadedHistory
    ) -> None:
        """What a committed checkpoint recorded: the episode, each execution started or
        ended and each activity result (DEBUG; INFO for a failed activity or execution).
        Logged after the commit, so once per recorded event, never for a replay."""
        events = checkpoint.new_events
        if not logger.isEnabledFor(logging.DEBUG) and not (
            logger.isEnabledFor(logging.INFO) and any(_is_failure(e) for e in events)
        ):
            return  # the usual case: nothing to log, so no fields to build per episode
        ids = self._ids(checkpoint.instance_id, checkpoint.execution_id)
        instance_id = checkpoint.instance_id
        logger.debug(
            "episode of %s: %d messages, %d actions, %s",
            instance_id,
            len(checkpoint.consumed),
            len(result.actions),
            result.status.name,
            extra=ev.fields(ev.EPISODE_COMPLETED, **ids, status=result.status.name),
        )
        scheduled = {
            e.event_id: e.name for e in (*history.events, *events) if isinstance(e, TaskScheduled)
        }
        for event in events:
            if isinstance(event, ExecutionStarted):
                started = {**ids, "execution_id": event.execution_id}
                logger.debug(
                    "%s: started %s",
                    instance_id,
                    event.name,
                    extra=ev.fields(ev.INSTANCE_STARTED, **started, orchestration=event.name),
                )
            elif isinstance(event, ExecutionCompleted):
                status, failure = event.orchestration_status, event.failure_details
                failed = status is OrchestrationStatus.Failed
                logger.log(
                    logging.INFO if failed else logging.DEBUG,
                    "%s: %s%s",
                    instance_id,
                    status.name,
                    f": {failure.summary()}" if failure is not None else "",
                    extra=ev.fields(
                        ev.INSTANCE_FAILED if failed else ev.INSTANCE_COMPLETED,
                        **ids,
                        status=status.name,
                    ),
                )
            elif isinstance(event, TaskCompleted | TaskFailed):
                failed = isinstance(event, TaskFailed)
                name = scheduled.get(event.task_scheduled_id, "")
                logger.log(
                    logging.INFO if failed else logging.DEBUG,
                    "%s: activity %s (task %d) %s",
                    instance_id,
                    name,
                    event.task_scheduled_id,
                    f"failed: {event.reason}" if isinstance(event, TaskFailed) else "completed",
                    extra=ev.fields(
                        ev.ACTIVITY_FAILED if failed else ev.ACTIVITY_COMPLETED,
                        **ids,
                        activity=name,
                        task_id=event.task_scheduled_id,
                    ),
                )

    async def _rewind(
        self,
        instance_id: str,
        history: LoadedHistory,
        triage: _Triage,
        anchor: ReceivedMessage | None,
    ) -> None:
        """Re-run a Failed execution: forget its failed tasks and its failure, replay.

        The failed tasks' scheduling and failure events and the Failed completion are
        removed, so replaying the code schedules those tasks again (a failed
        sub-orchestration runs again as a new execution of the same child id).
        """
        assert triage.rewind is not None
        kept = effects.without_failures(history.events)
        started = history.started
        assert started is not None
        now = self.clock()
        new_events: list[HistoryEvent] = [OrchestratorStarted(timestamp=now)]
        new_events += [m.message.event for m in triage.accepted]  # the rewind, then others
        result = self._run(started, instance_id, kept, new_events, now)
        episode = effects.next_episode(kept)
        execution_id = history.execution_id or started.execution_id
        update = effects.instance_update(result, None, now)
        if not result.is_complete:
            update["Output"] = None
            update["CompletedTime"] = None
        await self._commit(
            instance_id,
            Checkpoint(
                instance_id=instance_id,
                execution_id=execution_id,
                outbound=self._outbound(instance_id, started, execution_id, episode, result, now),
                history_start=0,
                new_events=kept + result.new_events,
                history_etag=history.etag,
                instance_update=update,
                consumed=_settle_anchor(triage.accepted + triage.discard, anchor, keep=False)[0],
                previous_length=len(history.events),
            ),
            LoadedHistory([], execution_id, history.etag),
            result,
        )

    async def _terminate_before_start(self, instance_id: str, event: ExecutionTerminated) -> None:
        """Terminating a Pending instance: mark it Terminated; its start message, when it
        arrives, is then discarded (the row names its execution and is terminal)."""
        now = self.clock()
        await self.provider.instances.merge(
            instance_id,
            {
                "RuntimeStatus": OrchestrationStatus.Terminated.name,
                "Output": event.input,
                "CompletedTime": now,
                "LastUpdatedTime": now,
            },
        )

    async def _judge_start(
        self,
        instance_id: str,
        received: ReceivedMessage,
        history: LoadedHistory,
        already: ExecutionStarted | None,
    ) -> str:
        """Decide what to do with an ExecutionStarted: "accept", "defer" or "discard".

        A start is accepted when it is the instance's first, or restarts a finished one
        and the Instances row (written by the client right after sending it) names its
        execution. A start for a running instance, or one the row says lost a race, is
        stale. A start whose row does not name it yet is deferred a bounded number of
        times (the client may still be writing the row).
        """
        event = received.message.event
        assert isinstance(event, ExecutionStarted)
        if already is not None:
            return "defer"  # one execution per episode; judge the other one next time
        if history.execution_id == event.execution_id and history.started:
            return "discard"  # a duplicate of the start already in history
        if history.started and completion_of(history.events) is None:
            return "discard"  # the instance is running another execution
        if event.parent_instance is not None:
            # A sub-orchestration start: its parent writes no Instances row first, so
            # there is no row to check; a new or finished child id may (re)start.
            return "accept"
        row = await self.provider.read_instance(instance_id)
        if row is None:
            return "accept"
        if row.execution_id == event.execution_id:
            # Terminal with our execution id but never started: it was terminated while
            # Pending (its start must not run after all).
            return "discard" if row.runtime_status.is_terminal else "accept"
        if not row.runtime_status.is_terminal:
            return "discard"  # the row belongs to a start that won a race with this one
        if received.dequeue_count >= MAX_START_DEFERRALS:
            logger.warning(
                "deleting start of %s execution %s: its instance row never named it",
                instance_id,
                event.execution_id,
                extra=ev.fields(ev.MESSAGE_DISCARDED, **self._ids(instance_id, event.execution_id)),
            )
            return "discard"
        return "defer"

    async def _repair_instance_row(self, instance_id: str, history: LoadedHistory) -> None:
        """After a crash between the history write and the Instances update (checkpoint
        step 3) the row lags the history; rewrite it from the history."""
        completed = completion_of(history.events)
        if completed is None and not history.started:
            return
        row = await self.provider.read_instance(instance_id)
        if row is not None and row.execution_id not in (None, history.execution_id):
            return  # the row already names a newer start; that execution will update it
        status = completed.orchestration_status if completed else OrchestrationStatus.Running
        if row is not None and row.runtime_status == status:
            return
        update: dict[str, Any] = {"RuntimeStatus": status.name, "LastUpdatedTime": self.clock()}
        if row is None and history.started is not None:
            update = {**effects.instance_defaults(history.started), **update}  # whole again
        if completed is not None:
            update["Output"] = effects.output_column(completed.result, completed.failure_details)
            update["CompletedTime"] = completed.timestamp
        logger.warning(
            "repairing instance row of %s: %s -> %s",
            instance_id,
            row.runtime_status.name if row else "missing",
            status.name,
            extra=ev.fields(
                ev.INSTANCE_ROW_REPAIRED,
                **self._ids(instance_id, history.execution_id),
                status=status.name,
            ),
        )
        await self.provider.instances.merge(instance_id, update)

    async def _send_again_later(self, received: ReceivedMessage) -> None:
        """Re-park a timer or scheduled start that arrived early (long delays are parked
        in steps of at most :data:`MAX_MESSAGE_DELAY`, under the queue's 7-day limit)."""
        event = received.message.event
        due = event.fire_at if isinstance(event, TimerFired) else None
        if isinstance(event, ExecutionStarted):
            due = event.scheduled_start_time
        assert due is not None
        await self.provider.send(
            Outbound(received.message, delay=effects.timer_delay(due, self.clock()))
        )
        await received.queue.delete(received.raw)

    def _outbound(
        self,
        instance_id: str,
        started: ExecutionStarted,
        execution_id: str,
        episode: int,
        result: EpisodeResult,
        now: datetime,
        *,
        skip: AbstractSet[int] = frozenset(),
    ) -> list[Outbound]:
        """The messages of an episode's new actions (but those in ``skip``, which run
        in-process)."""
        out: list[Outbound] = []
        for action in result.actions:
            if action.id in skip:
                continue
            if isinstance(action, ScheduleTask):
                event: HistoryEvent = TaskScheduled(
                    event_id=action.id,
                    timestamp=now,
                    name=action.name,
                    input=action.input,
                    parent_trace_context=telemetry.current_trace_context(),
                )
                out.append(
                    Outbound(
                        effects.message(event, instance_id, execution_id, episode),
                        to_work_items=True,
                    )
                )
            elif isinstance(action, CreateTimer):
                event = TimerFired(timestamp=now, timer_id=action.id, fire_at=action.fire_at)
                out.append(
                    Outbound(
                        effects.message(event, instance_id, execution_id, episode),
                        delay=effects.timer_delay(action.fire_at, now),
                    )
                )
            elif isinstance(action, CreateSubOrchestration):
                child_execution = uuid.uuid4().hex
                event = ExecutionStarted(
                    timestamp=now,
                    name=action.name,
                    instance_id=action.instance_id,
                    execution_id=child_execution,
                    input=action.input,
                    version=action.version,
                    parent_trace_context=telemetry.current_trace_context(),
                    parent_instance=ParentInstance(
                        name=started.name,
                        instance_id=instance_id,
                        execution_id=execution_id,
                        task_scheduled_id=action.id,
                        version=started.version,
                    ),
                )
                message = effects.message(event, action.instance_id, child_execution, episode)
                out.append(
                    Outbound(
                        replace(
                            message,
                            sender_instance_id=instance_id,
                            sender_execution_id=execution_id,
                        )
                    )
                )
        parent = started.parent_instance
        if (
            parent is not None
            and result.is_complete
            and result.status is not OrchestrationStatus.ContinuedAsNew
        ):
            out.append(effects.notify_parent(parent, instance_id, execution_id, result, now))
        return out


async def _after_storage_failure(
    batch: list[ReceivedMessage],
    results: Sequence[LocalResult],
    anchor: ReceivedMessage | None,
    running: AbstractSet[int],
    *,
    delay: float | None,
) -> EpisodeOutcome:
    """An episode failed on storage (or lost a race): its messages go back to the queue.
    Results of local activities, and the anchor that stands for them, stay with the
    caller for a retry - dropping them would run those activities again, and leave the
    instance waiting for the anchor's visibility timeout if storage is down."""
    if anchor is not None and (results or running):
        await _abandon_all(batch, delay)
        return EpisodeOutcome(anchor=anchor, retry=list(results))
    await _abandon_all([*batch, anchor] if anchor is not None else batch, delay)
    return EpisodeOutcome()


async def _abandon_all(batch: list[ReceivedMessage], delay: float | None = None) -> None:
    try:
        await _gather(m.queue.abandon(m.raw, delay) for m in batch)
    except StorageError as exc:  # they reappear anyway once their visibility ends
        logger.warning("could not abandon messages: %s", exc, extra=ev.fields(ev.ABANDON_FAILED))


def _trace_completion(
    instance_id: str, started: ExecutionStarted, result: EpisodeResult, now: datetime
) -> None:
    """Emit the ended execution's ``orchestration`` span (see :mod:`durable_azure.telemetry`)."""
    completion = completion_of(result.new_events)
    failure = completion.failure_details if completion is not None else None
    telemetry.orchestration_finished(
        started.name,
        started.parent_trace_context,
        started=started.timestamp,
        ended=now,
        status=result.status.name,
        attributes={
            "durable_azure.instance_id": instance_id,
            "durable_azure.execution_id": started.execution_id,
        },
        failure=failure.summary() if failure is not None else None,
    )


def _local_task(instance_id: str, execution_id: str, scheduled: TaskScheduled) -> LocalTask:
    """An activity to run in-process, carrying the current (episode) span's context."""
    context = telemetry.current_trace_context()
    if context is not None:
        scheduled = replace(scheduled, parent_trace_context=context)
    return LocalTask(instance_id, execution_id, scheduled)


def _is_failure(event: HistoryEvent) -> bool:
    return isinstance(event, TaskFailed) or (
        isinstance(event, ExecutionCompleted)
        and event.orchestration_status is OrchestrationStatus.Failed
    )


async def _gather(aws: Any) -> None:
    items = list(aws)
    if items:
        await asyncio.gather(*items)


def _fresh_results(
    history: LoadedHistory, results: Sequence[LocalResult]
) -> list[TaskCompleted | TaskFailed]:
    """The local results still wanted: for the current execution, of a task it scheduled
    and has not completed (after a restart or a duplicate run they are not)."""
    scheduled, completed = effects.task_ids(history.events)
    wanted = scheduled - completed
    fresh: list[TaskCompleted | TaskFailed] = []
    for result in results:
        task = result.event.task_scheduled_id
        if result.execution_id == history.execution_id and task in wanted:
            fresh.append(result.event)
            wanted.discard(task)
    return fresh


def _orphaned_local_tasks(
    instance_id: str, history: LoadedHistory, running: AbstractSet[int]
) -> list[LocalTask]:
    """Local activities the history shows unfinished that do not run in this process."""
    if completion_of(history.events) is not None or history.execution_id is None:
        return []
    _, completed = effects.task_ids(history.events)
    return [
        LocalTask(instance_id, history.execution_id, e)
        for e in history.events
        if isinstance(e, TaskScheduled)
        and is_local(e)
        and e.event_id not in completed
        and e.event_id not in running
    ]


def _settle_anchor(
    consumed: list[ReceivedMessage], anchor: ReceivedMessage | None, *, keep: bool
) -> tuple[list[ReceivedMessage], ReceivedMessage | None]:
    """Split the messages an episode consumed into those to delete and the one to keep
    hidden as the instance's anchor while local activities run (``keep``): the current
    anchor if there is one, else one of the consumed messages."""
    if not keep:
        return ([*consumed, anchor] if anchor is not None else consumed), None
    if anchor is not None or not consumed:
        return consumed, anchor
    return consumed[1:], consumed[0]


def _dispatch_locally(
    result: EpisodeResult, run_locally: Callable[[str], bool]
) -> tuple[EpisodeResult, set[int]]:
    """Tag the new activities the caller takes in-process; returns their task ids."""
    local_ids = {
        action.id
        for action in result.actions
        if isinstance(action, ScheduleTask) and run_locally(action.name)
    }
    if not local_ids:
        return result, local_ids
    marked = [
        replace(e, tags={**(e.tags or {}), DISPATCH_TAG: DISPATCH_LOCAL})
        if isinstance(e, TaskScheduled) and e.event_id in local_ids
        else e
        for e in result.new_events
    ]
    return replace(result, new_events=marked), local_ids
