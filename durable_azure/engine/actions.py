"""Actions: what an orchestrator episode asks the outside world to do.

Each action carries the sequence id the orchestrator code gave it; the provider turns
actions into history events and outbound messages. The ids follow the numbering of
``azure-functions-durable``: every id-consuming call (activity, timer, sub-orchestration)
takes the next integer, starting at 0 in each execution.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from durable_azure.engine.history import EventRaised, FailureDetails, OrchestrationStatus


@dataclass(frozen=True, slots=True)
class ScheduleTask:
    """Run activity ``name`` with ``input`` (JSON text)."""

    id: int
    name: str
    input: str | None


@dataclass(frozen=True, slots=True)
class CreateTimer:
    """Fire a durable timer at ``fire_at`` (UTC)."""

    id: int
    fire_at: datetime


@dataclass(frozen=True, slots=True)
class CreateSubOrchestration:
    """Start orchestration ``name`` as instance ``instance_id`` with ``input`` (JSON text)."""

    id: int
    name: str
    instance_id: str
    input: str | None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class CompleteOrchestration:
    """The execution finished.

    ``status`` is Completed (``result`` = the output), Failed (``failure``), Terminated
    (``result`` = the reason) or ContinuedAsNew (``result`` = the next execution's input,
    ``carryover`` = the raised events no code consumed, for the next execution).
    """

    id: int
    status: OrchestrationStatus
    result: str | None = None
    failure: FailureDetails | None = None
    carryover: tuple[EventRaised, ...] = ()


Action = ScheduleTask | CreateTimer | CreateSubOrchestration | CompleteOrchestration


def describe(action: Action) -> str:
    """A one-line description used in non-determinism errors and logs."""
    if isinstance(action, ScheduleTask):
        return f"a call to activity {action.name!r} (task #{action.id})"
    if isinstance(action, CreateTimer):
        return f"a timer firing at {action.fire_at.isoformat()} (task #{action.id})"
    if isinstance(action, CreateSubOrchestration):
        return f"a call to sub-orchestrator {action.name!r} (task #{action.id})"
    return f"completion with status {action.status.name}"
