"""The object an orchestrator function receives.

Method names and behaviour follow ``azure-functions-durable``'s
``DurableOrchestrationContext`` so existing orchestrator code runs unchanged::

    def hello_sequence(ctx):
        a = yield ctx.call_activity("say_hello", "Tokyo")
        b = yield ctx.call_activity("say_hello", "Seattle")
        return [a, b]

Everything here is deterministic: time comes from the history, ids from a formula over the
instance id, that time and a counter.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from durable_azure.engine import serialization
from durable_azure.engine.actions import Action, CreateTimer, ScheduleTask
from durable_azure.engine.tasks import (
    ActivityTask,
    Task,
    TimerTask,
    WhenAllTask,
    WhenAnyTask,
)

#: The namespace ``azure-functions-durable`` (and durabletask-python) derive
#: ``new_uuid`` values in: uuid5(NAMESPACE_OID, "9e952958-5e33-4daf-827f-2fa12937b875").
UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "9e952958-5e33-4daf-827f-2fa12937b875")


def function_name(name_or_function: str | Callable[..., Any]) -> str:
    """The registered name of an activity given by name or by the function object."""
    if isinstance(name_or_function, str):
        if not name_or_function:
            raise ValueError("an activity name must not be empty")
        return name_or_function
    registered = getattr(name_or_function, "__durable_name__", None)
    if isinstance(registered, str):
        return registered
    name = getattr(name_or_function, "__name__", None)
    if isinstance(name, str):
        return name
    raise TypeError(f"expected an activity name or function, got {type(name_or_function)!r}")


class OrchestrationContext:
    """Context for one orchestration execution, rebuilt for every replay.

    Attributes:
        instance_id: the orchestration instance id.
        is_replaying: True while the code re-executes steps already in the history.
    """

    def __init__(
        self,
        instance_id: str,
        *,
        name: str = "",
        input_text: str | None = None,
        parent_instance_id: str | None = None,
        version: str | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.name = name
        self.parent_instance_id = parent_instance_id
        self.version = version
        self.is_replaying = False
        self._input_text = input_text
        self._current_utc_datetime: datetime | None = None
        self._next_id = 0
        self._uuid_counter = 0
        self._actions: dict[int, Action] = {}
        self._open_tasks: dict[int, Task] = {}
        self._custom_status: str | None = None

    # --- properties ----------------------------------------------------------------------

    @property
    def current_utc_datetime(self) -> datetime:
        """The current episode's start time, from the history (never the wall clock)."""
        if self._current_utc_datetime is None:
            raise RuntimeError("current_utc_datetime is not set before the first episode")
        return self._current_utc_datetime

    @property
    def custom_status(self) -> Any:
        """The value last passed to :meth:`set_custom_status`."""
        return serialization.loads(self._custom_status)

    # --- input and helpers ---------------------------------------------------------------

    def get_input(self) -> Any:
        """The orchestration's input, decoded from JSON."""
        return serialization.loads(self._input_text)

    def new_uuid(self) -> str:
        """A deterministic UUID string, equal to what ``azure-functions-durable`` returns.

        The name hashed is ``"{instance_id}_{current_utc_datetime}_{counter}"`` with the
        time as ``%Y-%m-%dT%H:%M:%S.%fZ``; the counter counts calls in this replay.
        """
        stamp = self.current_utc_datetime.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        value = uuid.uuid5(UUID_NAMESPACE, f"{self.instance_id}_{stamp}_{self._uuid_counter}")
        self._uuid_counter += 1
        return str(value)

    def new_guid(self) -> uuid.UUID:
        """A deterministic UUID, as ``azure-functions-durable``'s ``new_guid`` computes it
        (``uuid5(NAMESPACE_URL, "{instance_id}_{str(time)}_{counter}")``); it shares
        the counter with :meth:`new_uuid`."""
        value = uuid.uuid5(
            uuid.NAMESPACE_URL,
            f"{self.instance_id}_{self.current_utc_datetime}_{self._uuid_counter}",
        )
        self._uuid_counter += 1
        return value

    def set_custom_status(self, status: Any) -> None:
        """Publish a JSON-serializable value in the instance's status (``customStatus``)."""
        self._custom_status = None if status is None else serialization.dumps(status)

    # --- tasks ---------------------------------------------------------------------------

    def call_activity(self, name: str | Callable[..., Any], input_: Any = None) -> ActivityTask:
        """Schedule an activity; ``yield`` the returned task to get its result.

        Args:
            name: the activity's registered name, or the activity function itself.
            input_: a JSON-serializable value passed to the activity.

        Raises (inside the orchestrator, when yielded):
            TaskFailedError: the activity raised; the error carries its type, message and
                traceback text.
        """
        activity = function_name(name)
        task_id = self._take_id()
        self._actions[task_id] = ScheduleTask(
            id=task_id, name=activity, input=serialization.dumps(input_)
        )
        task = ActivityTask(task_id, activity)
        self._open_tasks[task_id] = task
        return task

    def create_timer(self, fire_at: datetime) -> TimerTask:
        """A durable timer that completes at ``fire_at`` (an aware datetime, or naive UTC)."""
        if not isinstance(fire_at, datetime):
            raise TypeError(f"create_timer needs a datetime, got {type(fire_at).__name__}")
        if fire_at.tzinfo is None:
            fire_at = fire_at.replace(tzinfo=timezone.utc)
        fire_at = fire_at.astimezone(timezone.utc)
        task_id = self._take_id()
        self._actions[task_id] = CreateTimer(id=task_id, fire_at=fire_at)
        task = TimerTask(task_id, fire_at)
        self._open_tasks[task_id] = task
        return task

    def task_all(self, tasks: Sequence[Task]) -> WhenAllTask:
        """A task that completes with all results (in order) once every task has."""
        return WhenAllTask(tasks)

    def task_any(self, tasks: Sequence[Task]) -> WhenAnyTask:
        """A task that completes with the first of ``tasks`` to complete (the task itself)."""
        return WhenAnyTask(tasks)

    # --- internal ------------------------------------------------------------------------

    def _take_id(self) -> int:
        task_id = self._next_id
        self._next_id += 1
        return task_id
