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

import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from durable_azure.engine import serialization
from durable_azure.engine.actions import Action, CreateSubOrchestration, CreateTimer, ScheduleTask
from durable_azure.engine.history import EventRaised
from durable_azure.engine.retry import RetryOptions, RetryTask
from durable_azure.engine.tasks import (
    ActivityTask,
    ExternalEventTask,
    SubOrchestrationTask,
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
    # An azure.functions FunctionBuilder (a function decorated in a df.DFApp): its
    # function's name, as azure-functions-durable resolves it.
    built = getattr(getattr(name_or_function, "_function", None), "_name", None)
    if isinstance(built, str) and built:
        return built
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
        # Raised events no code has waited for yet, and waits no event has answered yet.
        self._event_buffer: dict[str, deque[EventRaised]] = {}
        self._event_waiters: dict[str, deque[ExternalEventTask]] = {}
        self._continue_as_new: str | None = None

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

    def get_input(self, expected_type: type | None = None) -> Any:
        """The orchestration's input, decoded from JSON.

        ``expected_type`` is accepted for ``azure-functions-durable`` compatibility; values
        of classes with ``to_json``/``from_json`` decode to those classes either way.
        """
        return serialization.loads(self._input_text)

    @property
    def raw_input(self) -> str | None:
        """The input as stored: JSON text (``None`` if there was none)."""
        return self._input_text

    @property
    def will_continue_as_new(self) -> bool:
        """True once :meth:`continue_as_new` has been called in this execution."""
        return self._continue_as_new is not None

    @property
    def function_context(self) -> dict[str, Any]:
        """Extra context values (``azure-functions-durable`` compatibility; always empty)."""
        return {}

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

    def call_activity(
        self,
        name: str | Callable[..., Any],
        input_: Any = None,
        expected_type: type | None = None,
    ) -> ActivityTask:
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
            fire_at = fire_at.replace(tzinfo=UTC)
        fire_at = fire_at.astimezone(UTC)
        task_id = self._take_id()
        self._actions[task_id] = CreateTimer(id=task_id, fire_at=fire_at)
        task = TimerTask(task_id, fire_at)
        self._open_tasks[task_id] = task
        return task

    def call_activity_with_retry(
        self,
        name: str | Callable[..., Any],
        retry_options: Any,
        input_: Any = None,
        expected_type: type | None = None,
    ) -> Task:
        """``call_activity``, retried on failure as ``retry_options`` says.

        Args:
            name: the activity's registered name, or the activity function itself.
            retry_options: :class:`~durable_azure.engine.retry.RetryOptions`, or an
                ``azure.durable_functions.RetryOptions``.
            input_: the activity's input.
        """
        options = RetryOptions.coerce(retry_options)
        return RetryTask(self, options, lambda: self.call_activity(name, input_))

    def call_sub_orchestrator(
        self,
        name: str | Callable[..., Any],
        input_: Any = None,
        instance_id: str | None = None,
        version: str | None = None,
        expected_type: type | None = None,
    ) -> SubOrchestrationTask:
        """Start another orchestration as a child and wait for its output.

        Args:
            name: the orchestrator's registered name, or the function itself.
            input_: its input.
            instance_id: the child's instance id (default: ``"{parent id}:{task #:04d}"``,
                deterministic, so a replay names the same child).

        Raises (inside the orchestrator, when yielded):
            TaskFailedError: the child failed or was terminated; it carries the child's
                error type, message and traceback text.
        """
        orchestrator = function_name(name)
        task_id = self._take_id()
        child = instance_id if instance_id is not None else f"{self.instance_id}:{task_id:04d}"
        if not isinstance(child, str) or not child:
            raise ValueError("a sub-orchestration instance id must be a non-empty string")
        self._actions[task_id] = CreateSubOrchestration(
            id=task_id,
            name=orchestrator,
            instance_id=child,
            input=serialization.dumps(input_),
            version=version,
        )
        task = SubOrchestrationTask(task_id, orchestrator, child)
        self._open_tasks[task_id] = task
        return task

    def call_sub_orchestrator_with_retry(
        self,
        name: str | Callable[..., Any],
        retry_options: Any,
        input_: Any = None,
        instance_id: str | None = None,
        version: str | None = None,
        expected_type: type | None = None,
    ) -> Task:
        """``call_sub_orchestrator``, retried on failure. Every attempt runs the child
        under the same instance id (a fresh execution each time)."""
        options = RetryOptions.coerce(retry_options)
        return RetryTask(
            self, options, lambda: self.call_sub_orchestrator(name, input_, instance_id, version)
        )

    def wait_for_external_event(
        self, name: str, expected_type: type | None = None
    ) -> ExternalEventTask:
        """The next event named ``name`` (case-insensitive) raised to this instance.

        Events raised before the code waits for them are kept, in order, and delivered to
        the next wait of that name; no event is dropped.
        """
        if not isinstance(name, str) or not name:
            raise ValueError("an event name must be a non-empty string")
        task = ExternalEventTask(name)
        key = name.lower()
        buffered = self._event_buffer.get(key)
        if buffered:
            task._complete(_event_value(buffered.popleft()))
        else:
            self._event_waiters.setdefault(key, deque()).append(task)
        return task

    def continue_as_new(self, input_: Any) -> None:
        """Restart this orchestration with a new input once the function returns.

        The next execution gets a new execution id and an empty history, so an eternal
        orchestration's history stays small. Events raised but not yet consumed are
        carried over to it.
        """
        self._continue_as_new = serialization.dumps(input_)

    def create_replay_safe_logger(self, logger: logging.Logger) -> logging.LoggerAdapter[Any]:
        """A logger that drops records while the orchestrator is replaying, so each message
        is logged once, not once per replay.

        Its records carry ``instance_id`` and ``orchestration`` (the orchestrator's name)
        as attributes, merged with any ``extra`` of the call. The equivalent test is
        ``if not ctx.is_replaying: logger.info(...)``, which is what ``azure-functions-durable``
        code usually writes; both behave the same here. A record is still logged again if
        the episode that logged it could not be checkpointed (a storage failure, a crash)
        and runs again, as in Durable Functions.
        """
        return _ReplaySafeLogger(logger, self)

    def call_http(self, method: str, uri: str, *args: Any, **kwargs: Any) -> Task:
        """Not supported yet: raises, failing the orchestration with a clear message."""
        raise NotImplementedError(
            "ctx.call_http (durable HTTP calls) is not supported yet by durable-azure; "
            "make the request in an activity instead"
        )

    def call_entity(self, *args: Any, **kwargs: Any) -> Task:
        """Not supported yet: raises, failing the orchestration with a clear message."""
        raise NotImplementedError("durable entities are not supported yet by durable-azure")

    def signal_entity(self, *args: Any, **kwargs: Any) -> None:
        """Not supported yet: raises, failing the orchestration with a clear message."""
        raise NotImplementedError("durable entities are not supported yet by durable-azure")

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

    def _deliver_event(self, event: EventRaised) -> None:
        """Complete the oldest wait for this event's name, or keep the event for later."""
        key = event.name.lower()
        waiters = self._event_waiters.get(key)
        if waiters:
            waiters.popleft()._complete(_event_value(event))
        else:
            self._event_buffer.setdefault(key, deque()).append(event)

    def _unconsumed_events(self) -> tuple[EventRaised, ...]:
        return tuple(e for queue in self._event_buffer.values() for e in queue)


def _event_value(event: EventRaised) -> Any:
    try:
        return serialization.loads(event.input)
    except serialization.PayloadError:
        return event.input  # raised by a tool that sent plain text


class _ReplaySafeLogger(logging.LoggerAdapter[Any]):
    def __init__(self, logger: logging.Logger, ctx: OrchestrationContext) -> None:
        super().__init__(logger, {"instance_id": ctx.instance_id, "orchestration": ctx.name})
        self._ctx = ctx

    def isEnabledFor(self, level: int) -> bool:
        # LoggerAdapter.log (and so debug/info/.../exception) asks this first.
        return not self._ctx.is_replaying and self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        # The call's own ``extra`` is kept (the base class would replace it).
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs
