"""The replay engine: history + new events in, actions + status out. Pure.

``run_episode`` re-runs the orchestrator function from the start against the recorded
history (``is_replaying`` is True), then feeds it the episode's new events. Tasks the code
scheduled are matched, by sequence id, with the scheduling events in the history; anything
the code schedules that the history does not hold yet is a new action of this episode.

This module does no I/O and reads no clock and no randomness: the episode's time is the
``OrchestratorStarted`` event the caller put in ``new_events``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from durable_azure import logevents as ev
from durable_azure.engine import serialization
from durable_azure.engine.actions import (
    Action,
    CompleteOrchestration,
    CreateSubOrchestration,
    CreateTimer,
    ScheduleTask,
)
from durable_azure.engine.actions import describe as describe_action
from durable_azure.engine.context import OrchestrationContext
from durable_azure.engine.history import (
    EventRaised,
    ExecutionCompleted,
    ExecutionResumed,
    ExecutionStarted,
    ExecutionSuspended,
    ExecutionTerminated,
    FailureDetails,
    HistoryEvent,
    OrchestrationStatus,
    OrchestratorCompleted,
    OrchestratorStarted,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from durable_azure.engine.tasks import ActivityTask, SubOrchestrationTask, Task, TimerTask
from durable_azure.errors import NonDeterministicOrchestrationError, TaskFailedError

logger = logging.getLogger(__name__)

Orchestrator = Callable[[OrchestrationContext], Any]


@dataclass(frozen=True, slots=True)
class EpisodeResult:
    """The outcome of one episode.

    Attributes:
        new_events: what to append to the history: the accepted new events, one event per
            new action, the completion event if the execution finished, and
            ``OrchestratorCompleted``. Duplicate or stale events are left out.
        actions: the new actions (activities to run, timers, the completion).
        status: Running, Completed or Failed.
        output: the orchestrator's return value as JSON text (when Completed).
        failure: why the orchestration failed (when Failed).
        custom_status: the custom status as JSON text, if set.
        dropped: descriptions of new events ignored as duplicates or stale.
    """

    new_events: list[HistoryEvent]
    actions: list[Action]
    status: OrchestrationStatus
    output: str | None = None
    failure: FailureDetails | None = None
    custom_status: str | None = None
    dropped: list[str] = field(default_factory=list)

    @property
    def is_complete(self) -> bool:
        """True once this execution has ended (continued-as-new included). A Suspended
        execution has not: it keeps its activities, its parent waits, and it resumes."""
        return self.status not in _UNFINISHED


_UNFINISHED = frozenset({OrchestrationStatus.Running, OrchestrationStatus.Suspended})


def failure_from_exception(exc: BaseException) -> FailureDetails:
    """Describe an exception as :class:`FailureDetails` (type name, message, traceback)."""
    inner = None
    if isinstance(exc, TaskFailedError):
        inner = FailureDetails(exc.error_type, exc.error_message, exc.stack_trace)
    return FailureDetails(
        error_type=type(exc).__name__,
        error_message=str(exc),
        stack_trace="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        inner_failure=inner,
    )


class _Episode:
    def __init__(self, orchestrator: Orchestrator, instance_id: str) -> None:
        self.orchestrator = orchestrator
        self.instance_id = instance_id
        self.ctx: OrchestrationContext | None = None
        self.generator: Generator[Any, Any, Any] | None = None
        self.awaited: Task | None = None
        self.done = False
        self.output: str | None = None
        self.failure: FailureDetails | None = None
        self.completed_ids: set[int] = set()
        self.dropped: list[str] = []
        # The time of the OrchestratorStarted that precedes ExecutionStarted.
        self.start_time: datetime | None = None
        self.applying_new = False
        # Suspended: events are recorded but held back from the code until resumed.
        self.suspended = False
        self.held: list[HistoryEvent] = []
        self.terminated = False

    # --- driving the generator -----------------------------------------------------------

    def start(self, event: ExecutionStarted, *, is_new: bool) -> None:
        self.ctx = OrchestrationContext(
            self.instance_id,
            name=event.name,
            input_text=event.input,
            parent_instance_id=(
                event.parent_instance.instance_id if event.parent_instance else None
            ),
            version=event.version,
        )
        self.ctx.is_replaying = not is_new
        self.ctx._current_utc_datetime = self.start_time or _utc(event.timestamp)
        try:
            produced = self.orchestrator(self.ctx)
        except Exception as exc:
            self._fail(exc)
            return
        if not inspect.isgenerator(produced):
            self._finish(produced)
            return
        self.generator = produced
        self._step(functools.partial(next, produced))
        # The first task yielded may already be complete (``task_all([])``): without this
        # nothing would ever resume the generator.
        self.resume()

    def resume(self) -> None:
        """Advance the generator for as long as the task it waits on has completed."""
        while not self.done and self.awaited is not None and self.awaited.is_completed:
            task, gen = self.awaited, self.generator
            assert gen is not None
            self.awaited = None
            if task.is_faulted:
                exc = task.exception
                assert exc is not None
                self._step(functools.partial(gen.throw, exc))
            else:
                self._step(functools.partial(gen.send, task.result))

    def _step(self, advance: Callable[[], Any]) -> None:
        try:
            yielded = advance()
        except StopIteration as stop:
            self._finish(stop.value)
            return
        except NonDeterministicOrchestrationError:
            raise
        except Exception as exc:
            self._fail(exc)
            return
        if not isinstance(yielded, Task):
            self._fail(
                TypeError(
                    "orchestrators must yield durable tasks (ctx.call_activity, "
                    f"ctx.task_all, ...), but this one yielded {type(yielded).__name__}"
                )
            )
            return
        self.awaited = yielded

    def _finish(self, value: Any) -> None:
        try:
            self.output = serialization.dumps(value)
        except serialization.PayloadError as exc:
            self._fail(exc)
            return
        self.done = True

    def _fail(self, exc: BaseException) -> None:
        self.failure = failure_from_exception(exc)
        self.done = True

    # --- applying events -----------------------------------------------------------------

    def _drop(self, note: str) -> None:
        # Only new events are reported: history duplicates were reported when they arrived.
        if self.applying_new:
            self.dropped.append(note)

    def apply(self, event: HistoryEvent, *, is_new: bool) -> bool:
        """Apply one event; returns False if it was dropped as a duplicate or stale."""
        ctx = self.ctx
        self.applying_new = is_new
        if ctx is not None:
            ctx.is_replaying = not is_new
        if isinstance(event, OrchestratorStarted):
            if ctx is not None:
                ctx._current_utc_datetime = _latest(ctx._current_utc_datetime, event.timestamp)
            else:
                self.start_time = _latest(self.start_time, event.timestamp)
            return True
        if isinstance(event, ExecutionStarted):
            if ctx is not None:
                self._drop("a duplicate ExecutionStarted")
                return False
            self.start(event, is_new=is_new)
            return True
        if ctx is None:
            # Only happens with a corrupt or foreign history; nothing can run before start.
            self._drop(f"{type(event).__name__} before ExecutionStarted")
            return not is_new
        if isinstance(event, _SCHEDULING_EVENTS):
            self._match_scheduled(event)
            return True
        if isinstance(event, ExecutionTerminated):
            if self.done:
                self._drop("ExecutionTerminated for a finished execution")
                return False
            self._terminate(event)
            return True
        if isinstance(event, ExecutionSuspended):
            self.suspended = True
            return True
        if isinstance(event, ExecutionResumed):
            self.suspended = False
            held, self.held = self.held, []
            for waiting in held:
                self._deliver(waiting)
            return True
        if isinstance(event, (*_COMPLETION_EVENTS, EventRaised)):
            if isinstance(event, _COMPLETION_EVENTS) and _completed_id(event) in self.completed_ids:
                self._drop(f"duplicate {type(event).__name__} for task #{_completed_id(event)}")
                return False
            if self.suspended:
                self.held.append(event)  # recorded now, seen by the code on resume
                return True
            return self._deliver(event)
        return True  # markers (GenericEvent, ExecutionRewound, ...) are kept, not acted on

    def _deliver(self, event: HistoryEvent) -> bool:
        ctx = self.ctx
        assert ctx is not None
        if isinstance(event, EventRaised):
            ctx._deliver_event(event)
            self.resume()
            return True
        assert isinstance(event, _COMPLETION_EVENTS)
        return self._complete_task(event)

    def _terminate(self, event: ExecutionTerminated) -> None:
        self.terminated = True
        self.done = True
        self.output = event.input

    def _match_scheduled(self, event: _SchedulingEvent) -> None:
        ctx = self.ctx
        assert ctx is not None
        action = ctx._actions.pop(event.event_id, None)
        expected = _describe_event(event)
        if action is None:
            raise NonDeterministicOrchestrationError(event.event_id, expected, "nothing")
        if isinstance(event, TaskScheduled):
            matches = isinstance(action, ScheduleTask) and action.name.lower() == event.name.lower()
        elif isinstance(event, SubOrchestrationInstanceCreated):
            matches = (
                isinstance(action, CreateSubOrchestration)
                and action.name.lower() == event.name.lower()
            )
        else:
            matches = isinstance(action, CreateTimer)
        if not matches:
            raise NonDeterministicOrchestrationError(
                event.event_id, expected, describe_action(action)
            )

    def _complete_task(self, event: _CompletionEvent) -> bool:
        ctx = self.ctx
        assert ctx is not None
        task_id = _completed_id(event)
        task = ctx._open_tasks.get(task_id)
        if task is not None and not isinstance(task, _TASK_KIND[type(event)]):
            # A TimerFired for an activity (or a TaskCompleted for a timer) comes from a
            # corrupt or foreign history; completing the task with it would invent a result.
            task = None
        if task is None:
            self._drop(f"unexpected {type(event).__name__} for task #{task_id}")
            return False
        self.completed_ids.add(task_id)
        del ctx._open_tasks[task_id]
        if isinstance(event, (TaskFailed, SubOrchestrationInstanceFailed)):
            task._fail(_task_failed_error(event, task))
        elif isinstance(event, (TaskCompleted, SubOrchestrationInstanceCompleted)):
            try:
                task._complete(serialization.loads(event.result))
            except serialization.PayloadError as exc:
                task._fail(exc)
        elif isinstance(task, TimerTask) and task.is_cancelled:
            return True  # a cancelled timer fired: recorded, nobody waits for it
        else:
            task._complete(None)
        self.resume()
        return True


def _task_failed_error(
    event: TaskFailed | SubOrchestrationInstanceFailed, task: Task
) -> TaskFailedError:
    details = event.failure_details
    error_type = details.error_type if details else "Exception"
    message = details.error_message if details else (event.reason or "")
    stack = details.stack_trace if details else (event.details or "")
    name = getattr(task, "name", "")
    if isinstance(task, SubOrchestrationTask):
        what = f"sub-orchestration {name!r} (instance {task.instance_id!r})"
    else:
        what = f"activity {name!r}"
    return TaskFailedError(
        f"{what} failed: {error_type}: {message}",
        error_type=error_type,
        error_message=message,
        stack_trace=stack,
        task_name=name,
        task_id=event.task_scheduled_id,
    )


def _describe_event(event: _SchedulingEvent) -> str:
    if isinstance(event, TaskScheduled):
        return f"a call to activity {event.name!r} (TaskScheduled #{event.event_id})"
    if isinstance(event, SubOrchestrationInstanceCreated):
        return (
            f"a call to sub-orchestrator {event.name!r} "
            f"(SubOrchestrationInstanceCreated #{event.event_id})"
        )
    return f"a timer (TimerCreated #{event.event_id})"


def _completed_id(event: _CompletionEvent) -> int:
    return event.timer_id if isinstance(event, TimerFired) else event.task_scheduled_id


_SchedulingEvent = TaskScheduled | TimerCreated | SubOrchestrationInstanceCreated
_SCHEDULING_EVENTS = (TaskScheduled, TimerCreated, SubOrchestrationInstanceCreated)
_CompletionEvent = (
    TaskCompleted
    | TaskFailed
    | TimerFired
    | SubOrchestrationInstanceCompleted
    | SubOrchestrationInstanceFailed
)
_COMPLETION_EVENTS = (
    TaskCompleted,
    TaskFailed,
    TimerFired,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceFailed,
)
#: Which kind of task each completion event may complete.
_TASK_KIND: dict[type[HistoryEvent], type[Task]] = {
    TaskCompleted: ActivityTask,
    TaskFailed: ActivityTask,
    TimerFired: TimerTask,
    SubOrchestrationInstanceCompleted: SubOrchestrationTask,
    SubOrchestrationInstanceFailed: SubOrchestrationTask,
}


def _utc(value: datetime) -> datetime:
    """Aware UTC: naive values are taken as UTC, others converted (``new_uuid`` formats
    the time with a literal ``Z``, so it must really be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _latest(current: datetime | None, candidate: datetime) -> datetime:
    candidate = _utc(candidate)
    return candidate if current is None or candidate > current else current


def run_episode(
    orchestrator: Orchestrator,
    *,
    instance_id: str,
    history: Sequence[HistoryEvent],
    new_events: Sequence[HistoryEvent],
) -> EpisodeResult:
    """Replay ``history``, apply ``new_events`` and return what the episode produced.

    Args:
        orchestrator: the orchestrator function (a generator function, or a plain function
            for an orchestration that needs no durable calls).
        instance_id: the instance id (part of ``new_uuid``'s input).
        history: the events already committed for this execution, oldest first.
        new_events: the episode's new events, starting with an ``OrchestratorStarted``
            whose timestamp is the episode time; then the messages' events.

    Returns:
        The events to append and the new actions. A non-deterministic replay yields a
        Failed result with a ``NonDeterministicOrchestrationError`` failure, never an
        exception.
    """
    if not new_events or not isinstance(new_events[0], OrchestratorStarted):
        raise ValueError("new_events must begin with the episode's OrchestratorStarted")
    episode = _Episode(orchestrator, instance_id)
    episode_time = _utc(new_events[0].timestamp)
    accepted: list[HistoryEvent] = []
    try:
        for event in history:
            if isinstance(event, ExecutionCompleted):
                raise ValueError(
                    f"the history of {instance_id!r} is already complete; a finished "
                    "execution takes no new events"
                )
            episode.apply(event, is_new=False)
        for event in new_events:
            if episode.apply(event, is_new=True):
                accepted.append(event)
    except NonDeterministicOrchestrationError as exc:
        logger.warning(
            "non-deterministic orchestration %s: %s",
            instance_id,
            exc,
            extra=ev.fields(ev.NONDETERMINISTIC, instance_id=instance_id),
        )
        failure = failure_from_exception(exc)
        return _completed(
            accepted or list(new_events[:1]),
            [],
            episode,
            episode_time,
            OrchestrationStatus.Failed,
            failure=failure,
            next_id=episode.ctx._next_id if episode.ctx else 0,
        )

    ctx = episode.ctx
    if ctx is None:
        raise ValueError("history and new events hold no ExecutionStarted event")
    new_actions = list(ctx._actions.values())
    if episode.done:
        if episode.failure:
            status = OrchestrationStatus.Failed
        elif episode.terminated:
            status = OrchestrationStatus.Terminated
        elif ctx._continue_as_new is not None:
            status = OrchestrationStatus.ContinuedAsNew
        else:
            status = OrchestrationStatus.Completed
        return _completed(
            accepted,
            new_actions,
            episode,
            episode_time,
            status,
            failure=episode.failure,
            next_id=ctx._next_id,
        )
    events = accepted + [_action_event(a, episode_time) for a in new_actions]
    events.append(OrchestratorCompleted(timestamp=episode_time))
    return EpisodeResult(
        new_events=events,
        actions=new_actions,
        status=OrchestrationStatus.Suspended if episode.suspended else OrchestrationStatus.Running,
        custom_status=ctx._custom_status,
        dropped=episode.dropped,
    )


def _completed(
    accepted: list[HistoryEvent],
    new_actions: list[Action],
    episode: _Episode,
    episode_time: datetime,
    status: OrchestrationStatus,
    *,
    failure: FailureDetails | None,
    next_id: int,
) -> EpisodeResult:
    # Activities scheduled in the same step as the orchestration finished are still
    # recorded and sent, as DTFx does (fire-and-forget calls before a return).
    ctx = episode.ctx
    result = None if failure else episode.output
    carryover: tuple[EventRaised, ...] = ()
    if status is OrchestrationStatus.ContinuedAsNew and ctx is not None:
        result = ctx._continue_as_new
        # Events nobody consumed (and any held while suspended) go to the next execution.
        held = tuple(e for e in episode.held if isinstance(e, EventRaised))
        carryover = ctx._unconsumed_events() + held
    completion = CompleteOrchestration(
        id=next_id, status=status, result=result, failure=failure, carryover=carryover
    )
    actions: list[Action] = [*new_actions, completion]
    events = accepted + [_action_event(a, episode_time) for a in actions]
    events.append(OrchestratorCompleted(timestamp=episode_time))
    return EpisodeResult(
        new_events=events,
        actions=actions,
        status=status,
        output=completion.result,
        failure=failure,
        custom_status=ctx._custom_status if ctx else None,
        dropped=episode.dropped,
    )


def _action_event(action: Action, timestamp: datetime) -> HistoryEvent:
    if isinstance(action, ScheduleTask):
        return TaskScheduled(
            event_id=action.id, timestamp=timestamp, name=action.name, input=action.input
        )
    if isinstance(action, CreateTimer):
        return TimerCreated(event_id=action.id, timestamp=timestamp, fire_at=action.fire_at)
    if isinstance(action, CreateSubOrchestration):
        return SubOrchestrationInstanceCreated(
            event_id=action.id,
            timestamp=timestamp,
            name=action.name,
            instance_id=action.instance_id,
            input=action.input,
            version=action.version,
        )
    return ExecutionCompleted(
        event_id=action.id,
        timestamp=timestamp,
        orchestration_status=action.status,
        result=action.result,
        failure_details=action.failure,
    )
