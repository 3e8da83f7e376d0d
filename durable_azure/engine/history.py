"""History events: the typed, immutable record of an orchestration (event sourcing).

The names and integer codes are the Durable Task Framework's ``EventType`` values, so a
history written here reads the same in tools built for DTFx task hubs. Payloads
(``input``, ``result``) are JSON *text*, exactly as stored; the engine decodes them only
where user code asks for a value.

The table-row and queue-JSON forms of these events are built in one place each:
``durable_azure.storage.codec`` (rows) and ``durable_azure.storage.messages`` (queue JSON).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar


class EventType(enum.IntEnum):
    """DTFx ``EventType`` codes. Tables store the name, queue messages the integer."""

    ExecutionStarted = 0
    ExecutionCompleted = 1
    ExecutionFailed = 2
    ExecutionTerminated = 3
    TaskScheduled = 4
    TaskCompleted = 5
    TaskFailed = 6
    SubOrchestrationInstanceCreated = 7
    SubOrchestrationInstanceCompleted = 8
    SubOrchestrationInstanceFailed = 9
    TimerCreated = 10
    TimerFired = 11
    OrchestratorStarted = 12
    OrchestratorCompleted = 13
    EventSent = 14
    EventRaised = 15
    ContinueAsNew = 16
    GenericEvent = 17
    HistoryState = 18
    ExecutionSuspended = 19
    ExecutionResumed = 20
    ExecutionRewound = 21


class OrchestrationStatus(enum.IntEnum):
    """DTFx ``OrchestrationStatus``; tables store the name (``RuntimeStatus`` column)."""

    Running = 0
    Completed = 1
    ContinuedAsNew = 2
    Failed = 3
    Canceled = 4
    Terminated = 5
    Pending = 6
    Suspended = 7

    @property
    def is_terminal(self) -> bool:
        """Completed, Failed, Terminated or Canceled: the instance will not run again."""
        return self in _TERMINAL


#: Field metadata key: the storage forms leave this member out while it is None.
OMIT_IF_NONE = "omit_if_none"

_TERMINAL = frozenset(
    {
        OrchestrationStatus.Completed,
        OrchestrationStatus.Failed,
        OrchestrationStatus.Terminated,
        OrchestrationStatus.Canceled,
    }
)


@dataclass(frozen=True, slots=True)
class FailureDetails:
    """Why an activity or orchestration failed: the original exception, as text.

    Stored as JSON ``{ErrorType, ErrorMessage, StackTrace, InnerFailure, IsNonRetriable,
    Properties}`` like DTFx's ``FailureDetails``.
    """

    error_type: str
    error_message: str
    stack_trace: str = ""
    inner_failure: FailureDetails | None = None
    is_non_retriable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "ErrorType": self.error_type,
            "ErrorMessage": self.error_message,
            "StackTrace": self.stack_trace or None,
            "InnerFailure": self.inner_failure.to_dict() if self.inner_failure else None,
            "IsNonRetriable": self.is_non_retriable,
            "Properties": None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailureDetails:
        inner = data.get("InnerFailure")
        return cls(
            error_type=str(data.get("ErrorType") or ""),
            error_message=str(data.get("ErrorMessage") or ""),
            stack_trace=str(data.get("StackTrace") or ""),
            inner_failure=cls.from_dict(inner) if isinstance(inner, dict) else None,
            is_non_retriable=bool(data.get("IsNonRetriable", False)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> FailureDetails | None:
        if not text or text == "null":
            return None
        data = json.loads(text)
        return cls.from_dict(data) if isinstance(data, dict) else None

    def summary(self) -> str:
        """``"ErrorType: ErrorMessage"``, the form DTFx writes to ``Instances.Output``."""
        return f"{self.error_type}: {self.error_message}"


@dataclass(frozen=True, slots=True)
class ParentInstance:
    """The orchestration that started a sub-orchestration (``ExecutionStarted.ParentInstance``)."""

    name: str
    instance_id: str
    execution_id: str
    task_scheduled_id: int
    version: str | None = None


# --- events ------------------------------------------------------------------------------
# ``event_id`` is the action's sequence number for events created from orchestrator actions
# (TaskScheduled, TimerCreated, ...) and -1 for events that come from messages or mark
# episodes (TaskCompleted, EventRaised, OrchestratorStarted, ...).


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEvent:
    """Base of every history event."""

    event_type: ClassVar[EventType]
    timestamp: datetime
    event_id: int = -1
    is_played: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionStarted(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.ExecutionStarted
    name: str
    instance_id: str
    execution_id: str
    input: str | None = None
    version: str | None = None
    parent_instance: ParentInstance | None = None
    tags: dict[str, str] | None = None
    scheduled_start_time: datetime | None = None
    generation: int | None = None
    #: DTFx ``ParentTraceContext``: ``{"TraceParent", "TraceState"}`` of the span that
    #: started this execution (:mod:`durable_azure.telemetry`). Left out when None.
    parent_trace_context: dict[str, Any] | None = field(default=None, metadata={OMIT_IF_NONE: True})


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionCompleted(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.ExecutionCompleted
    orchestration_status: OrchestrationStatus
    result: str | None = None
    failure_details: FailureDetails | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionTerminated(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.ExecutionTerminated
    input: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskScheduled(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.TaskScheduled
    name: str
    input: str | None = None
    version: str | None = None
    #: DTFx ``Tags``; this engine marks activities it ran in-process. Left out when None.
    tags: dict[str, str] | None = field(default=None, metadata={OMIT_IF_NONE: True})
    #: DTFx ``ParentTraceContext``: the scheduling episode's span, on the work item.
    parent_trace_context: dict[str, Any] | None = field(default=None, metadata={OMIT_IF_NONE: True})


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCompleted(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.TaskCompleted
    task_scheduled_id: int
    result: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.TaskFailed
    task_scheduled_id: int
    reason: str | None = None
    details: str | None = None
    failure_details: FailureDetails | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubOrchestrationInstanceCreated(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.SubOrchestrationInstanceCreated
    name: str
    instance_id: str
    input: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubOrchestrationInstanceCompleted(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.SubOrchestrationInstanceCompleted
    task_scheduled_id: int
    result: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubOrchestrationInstanceFailed(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.SubOrchestrationInstanceFailed
    task_scheduled_id: int
    reason: str | None = None
    details: str | None = None
    failure_details: FailureDetails | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerCreated(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.TimerCreated
    fire_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.TimerFired
    timer_id: int
    fire_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class OrchestratorStarted(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.OrchestratorStarted


@dataclass(frozen=True, slots=True, kw_only=True)
class OrchestratorCompleted(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.OrchestratorCompleted


@dataclass(frozen=True, slots=True, kw_only=True)
class EventSent(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.EventSent
    instance_id: str
    name: str
    input: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRaised(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.EventRaised
    name: str
    input: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericEvent(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.GenericEvent
    data: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionSuspended(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.ExecutionSuspended
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionResumed(HistoryEvent):
    event_type: ClassVar[EventType] = EventType.ExecutionResumed
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionRewound(HistoryEvent):
    """A request to re-run a failed execution's failed tasks (``client.rewind``)."""

    event_type: ClassVar[EventType] = EventType.ExecutionRewound
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsupportedEvent(HistoryEvent):
    """An event type this version does not interpret (kept so history round-trips).

    ``extra`` holds the stored columns other than the common ones.
    """

    event_type: ClassVar[EventType] = EventType.GenericEvent
    original_type: EventType
    extra: dict[str, Any] = field(default_factory=dict)


#: Event classes by type code, for decoding.
EVENT_CLASSES: dict[EventType, type[HistoryEvent]] = {
    cls.event_type: cls
    for cls in (
        ExecutionStarted,
        ExecutionCompleted,
        ExecutionTerminated,
        TaskScheduled,
        TaskCompleted,
        TaskFailed,
        SubOrchestrationInstanceCreated,
        SubOrchestrationInstanceCompleted,
        SubOrchestrationInstanceFailed,
        TimerCreated,
        TimerFired,
        OrchestratorStarted,
        OrchestratorCompleted,
        EventSent,
        EventRaised,
        GenericEvent,
        ExecutionSuspended,
        ExecutionResumed,
        ExecutionRewound,
    )
}


def type_of(event: HistoryEvent) -> EventType:
    """The DTFx type code of ``event`` (the original one for :class:`UnsupportedEvent`)."""
    if isinstance(event, UnsupportedEvent):
        return event.original_type
    return event.event_type
