"""Loading a Python function app (v2 programming model) the way the Python worker does.

``function_app.py`` is imported with its directory on ``sys.path``; the single
``azure.functions.FunctionRegister`` in it (a ``df.DFApp`` or ``func.FunctionApp``) is
indexed with ``get_functions()``, called once per app object (a second call raises in the
SDK), and every function is classified by the type of its trigger binding.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from durable_azure.errors import ConfigurationError

#: The file the Python worker imports (``PYTHON_SCRIPT_FILE_NAME``'s default).
SCRIPT_FILE_NAME = "function_app.py"

ORCHESTRATION_TRIGGER = "orchestrationTrigger"
ACTIVITY_TRIGGER = "activityTrigger"
ENTITY_TRIGGER = "entityTrigger"
HTTP_TRIGGER = "httpTrigger"
DURABLE_CLIENT = "durableClient"


class FunctionAppError(ConfigurationError):
    """A function app cannot be loaded, or uses something this engine does not support."""


@dataclass(frozen=True)
class ClientBinding:
    """A ``durable_client_input`` binding: the parameter that receives the client JSON."""

    name: str
    task_hub: str | None = None
    connection_name: str | None = None


@dataclass(frozen=True)
class FunctionInfo:
    """One function of the app, as indexed.

    Attributes:
        function_name: the Functions name (``@app.function_name`` or the Python name).
        name: the durable name it is registered under: the trigger's ``orchestration`` /
            ``activity`` / ``entityName`` override if set, else ``function_name``.
        trigger_type: the trigger binding's type (``orchestrationTrigger``, ...).
        trigger_param: the parameter the trigger value is passed as.
        bindings: the binding dictionaries, as in ``function.json``.
        user_function: what to call: for orchestrators the raw user generator function
            (not the SDK's JSON ``handle``), otherwise the registered callable (for a
            function with a durable client, the SDK's client middleware).
        client_bindings: the function's ``durableClient`` input bindings.
    """

    function_name: str
    name: str
    trigger_type: str
    trigger_param: str
    bindings: tuple[dict[str, Any], ...]
    user_function: Callable[..., Any]
    client_bindings: tuple[ClientBinding, ...] = ()
    input_type: type | None = None
    script_file: str | None = None
    trigger: dict[str, Any] = field(default_factory=dict)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

    def accepts_context(self) -> bool:
        """True if the function declares a parameter named ``context`` that is not bound
        (the worker then passes an ``azure.functions.Context``)."""
        if self.trigger_param == "context":
            return False
        if any(b.get("name") == "context" for b in self.bindings):
            return False
        try:
            parameters = inspect.signature(self.user_function).parameters
        except (TypeError, ValueError):
            return False
        return "context" in parameters


# get_functions() may be called only once per FunctionRegister; remember its result.
_INDEXED: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _function_register_type() -> type:
    try:
        import azure.functions as func
    except ImportError as exc:  # pragma: no cover - the http extra is missing
        raise FunctionAppError(
            "loading function apps needs azure-functions and azure-functions-durable: "
            "pip install 'durable-azure[http]'"
        ) from exc
    register: type = func.FunctionRegister
    return register


def _import_script(script: Path) -> ModuleType:
    """Import ``script`` as the worker does: its directory first on ``sys.path`` and the
    module named after the file (``function_app``). A module of that name loaded from
    another file is replaced; the same file is imported once."""
    directory = str(script.parent)
    if directory in sys.path:
        sys.path.remove(directory)
    sys.path.insert(0, directory)
    module_name = script.stem
    existing = sys.modules.get(module_name)
    if existing is not None:
        existing_file = getattr(existing, "__file__", None)
        if existing_file is not None and Path(existing_file).resolve() == script:
            return existing
        del sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, script)
    if spec is None or spec.loader is None:
        raise FunctionAppError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _find_register(module: ModuleType, where: str) -> Any:
    register_type = _function_register_type()
    found = [
        value
        for name, value in vars(module).items()
        if not name.startswith("__") and isinstance(value, register_type)
    ]
    unique = list({id(v): v for v in found}.values())
    if not unique:
        raise FunctionAppError(
            f"no function app found in {where}: it must define one azure.functions."
            "FunctionApp / azure.durable_functions.DFApp at module level"
        )
    if len(unique) > 1:
        raise FunctionAppError(
            f"more than one function app instance found in {where}; define exactly one "
            "(use Blueprints for the rest) or name it as MODULE:ATTR"
        )
    return unique[0]


def resolve_app(spec: str) -> tuple[Any, str]:
    """Import the app named by ``spec``; returns the FunctionRegister and where it was
    found. ``spec`` is a path to ``function_app.py``, a directory holding one, or
    ``MODULE:ATTR`` / ``MODULE`` (an importable module)."""
    path = Path(spec)
    if spec.endswith(".py") or "/" in spec or "\\" in spec or path.exists():
        script = path if path.suffix == ".py" else path / SCRIPT_FILE_NAME
        script = script.resolve()
        if not script.is_file():
            raise FunctionAppError(f"no {script.name} at {script.parent}")
        module = _import_script(script)
        return _find_register(module, str(script)), str(script)
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise FunctionAppError(f"invalid function app spec {spec!r}; use PATH or MODULE:ATTR")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FunctionAppError(f"cannot import function app module {module_name!r}: {exc}") from exc
    if not attr:
        return _find_register(module, module_name), module_name
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise FunctionAppError(f"{module_name!r} has no attribute {attr!r}") from None
    if not isinstance(target, _function_register_type()):
        raise FunctionAppError(
            f"{spec!r} is a {type(target).__name__}, not an azure.functions.FunctionApp / "
            "azure.durable_functions.DFApp"
        )
    return target, spec


def indexed_functions(register: Any) -> list[Any]:
    """``register.get_functions()``, called at most once per app object."""
    functions = _INDEXED.get(register)
    if functions is None:
        functions = list(register.get_functions())
        _INDEXED[register] = functions
    return functions


def describe(function: Any) -> FunctionInfo:
    """Classify one ``azure.functions.decorators.function_app.Function``."""
    function_name = str(function.get_function_name())
    described = json.loads(function.get_function_json())
    bindings = tuple(dict(b) for b in described.get("bindings", []))
    trigger = function.get_trigger()
    if trigger is None:
        raise FunctionAppError(f"function {function_name!r} has no trigger")
    trigger_type = str(trigger.get_binding_name())
    trigger_param = str(trigger.name)
    trigger_dict = next(
        (b for b in bindings if b.get("type") == trigger_type and b.get("name") == trigger_param),
        {},
    )
    callable_: Callable[..., Any] = function.get_user_function()
    name = function_name
    input_type: type | None = None
    if trigger_type == ORCHESTRATION_TRIGGER:
        name = trigger_dict.get("orchestration") or function_name
        raw = getattr(callable_, "orchestrator_function", None)
        if not callable(raw):
            raise FunctionAppError(
                f"orchestrator {function_name!r} is not wrapped by azure.durable_functions "
                "(expected the handle made by @app.orchestration_trigger)"
            )
        input_type = getattr(callable_, "_df_input_type", None)
        callable_ = raw
    elif trigger_type == ACTIVITY_TRIGGER:
        name = trigger_dict.get("activity") or function_name
    elif trigger_type == ENTITY_TRIGGER:
        name = trigger_dict.get("entityName") or function_name
    clients = tuple(
        ClientBinding(
            name=str(b["name"]),
            task_hub=b.get("taskHub"),
            connection_name=b.get("connectionName"),
        )
        for b in bindings
        if b.get("type") == DURABLE_CLIENT
    )
    return FunctionInfo(
        function_name=function_name,
        name=str(name),
        trigger_type=trigger_type,
        trigger_param=trigger_param,
        bindings=bindings,
        user_function=callable_,
        client_bindings=clients,
        input_type=input_type,
        script_file=described.get("scriptFile"),
        trigger=trigger_dict,
    )


def check_supported(functions: list[FunctionInfo]) -> None:
    """Refuse what the engine cannot run yet, at load time rather than at first call."""
    for info in functions:
        if info.trigger_type == ENTITY_TRIGGER:
            raise FunctionAppError(
                f"durable entities are not supported yet (function {info.function_name!r})"
            )
    seen: dict[tuple[str, str], str] = {}
    for info in functions:
        if info.trigger_type not in (ORCHESTRATION_TRIGGER, ACTIVITY_TRIGGER):
            continue
        key = (info.trigger_type, info.name.lower())
        if key in seen:
            raise FunctionAppError(
                f"functions {seen[key]!r} and {info.function_name!r} are both registered "
                f"as {info.trigger_type} {info.name!r}"
            )
        seen[key] = info.function_name
