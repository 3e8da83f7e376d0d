"""``DurableApp``: where orchestrators and activities are registered.

::

    app = DurableApp(task_hub="Hello")

    @app.activity
    def say_hello(city: str) -> str:
        return f"Hello {city}!"

    @app.orchestrator
    def hello_cities(ctx):
        return [(yield ctx.call_activity(say_hello, c)) for c in ("Tokyo", "London")]
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from durable_azure.engine.replay import Orchestrator
from durable_azure.errors import ConfigurationError
from durable_azure.settings import StorageSettings
from durable_azure.storage.names import validate_partition_count, validate_task_hub_name

F = TypeVar("F", bound=Callable[..., Any])


class DurableApp:
    """A registry of orchestrators and activities, plus where their task hub lives.

    Args:
        task_hub: the task hub name (default: ``DURABLE_TASK_HUB`` or ``TestHubName``).
        connection_string: storage connection string (default:
            ``AZURE_STORAGE_CONNECTION_STRING`` or Azurite's development storage).
        partition_count: control-queue partitions, 1-16 (default 4). Must not change
            once a task hub holds instances.
        account_url: a storage account URL, used with ``credential`` instead of a
            connection string.
        credential: an ``azure-identity`` credential for ``account_url``.
    """

    def __init__(
        self,
        *,
        task_hub: str | None = None,
        connection_string: str | None = None,
        partition_count: int | None = None,
        account_url: str | None = None,
        credential: Any = None,
    ) -> None:
        # Explicit values are checked now, not when a worker or client is built from them.
        if task_hub is not None:
            validate_task_hub_name(task_hub)
        if partition_count is not None:
            validate_partition_count(partition_count)
        self._settings_args: dict[str, Any] = {
            "task_hub": task_hub,
            "connection_string": connection_string,
            "partition_count": partition_count,
            "account_url": account_url,
            "credential": credential,
        }
        self.orchestrators: dict[str, Orchestrator] = {}
        self.activities: dict[str, Callable[..., Any]] = {}

    def settings(self, **overrides: Any) -> StorageSettings:
        """The resolved storage settings; ``overrides`` that are not None win."""
        args = dict(self._settings_args)
        args.update({k: v for k, v in overrides.items() if v is not None})
        return StorageSettings.resolve(**args)

    # --- registration --------------------------------------------------------------------

    def orchestrator(self, fn: F | None = None, /, *, name: str | None = None) -> Any:
        """Register an orchestrator (a generator function taking the context).

        Use as ``@app.orchestrator`` or ``@app.orchestrator(name="...")``.
        """

        def register(f: F) -> F:
            if inspect.iscoroutinefunction(f):
                raise ConfigurationError(
                    f"orchestrator {f.__name__!r} is 'async def'; orchestrators are generator "
                    "functions that 'yield' durable tasks"
                )
            self._add(self.orchestrators, "orchestrator", name or f.__name__, f)
            return f

        return register(fn) if fn is not None else register

    def activity(self, fn: F | None = None, /, *, name: str | None = None) -> Any:
        """Register an activity: a function (or ``async def``) taking one JSON input.

        Use as ``@app.activity`` or ``@app.activity(name="...")``.
        """

        def register(f: F) -> F:
            self._add(self.activities, "activity", name or f.__name__, f)
            return f

        return register(fn) if fn is not None else register

    @staticmethod
    def _add(table: dict[str, Any], kind: str, name: str, fn: Callable[..., Any]) -> None:
        if not name:
            raise ConfigurationError(f"an {kind} name must not be empty")
        if name in table and table[name] is not fn:
            raise ConfigurationError(f"an {kind} named {name!r} is already registered")
        table[name] = fn
        # Lets ctx.call_activity(fn) find the registered name.
        with contextlib.suppress(AttributeError, TypeError):  # builtins take no attributes
            fn.__durable_name__ = name  # type: ignore[attr-defined]

    def get_orchestrator(self, name: str) -> Orchestrator | None:
        """The orchestrator registered as ``name``; like Durable Functions, names match
        case-insensitively when there is no exact match."""
        return _lookup(self.orchestrators, name)

    def get_activity(self, name: str) -> Callable[..., Any] | None:
        """The activity registered as ``name`` (case-insensitive, as for orchestrators)."""
        return _lookup(self.activities, name)


def _lookup(table: dict[str, F], name: str) -> F | None:
    found = table.get(name)
    if found is not None:
        return found
    folded = name.casefold()
    matches = [fn for key, fn in table.items() if key.casefold() == folded]
    return matches[0] if len(matches) == 1 else None
