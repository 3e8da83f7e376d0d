"""Running orchestration episodes and activities against the provider.

The :class:`EpisodeRunner` takes the control-queue messages of one instance, decides which
of them to apply (duplicates, stale executions and early responses are deleted or deferred,
never applied twice), replays the orchestrator through the pure engine and commits the
result through :meth:`AzureStorageProvider.commit`.

The :class:`ActivityRunner` runs one work item and sends its response.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import traceback
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime, timedelta, timezone
from typing import Any

from durable_azure.engine import serialization
from durable_azure.engine.actions import CreateTimer, ScheduleTask
from durable_azure.engine.history import (
    ExecutionCompleted,
    ExecutionStarted,
    FailureDetails,
    HistoryEvent,
    OrchestrationStatus,
    OrchestratorCompleted,
    OrchestratorStarted,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from durable_azure.engine.replay import EpisodeResult, Orchestrator, run_episode
from durable_azure.errors import SessionAbortedError, StorageError, UnknownFunctionError
from durable_azure.storage.codec import completion_of
from durable_azure.storage.messages import TaskMessage
from durable_azure.storage.names import MAX_VISIBILITY_TIMEOUT
from durable_azure.storage.primitives import QueueMessage
from durable_azure.storage.provider import AzureStorageProvider, Checkpoint, Outbound
from durable_azure.storage.queues import DEFAULT_VISIBILITY_TIMEOUT, ReceivedMessage
from durable_azure.storage.tracking import LoadedHistory

logger = logging.getLogger(__name__)

#: A message for an instance that does not exist is retried this many times (its start
#: may still be on the way) before it is deleted as an orphan.
MAX_ORPHAN_DEQUEUES = 5

#: A start message whose Instances row names another execution is deferred this many
#: times (its client may not have written the row yet) before it is deleted as stale.
MAX_START_DEFERRALS = 10

#: Timers further out than this are parked in steps: the message fires early, is seen to
#: be early, and is sent again for the remaining time (queues cap visibility at 7 days).
MAX_TIMER_STEP = MAX_VISIBILITY_TIMEOUT - timedelta(hours=1)

#: How many instances' histories a worker keeps in memory between episodes.
DEFAULT_HISTORY_CACHE_SIZE = 1000

_RESPONSE_TYPES = (TaskCompleted, TaskFailed, TimerFired)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class HistoryCache:
    """Recently checkpointed histories, so the next episode needs no table query.

    An entry is only ever used with its sentinel ETag: if another writer changed the
    history meanwhile, the commit fails with SessionAbortedError and the entry is dropped.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, LoadedHistory] = OrderedDict()

    def get(self, instance_id: str) -> LoadedHistory | None:
        entry = self._entries.get(instance_id)
        if entry is not None:
            self._entries.move_to_end(instance_id)
        return entry

    def put(self, instance_id: str, history: LoadedHistory) -> None:
        if self.capacity <= 0:
            return
        self._entries[instance_id] = history
        self._entries.move_to_end(instance_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def drop(self, instance_id: str) -> None:
        self._entries.pop(instance_id, None)


class EpisodeRunner:
    """Processes batches of control-queue messages, one instance at a time."""

    def __init__(
        self,
        provider: AzureStorageProvider,
        orchestrators: Callable[[str], Orchestrator | None],
        *,
        cache_size: int = DEFAULT_HISTORY_CACHE_SIZE,
    ) -> None:
        self.provider = provider
        self.orchestrators = orchestrators
        self.cache = HistoryCache(cache_size)

    async def process(self, instance_id: str, batch: list[ReceivedMessage]) -> None:
        """Run one episode for ``batch`` (all messages of one instance). Never raises for
        storage trouble: the messages are abandoned and come back later."""
        log_extra = {"instance_id": instance_id}
        try:
            await self._process(instance_id, batch)
        except SessionAbortedError as exc:
            logger.warning("%s", exc, extra=log_extra)
            self.cache.drop(instance_id)
            await _abandon_all(batch, delay=1.0)
        except (StorageError, OSError, asyncio.TimeoutError) as exc:
            logger.warning(
                "episode of %s failed on storage, messages abandoned: %s",
                instance_id,
                exc,
                extra=log_extra,
            )
            self.cache.drop(instance_id)
            await _abandon_all(batch)
        except Exception:
            # A bug or a payload this version cannot handle: keep the messages (never
            # drop them) and retry with a growing delay rather than in a tight loop.
            logger.exception(
                "episode of %s failed unexpectedly, messages abandoned with backoff",
                instance_id,
                extra=log_extra,
            )
            self.cache.drop(instance_id)
            await _abandon_all(batch)

    async def _process(self, instance_id: str, batch: list[ReceivedMessage]) -> None:
        history = self.cache.get(instance_id) or await self.provider.load_history(instance_id)
        batch = sorted(batch, key=lambda m: (m.raw.inserted_on, m.message.sequence_number))
        accepted: list[ReceivedMessage] = []
        discard: list[ReceivedMessage] = []
        defer: list[ReceivedMessage] = []
        early_timers: list[ReceivedMessage] = []
        new_start: ExecutionStarted | None = None

        terminal = completion_of(history.events) is not None
        scheduled, completed = _task_ids(history.events)
        now = _utcnow()
        for received in batch:
            event = received.message.event
            if isinstance(event, ExecutionStarted):
                verdict = await self._judge_start(instance_id, received, history, new_start)
                if verdict == "accept":
                    new_start = event
                    accepted.append(received)
                    # A restarted instance starts from an empty history; the old
                    # sentinel's ETag still guards the first write of the new one.
                    history = LoadedHistory([], event.execution_id, history.etag)
                    terminal = False
                    scheduled, completed = set(), set()
                elif verdict == "defer":
                    defer.append(received)
                else:
                    discard.append(received)
                continue
            current = history.execution_id if history.started or new_start else None
            if current is None:
                if received.dequeue_count > MAX_ORPHAN_DEQUEUES:
                    logger.warning(
                        "deleting %s for instance %s, which does not exist",
                        type(event).__name__,
                        instance_id,
                        extra={"instance_id": instance_id},
                    )
                    discard.append(received)
                else:
                    defer.append(received)
            elif received.message.execution_id not in (None, current) or terminal:
                discard.append(received)  # for an older execution, or a finished one
            elif isinstance(event, _RESPONSE_TYPES) and _task_id(event) in completed:
                discard.append(received)  # a redelivered or duplicate response
            elif isinstance(event, TimerFired) and event.fire_at > now + timedelta(seconds=1):
                early_timers.append(received)
            elif isinstance(event, _RESPONSE_TYPES) and _task_id(event) not in scheduled:
                # Its TaskScheduled/TimerCreated is not committed yet (a response that
                # raced the scheduling checkpoint of another worker): retry shortly.
                defer.append(received)
            else:
                accepted.append(received)

        await _gather(m.queue.abandon(m.raw) for m in defer)
        await _gather(self._rearm_timer(m) for m in early_timers)
        if not accepted:
            if discard:
                await self._repair_instance_row(instance_id, history)
                await _gather(m.queue.delete(m.raw) for m in discard)
            return

        started = new_start or history.started
        assert started is not None
        orchestrator = self.orchestrators(started.name)
        new_events: list[HistoryEvent] = [OrchestratorStarted(timestamp=now)]
        new_events += [m.message.event for m in accepted]
        if orchestrator is None:
            result = _unknown_orchestrator_result(started.name, new_events, history, now)
        else:
            result = run_episode(
                orchestrator,
                instance_id=instance_id,
                history=history.events,
                new_events=new_events,
            )
        for note in result.dropped:
            logger.info("%s: dropped %s", instance_id, note, extra={"instance_id": instance_id})
        if not result.actions and len(result.new_events) == 2 and not result.is_complete:
            # Every message was a duplicate the engine ignored: nothing to record.
            await self._repair_instance_row(instance_id, history)
            await _gather(m.queue.delete(m.raw) for m in accepted + discard)
            return

        execution_id = history.execution_id or started.execution_id
        episode = sum(isinstance(e, OrchestratorStarted) for e in history.events) + 1
        checkpoint = Checkpoint(
            instance_id=instance_id,
            execution_id=execution_id,
            outbound=self._outbound(instance_id, execution_id, episode, result, now),
            history_start=len(history.events),
            new_events=result.new_events,
            history_etag=history.etag,
            instance_update=_instance_update(result, new_start, now),
            consumed=accepted + discard,
        )
        etag = await self.provider.commit(checkpoint)
        if result.is_complete:
            self.cache.drop(instance_id)
        else:
            self.cache.put(
                instance_id,
                LoadedHistory(history.events + result.new_events, execution_id, etag),
            )
        logger.debug(
            "episode %d of %s: %d messages, %d actions, %s",
            episode,
            instance_id,
            len(accepted),
            len(result.actions),
            result.status.name,
            extra={"instance_id": instance_id, "execution_id": execution_id},
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
        row = await self.provider.read_instance(instance_id)
        if row is None or row.execution_id == event.execution_id:
            return "accept"
        if not row.runtime_status.is_terminal:
            return "discard"  # the row belongs to a start that won a race with this one
        if received.dequeue_count >= MAX_START_DEFERRALS:
            logger.warning(
                "deleting start of %s execution %s: its instance row never named it",
                instance_id,
                event.execution_id,
                extra={"instance_id": instance_id},
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
        update: dict[str, Any] = {"RuntimeStatus": status.name, "LastUpdatedTime": _utcnow()}
        if completed is not None:
            update["Output"] = _output_column(completed.result, completed.failure_details)
            update["CompletedTime"] = completed.timestamp
        logger.warning(
            "repairing instance row of %s: %s -> %s",
            instance_id,
            row.runtime_status.name if row else "missing",
            status.name,
            extra={"instance_id": instance_id},
        )
        await self.provider.instances.merge(instance_id, update)

    async def _rearm_timer(self, received: ReceivedMessage) -> None:
        event = received.message.event
        assert isinstance(event, TimerFired)
        await self.provider.send(
            Outbound(received.message, delay=_timer_delay(event.fire_at, _utcnow()))
        )
        await received.queue.delete(received.raw)

    def _outbound(
        self,
        instance_id: str,
        execution_id: str,
        episode: int,
        result: EpisodeResult,
        now: datetime,
    ) -> list[Outbound]:
        out: list[Outbound] = []
        for action in result.actions:
            if isinstance(action, ScheduleTask):
                event: HistoryEvent = TaskScheduled(
                    event_id=action.id, timestamp=now, name=action.name, input=action.input
                )
                out.append(
                    Outbound(
                        _message(event, instance_id, execution_id, episode),
                        to_work_items=True,
                    )
                )
            elif isinstance(action, CreateTimer):
                event = TimerFired(timestamp=now, timer_id=action.id, fire_at=action.fire_at)
                out.append(
                    Outbound(
                        _message(event, instance_id, execution_id, episode),
                        delay=_timer_delay(action.fire_at, now),
                    )
                )
        return out


def _message(event: HistoryEvent, instance_id: str, execution_id: str, episode: int) -> TaskMessage:
    return TaskMessage(
        event=event,
        instance_id=instance_id,
        execution_id=execution_id,
        episode=episode,
        sender_instance_id=instance_id,
        sender_execution_id=execution_id,
    )


def _task_ids(events: list[HistoryEvent]) -> tuple[set[int], set[int]]:
    """The ids of the tasks scheduled, and of those completed, in a history."""
    scheduled: set[int] = set()
    completed: set[int] = set()
    for e in events:
        if isinstance(e, (TaskScheduled, TimerCreated)):
            scheduled.add(e.event_id)
        elif isinstance(e, _RESPONSE_TYPES):
            completed.add(_task_id(e))
    return scheduled, completed


def _task_id(event: TaskCompleted | TaskFailed | TimerFired) -> int:
    return event.timer_id if isinstance(event, TimerFired) else event.task_scheduled_id


def _timer_delay(fire_at: datetime, now: datetime) -> float:
    return max(0.0, min((fire_at - now).total_seconds(), MAX_TIMER_STEP.total_seconds()))


def _output_column(result: str | None, failure: FailureDetails | None) -> str | None:
    if failure is None:
        return result
    text = failure.summary()
    if failure.stack_trace:
        text += "\n" + failure.stack_trace
    return serialization.dumps(text)


def _instance_update(
    result: EpisodeResult, new_start: ExecutionStarted | None, now: datetime
) -> dict[str, Any]:
    update: dict[str, Any] = {
        "RuntimeStatus": result.status.name,
        "LastUpdatedTime": now,
        "CustomStatus": result.custom_status or "null",
    }
    if new_start is not None:
        update.update(
            {
                "Name": new_start.name,
                "Version": new_start.version or "",
                "Input": new_start.input,
                "CreatedTime": new_start.timestamp,
                "ExecutionId": new_start.execution_id,
                "Generation": new_start.generation or 0,
            }
        )
    if result.is_complete:
        update["Output"] = _output_column(result.output, result.failure)
        update["CompletedTime"] = now
    return update


def _unknown_orchestrator_result(
    name: str, new_events: list[HistoryEvent], history: LoadedHistory, now: datetime
) -> EpisodeResult:
    """Fail the instance clearly rather than leave it Pending forever."""
    failure = FailureDetails(
        error_type="UnknownFunctionError",
        error_message=f"no orchestrator named {name!r} is registered with this worker",
    )
    next_id = sum(isinstance(e, (TaskScheduled, TimerCreated)) for e in history.events)
    completed = ExecutionCompleted(
        event_id=next_id,
        timestamp=now,
        orchestration_status=OrchestrationStatus.Failed,
        failure_details=failure,
    )
    return EpisodeResult(
        new_events=[*new_events, completed, OrchestratorCompleted(timestamp=now)],
        actions=[],
        status=OrchestrationStatus.Failed,
        failure=failure,
    )


async def _abandon_all(batch: list[ReceivedMessage], delay: float | None = None) -> None:
    try:
        await _gather(m.queue.abandon(m.raw, delay) for m in batch)
    except StorageError as exc:  # they reappear anyway once their visibility ends
        logger.warning("could not abandon messages: %s", exc)


async def _gather(aws: Any) -> None:
    items = list(aws)
    if items:
        await asyncio.gather(*items)


# --- activities --------------------------------------------------------------------------


class ActivityRunner:
    """Runs activity work items: plain functions on a thread pool, coroutines on the loop."""

    def __init__(
        self,
        provider: AzureStorageProvider,
        activities: Callable[[str], Callable[..., Any] | None],
        executor: Executor | None,
        *,
        visibility_timeout: timedelta = DEFAULT_VISIBILITY_TIMEOUT,
    ) -> None:
        self.provider = provider
        self.activities = activities
        self.executor = executor
        self.visibility_timeout = visibility_timeout

    async def execute(self, name: str, input_text: str | None, task_id: int) -> HistoryEvent:
        """Run activity ``name``; returns its TaskCompleted or TaskFailed for ``task_id``."""
        now = _utcnow()
        try:
            fn = self.activities(name)
            if fn is None:
                raise UnknownFunctionError(
                    f"no activity named {name!r} is registered with this worker"
                )
            value = serialization.loads(input_text)
            if inspect.iscoroutinefunction(fn):
                output = await fn(value)
            else:
                loop = asyncio.get_running_loop()
                output = await loop.run_in_executor(self.executor, fn, value)
            return TaskCompleted(
                timestamp=now, task_scheduled_id=task_id, result=serialization.dumps(output)
            )
        except Exception as exc:
            details = FailureDetails(
                error_type=type(exc).__name__,
                error_message=str(exc),
                stack_trace="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )
            return TaskFailed(
                timestamp=now,
                task_scheduled_id=task_id,
                reason=details.summary(),
                details=details.stack_trace,
                failure_details=details,
            )

    async def process(self, received: ReceivedMessage) -> None:
        """Run the work item's activity, send the response, then delete the work item.

        A crash after the send and before the delete runs the activity again later and
        sends a second response; the orchestration drops the duplicate.
        """
        request = received.message
        scheduled = request.event
        if not isinstance(scheduled, TaskScheduled):
            logger.error("work-item queue held a %s message; deleting it", type(scheduled).__name__)
            await received.queue.delete(received.raw)
            return
        # Keep the work item hidden while the activity runs, however long it takes, so no
        # other worker starts it a second time; each renewal gives a new pop receipt.
        latest = [received.raw]
        keeper = asyncio.create_task(self._keep_hidden(received, latest))
        try:
            response = await self.execute(scheduled.name, scheduled.input, scheduled.event_id)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self.provider.send(
            Outbound(
                TaskMessage(
                    event=response,
                    instance_id=request.instance_id,
                    execution_id=request.execution_id,
                    episode=request.episode,
                )
            )
        )
        await received.queue.delete(latest[0])

    async def _keep_hidden(self, received: ReceivedMessage, latest: list[QueueMessage]) -> None:
        interval = max(1.0, self.visibility_timeout.total_seconds() / 2)
        while True:
            await asyncio.sleep(interval)
            try:
                latest[0] = await received.queue.renew(latest[0], self.visibility_timeout)
            except StorageError as exc:
                # Transient: the next renewal may succeed; if the message is gone another
                # worker may run the activity too (its result is deduplicated).
                logger.warning("could not extend work item %s: %s", received.raw.id, exc)
