"""Fabricated histories that read like a timeline, and an in-memory orchestration simulator.

:class:`HistoryBuilder` writes the events an orchestration's history would hold, in order,
with timestamps from a clock that ticks by ``step`` per event (the layout of the recorded
``azure-functions-durable`` experiments)::

    builder = (
        HistoryBuilder("inst-1")
        .started("Chain", input=1)          # OrchestratorStarted + ExecutionStarted
        .scheduled(0, "add_one", 1)
        .end_episode()
        .episode()                          # the episode under test
        .completed(0, 2)
    )
    result = builder.run(chain)             # run_episode(history, new_events)
    assert [a.name for a in result.actions] == ["add_one"]

:func:`run_to_completion` plays a whole orchestration through
:func:`~durable_azure.engine.replay.run_episode`, running each scheduled activity with a
plain Python function and firing timers in simulated time, so orchestrators can be
unit-tested with no storage at all (here ``chain`` calls ``add_one`` three times)::

    sim = run_to_completion(chain, 1, {"add_one": lambda x: x + 1})
    assert sim.output == 4
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from durable_azure.engine import serialization
from durable_azure.engine.actions import CreateTimer, ScheduleTask
from durable_azure.engine.history import (
    EventRaised,
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
from durable_azure.errors import DurableAzureError

__all__ = [
    "DEFAULT_EXECUTION_ID",
    "DEFAULT_START",
    "ActivityCall",
    "HistoryBuilder",
    "SimulationError",
    "SimulationResult",
    "failure_of",
    "run_to_completion",
]

#: The clock's default start: the first timestamp of the recorded SDK experiments.
DEFAULT_START = datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)

#: The execution id the recorded SDK experiments use.
DEFAULT_EXECUTION_ID = "e0000000000000000000000000000001"

_ONE_SECOND = timedelta(seconds=1)


def _aware(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (naive values are taken to be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _payload(value: Any, text: str | None) -> str:
    """The JSON text of a payload: ``text`` verbatim if given, else ``value`` encoded."""
    return text if text is not None else serialization.dumps(value)


def failure_of(exc: BaseException) -> FailureDetails:
    """The failure details an activity that raised ``exc`` is recorded with.

    The type name, the message and the formatted traceback, as the engine hands them to the
    orchestrator in a ``TaskFailedError``.
    """
    return FailureDetails(
        error_type=type(exc).__name__,
        error_message=str(exc),
        stack_trace="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    )


class HistoryBuilder:
    """Builds an orchestration history event by event, like reading its timeline.

    Every method appends one event (``started`` may append two) stamped with the builder's
    clock, which then advances by ``step``; :meth:`at` and :meth:`advance` move the clock.
    Methods return the builder, so a history is one chained expression.

    Payloads (``input``, ``result``) are Python values encoded as the engine encodes them;
    the ``*_json`` keywords take JSON text verbatim instead (to fabricate odd payloads).

    Args:
        instance_id: the orchestration instance id.
        start: the clock's first time (naive values are UTC).
        step: how far the clock moves after each event.
        execution_id: the execution id written into ``ExecutionStarted``.
    """

    def __init__(
        self,
        instance_id: str = "test-instance",
        *,
        start: datetime = DEFAULT_START,
        step: timedelta = _ONE_SECOND,
        execution_id: str = DEFAULT_EXECUTION_ID,
    ) -> None:
        self.instance_id = instance_id
        self.execution_id = execution_id
        self._clock = _aware(start)
        self._step = step
        self._events: list[HistoryEvent] = []

    # --- the clock -----------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The timestamp the next event will get."""
        return self._clock

    def at(self, when: datetime) -> HistoryBuilder:
        """Set the clock to ``when`` (it may move backward, to fabricate odd histories)."""
        self._clock = _aware(when)
        return self

    def advance(self, delta: timedelta) -> HistoryBuilder:
        """Move the clock forward by ``delta``."""
        self._clock += delta
        return self

    def _tick(self) -> datetime:
        stamp = self._clock
        self._clock += self._step
        return stamp

    # --- events --------------------------------------------------------------------------

    def add(self, event: HistoryEvent) -> HistoryBuilder:
        """Append ``event`` exactly as given (its own timestamp; the clock does not move)."""
        self._events.append(event)
        return self

    def episode(self, at: datetime | None = None) -> HistoryBuilder:
        """Start an episode: ``OrchestratorStarted`` at ``at`` (default: the clock).

        Its timestamp is what ``current_utc_datetime`` reads for code the episode runs.
        """
        if at is not None:
            self.at(at)
        return self.add(OrchestratorStarted(timestamp=self._tick()))

    def started(
        self,
        name: str,
        input: Any = None,
        *,
        input_json: str | None = None,
        version: str | None = None,
    ) -> HistoryBuilder:
        """``ExecutionStarted`` for orchestrator ``name`` with ``input``.

        On an empty builder this first opens the first episode (``OrchestratorStarted``),
        as every real history begins.
        """
        if not self._events:
            self.episode()
        return self.add(
            ExecutionStarted(
                timestamp=self._tick(),
                name=name,
                instance_id=self.instance_id,
                execution_id=self.execution_id,
                input=_payload(input, input_json),
                version=version,
            )
        )

    def scheduled(
        self,
        task_id: int,
        name: str,
        input: Any = None,
        *,
        input_json: str | None = None,
    ) -> HistoryBuilder:
        """``TaskScheduled`` #``task_id``: the orchestrator called activity ``name``."""
        return self.add(
            TaskScheduled(
                event_id=task_id,
                timestamp=self._tick(),
                name=name,
                input=_payload(input, input_json),
            )
        )

    def completed(
        self, task_id: int, result: Any = None, *, result_json: str | None = None
    ) -> HistoryBuilder:
        """``TaskCompleted`` for task #``task_id`` with ``result``."""
        return self.add(
            TaskCompleted(
                timestamp=self._tick(),
                task_scheduled_id=task_id,
                result=_payload(result, result_json),
            )
        )

    def failed(
        self,
        task_id: int,
        error_type: str = "Exception",
        message: str = "",
        stack: str = "",
    ) -> HistoryBuilder:
        """``TaskFailed`` for task #``task_id``: the activity raised ``error_type(message)``.

        ``Reason`` is ``"ErrorType: message"``, ``Details`` the stack, and the structured
        ``FailureDetails`` carry all three.
        """
        details = FailureDetails(error_type, message, stack)
        return self.add(
            TaskFailed(
                timestamp=self._tick(),
                task_scheduled_id=task_id,
                reason=details.summary(),
                details=stack or None,
                failure_details=details,
            )
        )

    def timer_created(self, task_id: int, fire_at: datetime) -> HistoryBuilder:
        """``TimerCreated`` #``task_id``: the orchestrator created a timer for ``fire_at``."""
        return self.add(
            TimerCreated(event_id=task_id, timestamp=self._tick(), fire_at=_aware(fire_at))
        )

    def timer_fired(self, timer_id: int, fire_at: datetime | None = None) -> HistoryBuilder:
        """``TimerFired`` for timer #``timer_id``.

        ``fire_at`` defaults to the one recorded by the matching ``timer_created``.

        Raises:
            ValueError: no ``fire_at`` was given and no ``TimerCreated`` #``timer_id`` exists.
        """
        if fire_at is None:
            created = [
                e for e in self._events if isinstance(e, TimerCreated) and e.event_id == timer_id
            ]
            if not created:
                raise ValueError(f"no TimerCreated #{timer_id} to take fire_at from")
            fire_at = created[-1].fire_at
        return self.add(
            TimerFired(timestamp=self._tick(), timer_id=timer_id, fire_at=_aware(fire_at))
        )

    def event_raised(
        self,
        name: str,
        input: Any = None,
        *,
        input_json: str | None = None,
    ) -> HistoryBuilder:
        """``EventRaised`` ``name`` with ``input``."""
        return self.add(
            EventRaised(timestamp=self._tick(), name=name, input=_payload(input, input_json))
        )

    def end_episode(self) -> HistoryBuilder:
        """End the episode: ``OrchestratorCompleted``."""
        return self.add(OrchestratorCompleted(timestamp=self._tick()))

    def execution_completed(
        self, output: Any = None, *, failure: FailureDetails | None = None
    ) -> HistoryBuilder:
        """``ExecutionCompleted``: Completed with ``output``, or Failed with ``failure``."""
        return self.add(
            ExecutionCompleted(
                timestamp=self._tick(),
                orchestration_status=(
                    OrchestrationStatus.Failed if failure else OrchestrationStatus.Completed
                ),
                result=None if failure else serialization.dumps(output),
                failure_details=failure,
            )
        )

    # --- results -------------------------------------------------------------------------

    @property
    def events(self) -> list[HistoryEvent]:
        """A copy of every event appended so far, oldest first."""
        return list(self._events)

    def build(self) -> list[HistoryEvent]:
        """The whole history, oldest first (a copy)."""
        return list(self._events)

    def _open_episode_start(self) -> int:
        starts = [i for i, e in enumerate(self._events) if isinstance(e, OrchestratorStarted)]
        if not starts:
            raise ValueError("the history has no OrchestratorStarted: call .episode() first")
        last = starts[-1]
        if any(isinstance(e, OrchestratorCompleted) for e in self._events[last:]):
            raise ValueError("the last episode is already ended: call .episode() to open one")
        return last

    def split(self) -> tuple[list[HistoryEvent], list[HistoryEvent]]:
        """``(history, new_events)`` for :func:`run_episode`.

        ``new_events`` is the open episode: the last ``OrchestratorStarted`` and everything
        after it; ``history`` is everything before.

        Raises:
            ValueError: there is no open episode (none started, or the last one was ended).
        """
        last = self._open_episode_start()
        return list(self._events[:last]), list(self._events[last:])

    def run(self, orchestrator: Orchestrator) -> EpisodeResult:
        """Run the open episode: :func:`run_episode` over :meth:`split`."""
        history, new_events = self.split()
        return run_episode(
            orchestrator, instance_id=self.instance_id, history=history, new_events=new_events
        )

    def commit(self, result: EpisodeResult) -> HistoryBuilder:
        """Persist an episode the way a provider does.

        The open episode's events are replaced by ``result.new_events`` (the accepted
        events, one event per new action, the completion, ``OrchestratorCompleted``).

        Raises:
            ValueError: there is no open episode.
        """
        last = self._open_episode_start()
        del self._events[last:]
        self._events.extend(result.new_events)
        return self


# --- the simulator -------------------------------------------------------------------------


class SimulationError(DurableAzureError):
    """The simulated orchestration cannot finish (it waits for nothing, or runs forever)."""


class ActivityCall(NamedTuple):
    """One activity execution in a simulation: task id, activity name and decoded input."""

    task_id: int
    name: str
    input: Any


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """How a simulated orchestration ended.

    Attributes:
        status: Completed or Failed.
        output: the orchestrator's return value, decoded (``None`` when Failed).
        failure: why the orchestration failed (``None`` when Completed).
        custom_status: the last custom status, decoded.
        history: the full history, as a provider would have stored it.
        episodes: every episode's :class:`EpisodeResult`, in order.
        activity_calls: every activity run, in the order they ran.
    """

    status: OrchestrationStatus
    output: Any
    failure: FailureDetails | None
    custom_status: Any
    history: list[HistoryEvent]
    episodes: list[EpisodeResult]
    activity_calls: list[ActivityCall] = field(default_factory=list)


@dataclass(order=True)
class _Pending:
    ready_at: datetime
    seq: int
    event: HistoryEvent = field(compare=False)


def _lookup(activities: Mapping[str, Callable[..., Any]], name: str) -> Callable[..., Any] | None:
    found = activities.get(name)
    if found is not None:
        return found
    # Function names are case-insensitive in Durable Functions.
    folded = name.casefold()
    for key, function in activities.items():
        if key.casefold() == folded:
            return function
    return None


def _run_activity(
    action: ScheduleTask,
    activities: Mapping[str, Callable[..., Any]],
    calls: list[ActivityCall],
    when: datetime,
) -> HistoryEvent:
    function = _lookup(activities, action.name)
    if function is None:
        known = ", ".join(sorted(activities)) or "none"
        details = FailureDetails(
            "UnknownFunctionError",
            f"activity {action.name!r} is not registered (registered: {known})",
        )
        return TaskFailed(
            timestamp=when,
            task_scheduled_id=action.id,
            reason=details.summary(),
            failure_details=details,
        )
    value = serialization.loads(action.input)
    calls.append(ActivityCall(action.id, action.name, value))
    try:
        result = serialization.dumps(function(value))
    except Exception as exc:
        details = failure_of(exc)
        return TaskFailed(
            timestamp=when,
            task_scheduled_id=action.id,
            reason=details.summary(),
            details=details.stack_trace or None,
            failure_details=details,
        )
    return TaskCompleted(timestamp=when, task_scheduled_id=action.id, result=result)


def run_to_completion(
    orchestrator: Orchestrator,
    input: Any = None,
    activities: Mapping[str, Callable[..., Any]] | None = None,
    *,
    instance_id: str = "test-instance",
    name: str | None = None,
    start: datetime = DEFAULT_START,
    step: timedelta = _ONE_SECOND,
    max_episodes: int = 10_000,
    max_completions_per_episode: int | None = None,
) -> SimulationResult:
    """Run an orchestration to its end in memory, episode by episode.

    Each episode is one :func:`run_episode` call over the history so far, so every step
    is a real replay. After each episode the activities it scheduled are run at once with
    the functions in ``activities`` (called with the decoded input; a raised exception is
    recorded as ``TaskFailed`` with its type name, message and traceback, an unknown name
    as an ``UnknownFunctionError`` failure). Timers fire in simulated time: the clock jumps
    to ``fire_at`` when nothing else is due.

    The next episode delivers every due completion, oldest first (activities before
    timers that fire later), at most ``max_completions_per_episode`` at a time, so a
    fan-in can be spread over several episodes.

    Args:
        orchestrator: the orchestrator function.
        input: the orchestration input (a JSON-serializable value).
        activities: activity functions by registered name (names match case-insensitively).
        instance_id: the instance id (``new_uuid`` depends on it).
        name: the orchestration name in ``ExecutionStarted``; default: the function's name.
        start: the time of the first episode.
        step: how far the clock moves between episodes.
        max_episodes: give up after this many episodes.
        max_completions_per_episode: deliver at most this many completions per episode.

    Returns:
        The final status, output or failure, the history and every episode's result.

    Raises:
        SimulationError: the orchestration waits for something that will never happen
            (nothing is scheduled), or did not finish within ``max_episodes``.
    """
    if max_completions_per_episode is not None and max_completions_per_episode < 1:
        raise ValueError("max_completions_per_episode must be at least 1")
    registry: Mapping[str, Callable[..., Any]] = activities or {}
    orchestration_name = name or str(getattr(orchestrator, "__name__", "orchestrator"))
    now = _aware(start)
    history: list[HistoryEvent] = []
    episodes: list[EpisodeResult] = []
    calls: list[ActivityCall] = []
    pending: list[_Pending] = []
    seq = 0
    new_events: list[HistoryEvent] = [
        OrchestratorStarted(timestamp=now),
        ExecutionStarted(
            timestamp=now,
            name=orchestration_name,
            instance_id=instance_id,
            execution_id=DEFAULT_EXECUTION_ID,
            input=serialization.dumps(input),
        ),
    ]
    for _ in range(max_episodes):
        result = run_episode(
            orchestrator, instance_id=instance_id, history=history, new_events=new_events
        )
        episodes.append(result)
        history.extend(result.new_events)
        # Activities scheduled alongside the completion still run (fire and forget).
        for action in result.actions:
            seq += 1
            if isinstance(action, ScheduleTask):
                done_at = now + step
                event = _run_activity(action, registry, calls, done_at)
                pending.append(_Pending(done_at, seq, event))
            elif isinstance(action, CreateTimer):
                fired = TimerFired(
                    timestamp=action.fire_at, timer_id=action.id, fire_at=action.fire_at
                )
                pending.append(_Pending(_aware(action.fire_at), seq, fired))
        if result.is_complete:
            return SimulationResult(
                status=result.status,
                output=serialization.loads(result.output),
                failure=result.failure,
                custom_status=serialization.loads(result.custom_status),
                history=history,
                episodes=episodes,
                activity_calls=calls,
            )
        if not pending:
            raise SimulationError(
                f"orchestration {instance_id!r} is waiting, but nothing it scheduled is "
                f"still pending (after {len(episodes)} episodes)"
            )
        pending.sort()
        now = max(now + step, pending[0].ready_at)
        due = [p for p in pending if p.ready_at <= now]
        if max_completions_per_episode is not None:
            due = due[:max_completions_per_episode]
        delivered = {id(p) for p in due}
        pending = [p for p in pending if id(p) not in delivered]
        new_events = [OrchestratorStarted(timestamp=now), *(p.event for p in due)]
    raise SimulationError(
        f"orchestration {instance_id!r} did not finish within {max_episodes} episodes"
    )
