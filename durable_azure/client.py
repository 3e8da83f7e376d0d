"""``DurableClient``: start orchestrations and read their status.

Method names follow ``azure-functions-durable``'s ``DurableOrchestrationClient``::

    async with DurableClient.from_app(app) as client:
        instance_id = await client.start_new("hello_cities", client_input={"n": 3})
        status = await client.wait_for_completion(instance_id, timeout=30)
        print(status.runtime_status, status.output)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from durable_azure.app import DurableApp
from durable_azure.engine import serialization
from durable_azure.engine.history import (
    ExecutionCompleted,
    FailureDetails,
    HistoryEvent,
    OrchestrationStatus,
    TaskScheduled,
)
from durable_azure.errors import DurableAzureError, InstanceNotFoundError, NotFoundError
from durable_azure.settings import StorageSettings
from durable_azure.storage.codec import event_fields
from durable_azure.storage.messages import format_timestamp
from durable_azure.storage.names import validate_instance_id
from durable_azure.storage.primitives import StorageAccount
from durable_azure.storage.provider import AzureStorageProvider


class WaitTimeoutError(DurableAzureError, TimeoutError):
    """``wait_for_completion`` gave up before the instance finished.

    Attributes:
        status: the last status read.
    """

    def __init__(self, message: str, status: DurableOrchestrationStatus) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DurableOrchestrationStatus:
    """An instance's status, as ``azure-functions-durable`` presents it.

    ``to_json()`` gives the Durable Functions HTTP status payload
    (``name, instanceId, runtimeStatus, input, output, customStatus, createdTime,
    lastUpdatedTime`` and, when asked for, ``historyEvents``).
    """

    name: str
    instance_id: str
    runtime_status: OrchestrationStatus
    input_: Any
    output: Any
    custom_status: Any
    created_time: datetime | None
    last_updated_time: datetime | None
    failure_details: FailureDetails | None = None
    history: list[dict[str, Any]] | None = field(default=None)

    @property
    def is_terminal(self) -> bool:
        return self.runtime_status.is_terminal

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "instanceId": self.instance_id,
            "runtimeStatus": self.runtime_status.name,
            "input": self.input_,
            "customStatus": self.custom_status,
            "output": self.output,
            "createdTime": _iso(self.created_time),
            "lastUpdatedTime": _iso(self.last_updated_time),
        }
        if self.failure_details is not None:
            data["failureDetails"] = {
                "errorType": self.failure_details.error_type,
                "errorMessage": self.failure_details.error_message,
                "stackTrace": self.failure_details.stack_trace,
            }
        if self.history is not None:
            data["historyEvents"] = self.history
        return data


def _iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


class DurableClient:
    """An async client for one task hub.

    Create it with :meth:`from_app` or :meth:`from_settings`, and close it (or use it as an
    async context manager) to release its connections.
    """

    def __init__(self, provider: AzureStorageProvider, *, owns_account: bool = False) -> None:
        self.provider = provider
        self._owns_account = owns_account
        self._hub_ready = False

    @classmethod
    def from_settings(
        cls, settings: StorageSettings, *, account: StorageAccount | None = None
    ) -> DurableClient:
        owns = account is None
        account = account or settings.open_account()
        return cls(AzureStorageProvider(account, settings.names), owns_account=owns)

    @classmethod
    def from_app(cls, app: DurableApp, **overrides: Any) -> DurableClient:
        """A client for the app's task hub (``overrides`` as for ``DurableApp.settings``)."""
        return cls.from_settings(app.settings(**overrides))

    async def close(self) -> None:
        if self._owns_account:
            await self.provider.account.close()

    async def __aenter__(self) -> DurableClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- operations ----------------------------------------------------------------------

    async def start_new(
        self,
        orchestration_function_name: str,
        instance_id: str | None = None,
        client_input: Any = None,
    ) -> str:
        """Start an orchestration; returns its instance id.

        Args:
            orchestration_function_name: the registered orchestrator name.
            instance_id: the id to use (default: a new random one). An id whose instance
                is Completed, Failed or Terminated starts a new execution under the same
                id, replacing the old history.
            client_input: a JSON-serializable input.

        Raises:
            InvalidInstanceIdError: the id is empty, too long or not valid text.
            InstanceAlreadyExistsError: an instance with this id is Pending, Running or
                Suspended; it is left untouched.
            PayloadError: the input is not JSON-serializable.
        """
        if not isinstance(orchestration_function_name, str) or not orchestration_function_name:
            raise ValueError("the orchestration name must be a non-empty string")
        instance_id = uuid.uuid4().hex if instance_id is None else instance_id
        validate_instance_id(instance_id)
        input_text = serialization.dumps(client_input)
        await self._ensure_hub()
        await self.provider.start_instance(orchestration_function_name, instance_id, input_text)
        return instance_id

    async def get_status(
        self,
        instance_id: str,
        show_history: bool = False,
        show_history_output: bool = False,
        show_input: bool = True,
    ) -> DurableOrchestrationStatus:
        """The instance's status.

        Raises:
            InstanceNotFoundError: no instance has this id.
        """
        validate_instance_id(instance_id)
        try:
            record = await self.provider.read_instance(instance_id)
        except NotFoundError:  # the Instances table itself is missing
            raise InstanceNotFoundError(
                f"no instance with id {instance_id!r}: task hub "
                f"{self.provider.names.hub!r} does not exist in this storage account"
            ) from None
        if record is None:
            raise InstanceNotFoundError(f"no instance with id {instance_id!r}")
        payloads = self.provider.payloads
        input_text = await payloads.fetch_instance_value(record.input) if show_input else None
        output_text = await payloads.fetch_instance_value(record.output)
        failure = None
        history = None
        if show_history or record.runtime_status is OrchestrationStatus.Failed:
            events = (await self.provider.load_history(instance_id)).events
            completed = next(
                (e for e in reversed(events) if isinstance(e, ExecutionCompleted)), None
            )
            failure = completed.failure_details if completed else None
            if show_history:
                history = history_json(events, show_history_output)
        return DurableOrchestrationStatus(
            name=record.name,
            instance_id=instance_id,
            runtime_status=record.runtime_status,
            input_=_loads_lenient(input_text),
            output=_loads_lenient(output_text),
            custom_status=_loads_lenient(record.custom_status),
            created_time=record.created_time,
            last_updated_time=record.last_updated_time,
            failure_details=failure,
            history=history,
        )

    async def wait_for_completion(
        self, instance_id: str, timeout: float = 60.0, *, poll_interval: float = 0.5
    ) -> DurableOrchestrationStatus:
        """Poll until the instance is Completed, Failed, Terminated or Canceled.

        Raises:
            InstanceNotFoundError: no instance has this id.
            WaitTimeoutError: still not finished after ``timeout`` seconds (its ``status``
                attribute holds the last status read).
        """
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            status = await self.get_status(instance_id)
            if status.is_terminal:
                return status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeoutError(
                    f"instance {instance_id!r} is still {status.runtime_status.name} "
                    f"after {timeout} s",
                    status,
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, poll_interval)

    async def _ensure_hub(self) -> None:
        if not self._hub_ready:
            await self.provider.create_if_not_exists()
            self._hub_ready = True


def _loads_lenient(text: str | None) -> Any:
    """Decode JSON text; text that is not JSON (written by other tools) is returned as is."""
    try:
        return serialization.loads(text)
    except serialization.PayloadError:
        return text


def history_json(events: list[HistoryEvent], show_output: bool) -> list[dict[str, Any]]:
    """History events in the shape of the Durable Functions ``historyEvents`` payload."""
    names = {e.event_id: e.name for e in events if isinstance(e, TaskScheduled)}
    out: list[dict[str, Any]] = []
    for event in events:
        fields = event_fields(event)
        item: dict[str, Any] = {
            "EventType": fields.pop("EventType").name,
            "EventId": fields.pop("EventId"),
            "Timestamp": format_timestamp(fields.pop("Timestamp")),
        }
        fields.pop("IsPlayed", None)
        task_id = fields.get("TaskScheduledId")
        if isinstance(task_id, int) and task_id in names:
            item["FunctionName"] = names[task_id]
        for key, value in fields.items():
            if value is None:
                continue
            if key in ("Input", "Result") and not show_output:
                continue
            if key in ("Input", "Result") and isinstance(value, str):
                value = _loads_lenient(value)
            elif isinstance(value, datetime):
                value = format_timestamp(value)
            elif hasattr(value, "name") and not isinstance(value, (str, dict)):
                value = value.name
            item[key] = value
        out.append(item)
    return out
