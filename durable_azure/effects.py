"""What an episode's result becomes in storage: messages, Instances columns, histories.

Pure functions used by :mod:`durable_azure.runner`: building the task messages an episode
sends (activities, timers, children, the parent notification), the Instances row update,
the history a rewind replays, and the failure result for an unknown orchestrator.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from durable_azure.engine import serialization
from durable_azure.engine.history import (
    ExecutionCompleted,
    ExecutionStarted,
    FailureDetails,
    HistoryEvent,
    OrchestrationStatus,
    OrchestratorCompleted,
    OrchestratorStarted,
    ParentInstance,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from durable_azure.engine.replay import EpisodeResult
from durable_azure.storage.codec import completion_of
from durable_azure.storage.messages import TaskMessage
from durable_azure.storage.names import MAX_MESSAGE_DELAY
from durable_azure.storage.provider import Outbound
from durable_azure.storage.queues import ReceivedMessage, abandon_delay
from durable_azure.storage.tracking import InstanceRecord

#: The completion events (responses) that finish a task.
RESPONSE_TYPES = (TaskCompleted, TaskFailed, TimerFired)


def message(event: HistoryEvent, instance_id: str, execution_id: str, episode: int) -> TaskMessage:
    return TaskMessage(
        event=event,
        instance_id=instance_id,
        execution_id=execution_id,
        episode=episode,
        sender_instance_id=instance_id,
        sender_execution_id=execution_id,
    )


def notify_parent(
    parent: ParentInstance,
    instance_id: str,
    execution_id: str,
    result: EpisodeResult,
    now: datetime,
) -> Outbound:
    """The message that tells a parent its sub-orchestration finished."""
    event: HistoryEvent
    if result.status is OrchestrationStatus.Completed:
        event = SubOrchestrationInstanceCompleted(
            timestamp=now, task_scheduled_id=parent.task_scheduled_id, result=result.output
        )
    else:
        failure = result.failure or FailureDetails(
            error_type="OrchestrationTerminatedError",
            error_message=f"sub-orchestration {instance_id!r} was terminated: "
            f"{result.output or ''}",
        )
        event = SubOrchestrationInstanceFailed(
            timestamp=now,
            task_scheduled_id=parent.task_scheduled_id,
            reason=failure.summary(),
            details=failure.stack_trace,
            failure_details=failure,
        )
    return Outbound(
        TaskMessage(
            event=event,
            instance_id=parent.instance_id,
            execution_id=parent.execution_id,
            sender_instance_id=instance_id,
            sender_execution_id=execution_id,
        )
    )


def instance_defaults(started: ExecutionStarted) -> dict[str, Any]:
    """The Instances columns that come from an execution's start, for rebuilding a row."""
    return {
        "Name": started.name,
        "Version": started.version or "",
        "Input": started.input,
        "CreatedTime": started.timestamp,
        "ExecutionId": started.execution_id,
        "Generation": started.generation or 0,
        "CustomStatus": "null",
        "Tags": "null",
    }


def next_episode(events: list[HistoryEvent]) -> int:
    """The number of the episode that follows ``events`` (1 for an empty history); sent
    as ``Episode`` on the messages it produces."""
    return sum(isinstance(e, OrchestratorStarted) for e in events) + 1


def failed(events: list[HistoryEvent]) -> bool:
    completed = completion_of(events)
    return completed is not None and completed.orchestration_status is OrchestrationStatus.Failed


def without_failures(events: list[HistoryEvent]) -> list[HistoryEvent]:
    """The history minus failed tasks (their scheduling and failure events) and the
    Failed completion: what a rewound execution replays."""
    failed_ids = {
        e.task_scheduled_id
        for e in events
        if isinstance(e, (TaskFailed, SubOrchestrationInstanceFailed))
    }
    kept: list[HistoryEvent] = []
    for e in events:
        if isinstance(e, (TaskFailed, SubOrchestrationInstanceFailed, ExecutionCompleted)):
            continue
        if (
            isinstance(e, (TaskScheduled, SubOrchestrationInstanceCreated))
            and e.event_id in failed_ids
        ):
            continue
        kept.append(e)
    return kept


def pending_delay(row: InstanceRecord | None, received: ReceivedMessage, now: datetime) -> float:
    """How long to hide a message for an instance still Pending: the usual backoff, but
    not past a scheduled start (so the event is there when the instance starts)."""
    delay = abandon_delay(received.dequeue_count)
    if row is not None and row.scheduled_start_time is not None:
        delay = min(delay, max(1.0, (row.scheduled_start_time - now).total_seconds() + 1))
    return delay


def task_ids(events: list[HistoryEvent]) -> tuple[set[int], set[int]]:
    """The ids of the tasks scheduled, and of those completed, in a history."""
    scheduled: set[int] = set()
    completed: set[int] = set()
    for e in events:
        if isinstance(e, (TaskScheduled, TimerCreated)):
            scheduled.add(e.event_id)
        elif isinstance(e, RESPONSE_TYPES):
            completed.add(task_id(e))
    return scheduled, completed


def task_id(event: TaskCompleted | TaskFailed | TimerFired) -> int:
    return event.timer_id if isinstance(event, TimerFired) else event.task_scheduled_id


def timer_delay(fire_at: datetime, now: datetime) -> float:
    return max(0.0, min((fire_at - now).total_seconds(), MAX_MESSAGE_DELAY.total_seconds()))


def output_column(result: str | None, failure: FailureDetails | None) -> str | None:
    if failure is None:
        return result
    text = failure.summary()
    if failure.stack_trace:
        text += "\n" + failure.stack_trace
    return serialization.dumps(text)


def instance_update(
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
                # Our column (DTFx has none): links a sub-orchestration to its parent.
                "ParentInstanceId": (
                    new_start.parent_instance.instance_id if new_start.parent_instance else None
                ),
                "Output": None,
                "CompletedTime": None,
            }
        )
    if result.is_complete:
        update["Output"] = output_column(result.output, result.failure)
        update["CompletedTime"] = now
    return update


def unknown_orchestrator_result(
    name: str, new_events: list[HistoryEvent], history: list[HistoryEvent], now: datetime
) -> EpisodeResult:
    """Fail the instance clearly rather than leave it Pending forever."""
    failure = FailureDetails(
        error_type="UnknownFunctionError",
        error_message=f"no orchestrator named {name!r} is registered with this worker",
    )
    return failed_result(failure, new_events, history, now)


def failed_result(
    failure: FailureDetails,
    new_events: list[HistoryEvent],
    history: list[HistoryEvent],
    now: datetime,
) -> EpisodeResult:
    """An episode that ends the execution as Failed without running the code (an unknown
    orchestrator, a poison message)."""
    next_id = sum(
        isinstance(e, (TaskScheduled, TimerCreated, SubOrchestrationInstanceCreated))
        for e in history
    )
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
