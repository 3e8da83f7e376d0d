"""``FunctionAppAdapter``: a loaded function app, runnable by the Worker and servable."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from durable_azure.app import DurableApp
from durable_azure.engine.context import OrchestrationContext
from durable_azure.functions.context import FunctionsOrchestrationContext
from durable_azure.functions.invocation import InvocationContext
from durable_azure.functions.loader import (
    ACTIVITY_TRIGGER,
    HTTP_TRIGGER,
    ORCHESTRATION_TRIGGER,
    FunctionAppError,
    FunctionInfo,
    check_supported,
    describe,
    indexed_functions,
    resolve_app,
)

if TYPE_CHECKING:
    from starlette.routing import Route

    from durable_azure.functions.http_triggers import BindingFactory


def encode_activity_output(value: Any) -> Any:
    """An activity's return value as df's ``ActivityTriggerConverter.encode`` writes it
    (``df_dumps``), given back as plain JSON data for the engine to store: custom objects
    become their ``{"__class__", "__module__", "__data__"}`` envelopes.

    Raises:
        ValueError: the value is not JSON serializable (the converter's message).
    """
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    from azure.functions._durable_functions import df_dumps

    try:
        return json.loads(df_dumps(value))
    except TypeError as exc:
        raise ValueError(f"activity trigger output must be json serializable ({value})") from exc


def decode_activity_input(text: str | None) -> Any:
    """An activity's input as df's ``ActivityTriggerConverter.decode`` gives it: the JSON
    value, or the raw string when the text is not JSON.

    The Worker's ActivityRunner decodes inputs itself (``serialization.loads``) before
    calling the activity; this is the reference for the rules and for other callers.
    """
    from durable_azure.engine import serialization

    if text is None:
        return None
    try:
        return serialization.loads(text) if text != "" else text
    except serialization.PayloadError:
        return text


class FunctionAppAdapter:
    """A function app written with ``azure-functions-durable`` (v2 programming model).

    Attributes:
        app: the app's ``FunctionRegister`` (``df.DFApp`` / ``func.FunctionApp``).
        functions: every function, as indexed (see :class:`FunctionInfo`).
        source: where the app was loaded from.
    """

    def __init__(
        self, app: Any, functions: list[FunctionInfo], source: str, **settings: Any
    ) -> None:
        self.app = app
        self.functions = functions
        self.source = source
        self._settings = settings
        self._durable_app: DurableApp | None = None
        self._names: dict[int, str] = {}
        self._keep_alive: list[Any] = []  # decorated objects whose ids key _names

    # --- views ---------------------------------------------------------------------------

    def _of_type(self, trigger_type: str) -> dict[str, FunctionInfo]:
        return {f.name: f for f in self.functions if f.trigger_type == trigger_type}

    @property
    def orchestrators(self) -> dict[str, FunctionInfo]:
        """Orchestrator functions by registered name."""
        return self._of_type(ORCHESTRATION_TRIGGER)

    @property
    def activities(self) -> dict[str, FunctionInfo]:
        """Activity functions by registered name."""
        return self._of_type(ACTIVITY_TRIGGER)

    @property
    def http_functions(self) -> dict[str, FunctionInfo]:
        """HTTP-triggered functions by function name."""
        return self._of_type(HTTP_TRIGGER)

    @property
    def function_directory(self) -> str:
        path = Path(self.source)
        return str(path.parent if path.suffix == ".py" else Path.cwd())

    def invocation_context(self, info: FunctionInfo) -> InvocationContext:
        """A fresh ``azure.functions.Context`` for one invocation of ``info``."""
        return InvocationContext(info.function_name, self.function_directory)

    # --- the durable app -----------------------------------------------------------------

    @property
    def durable_app(self) -> DurableApp:
        """A DurableApp with every orchestrator and activity of the function app, for
        :class:`~durable_azure.Worker` (built once)."""
        if self._durable_app is None:
            durable = DurableApp(**self._settings)
            for info in self.orchestrators.values():
                durable.orchestrator(self._orchestrator(info), name=info.name)
            for info in self.activities.values():
                durable.activity(self._activity(info), name=info.name)
            self._durable_app = durable
        return self._durable_app

    def _orchestrator(self, info: FunctionInfo) -> Callable[[OrchestrationContext], Any]:
        user = info.user_function
        if inspect.iscoroutinefunction(user) or inspect.isasyncgenfunction(user):
            raise FunctionAppError(
                f"orchestrator {info.function_name!r} is 'async def'; orchestrators are "
                "generator functions that 'yield' durable tasks"
            )
        names = self._names
        input_type = info.input_type

        @functools.wraps(user)
        def orchestrator(ctx: OrchestrationContext) -> Any:
            return user(FunctionsOrchestrationContext(ctx, names=names, input_type=input_type))

        return orchestrator

    def _activity(self, info: FunctionInfo) -> Callable[[Any], Any]:
        user = info.user_function
        param = info.trigger_param
        wants_context = info.accepts_context()

        def arguments(value: Any) -> dict[str, Any]:
            kwargs: dict[str, Any] = {param: value}
            if wants_context:
                kwargs["context"] = self.invocation_context(info)
            return kwargs

        if inspect.iscoroutinefunction(user):

            @functools.wraps(user)
            async def async_activity(value: Any) -> Any:
                return encode_activity_output(await user(**arguments(value)))

            return async_activity

        @functools.wraps(user)
        def activity(value: Any) -> Any:
            return encode_activity_output(user(**arguments(value)))

        return activity

    # --- HTTP ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the aiohttp session the SDK's ``DurableOrchestrationClient`` shares
        across calls (a module global, bound to the event loop that opened it). Call it
        on that loop when the server stops; the next call opens a new session."""
        try:
            from azure.durable_functions.models.utils import http_utils
        except ImportError:  # pragma: no cover - the SDK moved it
            return
        close = getattr(http_utils, "_close_session", None)
        if close is not None:
            await close()

    def http_routes(
        self,
        rpc_base_url: str,
        binding_factory: BindingFactory | None = None,
        *,
        task_hub: str | None = None,
        route_prefix: str = "api",
        function_key: str | None = None,
    ) -> list[Route]:
        """Starlette routes serving every HTTP-triggered function at
        ``/<route_prefix>/<route>``; see :func:`durable_azure.functions.http_triggers.
        http_routes`."""
        from durable_azure.functions.http_triggers import http_routes

        hub = task_hub or self._settings.get("task_hub") or self.durable_app.settings().task_hub
        return http_routes(
            self,
            rpc_base_url,
            binding_factory,
            task_hub=hub,
            route_prefix=route_prefix,
            function_key=function_key,
        )


def load_function_app(spec: str, **settings: Any) -> FunctionAppAdapter:
    """Load a function app written with ``azure-functions-durable``.

    Args:
        spec: a path to ``function_app.py``, a directory holding one, or ``MODULE:ATTR``
            (``MODULE`` alone: its single FunctionRegister).
        **settings: storage settings for the :class:`DurableApp` (``task_hub``,
            ``connection_string``, ``partition_count``, ...).

    Raises:
        FunctionAppError: no app, several apps, or a function the engine cannot run yet
            (durable entities).
    """
    register, source = resolve_app(spec)
    built = indexed_functions(register)
    infos = [describe(function) for function in built]
    check_supported(infos)
    adapter = FunctionAppAdapter(register, infos, source, **settings)
    by_function = {id(function): info for function, info in zip(built, infos, strict=True)}
    for builder in getattr(register, "_function_builders", []):
        info = by_function.get(id(getattr(builder, "_function", None)))
        if info is not None and info.trigger_type in (ORCHESTRATION_TRIGGER, ACTIVITY_TRIGGER):
            adapter._names[id(builder)] = info.name
            adapter._keep_alive.append(builder)
    return adapter
