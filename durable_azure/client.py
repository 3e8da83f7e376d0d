"""``DurableClient``: start orchestrations and read their status.

Method names follow ``azure-functions-durable``'s ``DurableOrchestrationClient``::

    async with DurableClient.from_app(app) as client:
        instance_id = await client.start_new("hello_cities", client_input={"n": 3})
        status = await client.wait_for_completion(instance_id, timeout=30)
        print(status.runtime_status, status.output)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from durable_azure.app import DurableApp
from durable_azure.engine import serialization
from durable_azure.engine.history import (
    EventRaised,
    ExecutionCompleted,
    ExecutionResumed,
    ExecutionRewound,
    ExecutionSuspended,
    ExecutionTerminated,
    FailureDetails,
    HistoryEvent,
    OrchestrationStatus,
    TaskScheduled,
)
from durable_azure.errors import (
    DurableAzureError,
    InstanceNotFoundError,
    InstanceStateError,
    NotFoundError,
)
from durable_azure.settings import StorageSettings
from durable_azure.storage.codec import event_fields
from durable_azure.storage.messages import format_timestamp
from durable_azure.storage.names import validate_instance_id
from durable_azure.storage.poison import PoisonRecord
from durable_azure.storage.primitives import StorageAccount
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.storage.purge import PurgeResult, purge_instance, purge_instances
from durable_azure.storage.queries import (
    InstanceQuery,
    count_instances,
    iterate_instances,
    parse_statuses,
    query_instances,
)
from durable_azure.storage.tracking import InstanceRecord
from durable_azure.wake import WakeSender


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
    parent_instance_id: str | None = None

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
        if self.parent_instance_id is not None:
            data["parentInstanceId"] = self.parent_instance_id
        if self.failure_details is not None:
            data["failureDetails"] = {
                "errorType": self.failure_details.error_type,
                "errorMessage": self.failure_details.error_message,
                "stackTrace": self.failure_details.stack_trace,
            }
        if self.history is not None:
            data["historyEvents"] = self.history
        return data


def _mentions(failure: FailureDetails, text: str) -> bool:
    inner = failure.inner_failure
    return text in failure.error_message or (inner is not None and text in inner.error_message)


@dataclass(frozen=True)
class CheckStatusResponse:
    """A framework-neutral HTTP response: status code, headers and a JSON body."""

    status_code: int
    headers: dict[str, str]
    body: dict[str, str]


@dataclass(frozen=True)
class PurgeHistoryResult:
    """What ``purge_instance_history`` deleted (``azure-functions-durable``'s shape)."""

    instances_deleted: int


def _status(
    record: InstanceRecord,
    input_text: str | None,
    output_text: str | None,
    *,
    failure: FailureDetails | None = None,
    history: list[dict[str, Any]] | None = None,
) -> DurableOrchestrationStatus:
    return DurableOrchestrationStatus(
        name=record.name,
        instance_id=record.instance_id,
        runtime_status=record.runtime_status,
        input_=_loads_lenient(input_text),
        output=_loads_lenient(output_text),
        custom_status=_loads_lenient(record.custom_status),
        created_time=record.created_time,
        last_updated_time=record.last_updated_time,
        failure_details=failure,
        history=history,
        parent_instance_id=record.parent_instance_id,
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


class DurableClient:
    """An async client for one task hub.

    Create it with :meth:`from_app` or :meth:`from_settings`, and close it (or use it as an
    async context manager) to release its connections.

    With ``wake_ups`` (the default), every message it sends is followed by a wake-up
    datagram to the worker that owns the queue (see :mod:`durable_azure.wake`), so an
    idle worker picks it up at once instead of at its next poll.
    """

    def __init__(
        self,
        provider: AzureStorageProvider,
        *,
        owns_account: bool = False,
        wake_ups: bool = True,
    ) -> None:
        self.provider = provider
        self._owns_account = owns_account
        self._hub_ready = False
        self._wake_sender: WakeSender | None = None
        if wake_ups:
            self._wake_sender = WakeSender.for_account(provider.account, provider.names)
            provider.add_send_listener(self._wake_sender.notify)

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
        if self._wake_sender is not None:
            await self._wake_sender.aclose()
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
        *,
        start_at: datetime | None = None,
    ) -> str:
        """Start an orchestration; returns its instance id.

        Args:
            orchestration_function_name: the registered orchestrator name.
            instance_id: the id to use (default: a new random one). An id whose instance
                is Completed, Failed or Terminated starts a new execution under the same
                id, replacing the old history.
            client_input: a JSON-serializable input.
            start_at: start no earlier than this (an aware datetime); until then the
                instance is Pending, and events raised to it are kept for it.

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
        if start_at is not None and start_at.tzinfo is None:
            raise ValueError("start_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
        input_text = serialization.dumps(client_input)
        await self._ensure_hub()
        await self.provider.start_instance(
            orchestration_function_name, instance_id, input_text, start_at=start_at
        )
        return instance_id

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        """Send an event to a Pending, Running or Suspended instance.

        It is kept until the orchestrator waits for an event of that name (events of one
        name are delivered in the order raised).

        Raises:
            InstanceNotFoundError: no such instance.
            InstanceStateError: the instance has finished.
        """
        if not isinstance(event_name, str) or not event_name:
            raise ValueError("the event name must be a non-empty string")
        data = serialization.dumps(event_data)
        await self._require_active(instance_id, "raise an event to")
        await self.provider.send_to_instance(
            instance_id, EventRaised(timestamp=_now(), name=event_name, input=data)
        )

    async def terminate(self, instance_id: str, reason: Any = None) -> None:
        """Stop a Pending, Running or Suspended instance; it becomes Terminated with
        ``reason`` as its output (a parent waiting on it sees a failure).

        Raises:
            InstanceNotFoundError: no such instance.
            InstanceStateError: the instance has already finished.
        """
        await self._require_active(instance_id, "terminate")
        await self.provider.send_to_instance(
            instance_id,
            ExecutionTerminated(timestamp=_now(), input=serialization.dumps(reason)),
        )

    async def suspend(self, instance_id: str, reason: str | None = None) -> None:
        """Pause an instance: it makes no progress (events raised meanwhile are kept) until
        :meth:`resume`."""
        await self._require_active(instance_id, "suspend")
        await self.provider.send_to_instance(
            instance_id, ExecutionSuspended(timestamp=_now(), reason=reason)
        )

    async def resume(self, instance_id: str, reason: str | None = None) -> None:
        """Let a suspended instance continue, with the events it received meanwhile."""
        await self._require_active(instance_id, "resume")
        await self.provider.send_to_instance(
            instance_id, ExecutionResumed(timestamp=_now(), reason=reason)
        )

    async def rewind(self, instance_id: str, reason: str | None = None) -> None:
        """Re-run a Failed instance's failed activities and sub-orchestrations; what had
        succeeded is kept. It can then complete.

        Raises:
            InstanceNotFoundError: no such instance.
            InstanceStateError: the instance is not Failed.
        """
        record = await self._record(instance_id)
        if record.runtime_status is not OrchestrationStatus.Failed:
            raise InstanceStateError(
                instance_id,
                record.runtime_status.name,
                f"cannot rewind instance {instance_id!r}: it is "
                f"{record.runtime_status.name}, and only a Failed instance can be rewound",
            )
        await self.provider.send_to_instance(
            instance_id, ExecutionRewound(timestamp=_now(), reason=reason)
        )
        # Show it as Pending until the worker runs the rewind (so wait_for_completion does
        # not return the old failure); only if the worker has not written the row yet.
        await self.provider.instances.merge_if_unchanged(
            instance_id,
            {"RuntimeStatus": OrchestrationStatus.Pending.name, "LastUpdatedTime": _now()},
            etag=record.etag,
        )

    async def restart(self, instance_id: str, restart_with_new_instance_id: bool = True) -> str:
        """Start the instance's orchestration again with its original input; returns the
        id of the new instance (the same id if ``restart_with_new_instance_id`` is False,
        which needs the instance to have finished).

        Raises:
            InstanceNotFoundError: no such instance.
            InstanceAlreadyExistsError: restarting under the same id while it runs.
        """
        record = await self._record(instance_id)
        started = (await self.provider.load_history(instance_id)).started
        input_text = started.input if started else record.input
        name = started.name if started else record.name
        new_id = uuid.uuid4().hex if restart_with_new_instance_id else instance_id
        await self.provider.start_instance(name, new_id, input_text)
        return new_id

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
        record = await self._record(instance_id)
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
        return _status(record, input_text, output_text, failure=failure, history=history)

    async def get_status_by(
        self,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Sequence[OrchestrationStatus | str] | None = None,
        instance_id_prefix: str | None = None,
        name: str | None = None,
    ) -> list[DurableOrchestrationStatus]:
        """Every instance matching all the given filters (all pages; see
        :meth:`query_instances` to page through large hubs)."""
        query = self._query(
            created_time_from, created_time_to, runtime_status, instance_id_prefix, name
        )
        return [
            await self._status_of(record)
            async for record in iterate_instances(self.provider, query)
        ]

    async def get_status_all(self) -> list[DurableOrchestrationStatus]:
        """Every instance in the task hub."""
        return await self.get_status_by()

    async def query_instances(
        self,
        *,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Sequence[OrchestrationStatus | str] | None = None,
        instance_id_prefix: str | None = None,
        name: str | None = None,
        page_size: int = 100,
        continuation: str | None = None,
    ) -> tuple[list[DurableOrchestrationStatus], str | None]:
        """One page of matching instances and the token for the next page (``None`` at
        the end). A page may be short, even empty, before the end: follow the token."""
        query = self._query(
            created_time_from, created_time_to, runtime_status, instance_id_prefix, name
        )
        records, token = await query_instances(
            self.provider, query, page_size=page_size, continuation=continuation
        )
        return [await self._status_of(r) for r in records], token

    async def count_instances(
        self,
        *,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Sequence[OrchestrationStatus | str] | None = None,
        instance_id_prefix: str | None = None,
        name: str | None = None,
    ) -> dict[str, int]:
        """How many matching instances there are, per runtime status."""
        query = self._query(
            created_time_from, created_time_to, runtime_status, instance_id_prefix, name
        )
        return await count_instances(self.provider, query)

    async def purge_instance_history(self, instance_id: str) -> PurgeHistoryResult:
        """Delete a finished instance: its history rows, its blobs, then its row.

        Raises:
            InstanceStateError: the instance is Pending, Running or Suspended.
        """
        validate_instance_id(instance_id)
        deleted = await purge_instance(self.provider, instance_id)
        return PurgeHistoryResult(instances_deleted=1 if deleted else 0)

    async def purge_instance_history_by(
        self,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Sequence[OrchestrationStatus | str] | None = None,
        *,
        instance_id_prefix: str | None = None,
        progress: Callable[[int], None] | None = None,
        time_limit: float | None = None,
        continuation: str | None = None,
    ) -> PurgeResult:
        """Purge every finished instance matching the filters, page by page.

        Only Completed, Failed, Terminated and Canceled instances are purged (the default
        when ``runtime_status`` is not given). ``progress`` is called with the running
        total after each page. With ``time_limit`` (seconds) it stops between pages and
        returns ``complete=False`` and a ``continuation`` to resume from; an interrupted
        purge can also simply be run again.
        """
        query = self._query(
            created_time_from, created_time_to, runtime_status, instance_id_prefix, None
        )
        return await purge_instances(
            self.provider,
            query,
            progress=progress,
            time_limit=time_limit,
            continuation=continuation,
        )

    def create_http_management_payload(
        self,
        instance_id: str,
        base_url: str,
        *,
        key: str | None = None,
        connection: str = "Storage",
    ) -> dict[str, str]:
        """The management URLs of an instance (``statusQueryGetUri``, ``sendEventPostUri``,
        ``terminatePostUri``, ...), for your own HTTP layer in front of the API served by
        :func:`durable_azure.http.create_management_app` at ``base_url`` (e.g.
        ``https://host/runtime/webhooks/durabletask``). ``key`` adds ``code=``."""
        from durable_azure.http.payloads import management_payload

        return management_payload(
            base_url.rstrip("/"),
            instance_id,
            task_hub=self.provider.names.hub,
            connection=connection,
            code=key,
        )

    def create_check_status_response(
        self, instance_id: str, base_url: str, *, key: str | None = None
    ) -> CheckStatusResponse:
        """What an HTTP starter answers (as ``azure-functions-durable``'s method of that
        name): 202, ``Location`` = the status URL, ``Retry-After: 10``, and the management
        URLs as the JSON body - framework-neutral, to turn into your framework's response.
        """
        payload = self.create_http_management_payload(instance_id, base_url, key=key)
        return CheckStatusResponse(
            status_code=202,
            headers={"Location": payload["statusQueryGetUri"], "Retry-After": "10"},
            body={"id": instance_id, **payload},
        )

    async def list_poison(self) -> list[PoisonRecord]:
        """Messages set aside after failing too often (see docs/design.md)."""
        return await self.provider.poison.list()

    async def drop_poison(self, name: str) -> None:
        """Delete a set-aside message for good.

        Raises:
            NotFoundError: no such record.
        """
        await self.provider.poison.drop(name)

    async def requeue_poison(self, name: str) -> str:
        """Give a set-aside message another chance; returns what was done.

        If the message failed its instance, the instance is rewound first. A control
        message is then sent back to its queue; a work item is not (the rewind schedules
        the activity again, so sending it too would run it twice).
        """
        record = await self.provider.poison.get(name)
        done = []
        if record.instance_id is not None:
            with contextlib.suppress(InstanceNotFoundError):
                status = await self.get_status(record.instance_id, show_input=False)
                failure = status.failure_details
                if status.runtime_status is OrchestrationStatus.Failed and (
                    failure is not None
                    and (failure.error_type == "PoisonMessageError" or _mentions(failure, name))
                ):
                    await self.rewind(record.instance_id, f"requeued {name}")
                    done.append(f"rewound {record.instance_id}")
        if record.queue == self.provider.work_items.name:
            await self.provider.poison.drop(name)
            done.append(
                "dropped the work item (the rewind runs its activity again)"
                if done
                else "dropped the work item (its instance had already handled the failure)"
            )
        else:
            await self.provider.requeue_poison(name)
            done.append(f"sent the message back to {record.queue}")
        return "; ".join(done)

    @staticmethod
    def _query(
        created_time_from: datetime | None,
        created_time_to: datetime | None,
        runtime_status: Sequence[OrchestrationStatus | str] | None,
        instance_id_prefix: str | None,
        name: str | None,
    ) -> InstanceQuery:
        return InstanceQuery(
            runtime_status=parse_statuses(runtime_status or ()),
            created_time_from=created_time_from,
            created_time_to=created_time_to,
            instance_id_prefix=instance_id_prefix,
            name=name,
        )

    async def _status_of(self, record: InstanceRecord) -> DurableOrchestrationStatus:
        payloads = self.provider.payloads
        return _status(
            record,
            await payloads.fetch_instance_value(record.input),
            await payloads.fetch_instance_value(record.output),
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

    async def _record(self, instance_id: str) -> InstanceRecord:
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
        return record

    async def _require_active(self, instance_id: str, operation: str) -> InstanceRecord:
        record = await self._record(instance_id)
        if record.runtime_status.is_terminal:
            raise InstanceStateError(
                instance_id,
                record.runtime_status.name,
                f"cannot {operation} instance {instance_id!r}: it is {record.runtime_status.name}",
            )
        return record

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
