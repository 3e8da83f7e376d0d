"""``DurableOrchestrationContext`` for function-app orchestrators, over our context.

Orchestrator code written against ``azure.durable_functions.DurableOrchestrationContext``
receives a :class:`FunctionsOrchestrationContext`: it forwards to the engine's
:class:`~durable_azure.engine.context.OrchestrationContext` and adds what df code uses
on top of it: function objects decorated by the v2 model (``FunctionBuilder``) as names,
the ``expected_type`` / ``version`` keywords, ``get_input`` with the trigger's
``input_type``, ``function_context`` and ``will_continue_as_new``. What the engine does
not support (entities, ``call_http``) raises a clear ``NotImplementedError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from durable_azure.engine import serialization
from durable_azure.engine.context import OrchestrationContext
from durable_azure.engine.tasks import Task


class FunctionsOrchestrationContext:
    """The orchestration context passed to a function app's orchestrator.

    Args:
        ctx: the engine's context for this execution.
        names: registered durable names of the app's functions, by identity of the
            decorated object (``FunctionBuilder``), so ``call_activity(fn)`` sends the
            name the function is registered under.
        input_type: the ``input_type`` declared on ``orchestration_trigger``.
    """

    def __init__(
        self,
        ctx: OrchestrationContext,
        *,
        names: Mapping[int, str] | None = None,
        input_type: type | None = None,
    ) -> None:
        self._ctx = ctx
        self._names = dict(names or {})
        self._input_type = input_type
        self._function_context = SimpleNamespace()

    # --- properties ----------------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        return self._ctx.instance_id

    @property
    def parent_instance_id(self) -> str | None:
        return self._ctx.parent_instance_id

    @property
    def version(self) -> str | None:
        return self._ctx.version

    @property
    def is_replaying(self) -> bool:
        return self._ctx.is_replaying

    @property
    def current_utc_datetime(self) -> datetime:
        return self._ctx.current_utc_datetime

    @property
    def custom_status(self) -> Any:
        return self._ctx.custom_status

    @property
    def will_continue_as_new(self) -> bool:
        """True once ``continue_as_new`` has been called in this execution."""
        return self._ctx.will_continue_as_new

    @property
    def function_context(self) -> SimpleNamespace:
        """Extra keys of the host's context JSON in df; this engine sends none."""
        return self._function_context

    @property
    def histories(self) -> list[Any]:
        raise NotImplementedError(
            "context.histories (the raw history events) is not available on durable-azure"
        )

    # --- input and helpers ---------------------------------------------------------------

    def get_input(self, expected_type: type | None = None) -> Any:
        """The input, decoded; ``expected_type`` (or the trigger's ``input_type``) decodes
        a custom-object payload as that class."""
        resolved = expected_type or self._input_type
        text = self._ctx.raw_input
        if resolved is None or text is None or text == "":
            return self._ctx.get_input()
        return _loads_as(text, resolved)

    def new_uuid(self) -> str:
        return self._ctx.new_uuid()

    def new_guid(self) -> Any:
        return self._ctx.new_guid()

    def set_custom_status(self, status: Any) -> None:
        self._ctx.set_custom_status(status)

    def continue_as_new(self, input_: Any) -> None:
        self._ctx.continue_as_new(input_)

    def create_replay_safe_logger(self, logger: Any) -> Any:
        return self._ctx.create_replay_safe_logger(logger)

    # --- tasks ---------------------------------------------------------------------------

    def call_activity(
        self,
        name: str | Callable[..., Any],
        input_: Any = None,
        expected_type: type | None = None,
    ) -> Task:
        return self._ctx.call_activity(self._name(name, "call_activity"), input_)

    def call_activity_with_retry(
        self,
        name: str | Callable[..., Any],
        retry_options: Any,
        input_: Any = None,
        expected_type: type | None = None,
    ) -> Task:
        return self._ctx.call_activity_with_retry(
            self._name(name, "call_activity_with_retry"), retry_options, input_
        )

    def call_sub_orchestrator(
        self,
        name: str | Callable[..., Any],
        input_: Any = None,
        instance_id: str | None = None,
        version: str | None = None,
        expected_type: type | None = None,
    ) -> Task:
        return self._ctx.call_sub_orchestrator(
            self._name(name, "call_sub_orchestrator"), input_, instance_id, version
        )

    def call_sub_orchestrator_with_retry(
        self,
        name: str | Callable[..., Any],
        retry_options: Any,
        input_: Any = None,
        instance_id: str | None = None,
        version: str | None = None,
        expected_type: type | None = None,
    ) -> Task:
        return self._ctx.call_sub_orchestrator_with_retry(
            self._name(name, "call_sub_orchestrator_with_retry"),
            retry_options,
            input_,
            instance_id,
            version,
        )

    def create_timer(self, fire_at: datetime) -> Task:
        return self._ctx.create_timer(fire_at)

    def wait_for_external_event(self, name: str, expected_type: type | None = None) -> Task:
        return self._ctx.wait_for_external_event(name)

    def task_all(self, activities: Sequence[Task]) -> Task:
        return self._ctx.task_all(activities)

    def task_any(self, activities: Sequence[Task]) -> Task:
        return self._ctx.task_any(activities)

    def call_http(self, method: str, uri: str, *args: Any, **kwargs: Any) -> Task:
        return self._ctx.call_http(method, uri, *args, **kwargs)

    def call_entity(self, *args: Any, **kwargs: Any) -> Task:
        return self._ctx.call_entity(*args, **kwargs)

    def signal_entity(self, *args: Any, **kwargs: Any) -> None:
        self._ctx.signal_entity(*args, **kwargs)

    # --- internal ------------------------------------------------------------------------

    def _name(self, name: str | Callable[..., Any], api: str) -> str | Callable[..., Any]:
        if isinstance(name, str):
            return name
        registered = self._names.get(id(name))
        if registered is not None:
            return registered
        function = getattr(name, "_function", None)  # a FunctionBuilder of another app
        if function is not None and callable(getattr(function, "get_function_name", None)):
            return str(function.get_function_name())
        raise ValueError(
            f"The `{api}` API received a `Callable` without an associated Azure "
            "Functions trigger-type. Decorate it with the matching trigger or pass the "
            "function's name as a string."
        )


def _loads_as(text: str, expected_type: type) -> Any:
    """Decode ``text``; a custom-object envelope becomes ``expected_type.from_json(data)``
    when its class name matches, as df's ``df_loads(text, expected_type)`` does."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise serialization.PayloadError(f"stored payload is not valid JSON: {exc}") from exc
    if (
        isinstance(raw, dict)
        and raw.keys() == {"__class__", "__module__", "__data__"}
        and raw["__class__"] == expected_type.__name__
        and callable(getattr(expected_type, "from_json", None))
    ):
        return expected_type.from_json(raw["__data__"])  # type: ignore[attr-defined]
    return serialization.loads(text)
