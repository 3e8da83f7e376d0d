"""The Azure Storage provider: one task hub's queues, tables and blobs, and the checkpoint.

This is the only place that knows the order in which an episode's effects reach storage.
See :meth:`AzureStorageProvider.commit` for the order and why each crash point is safe.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from durable_azure import telemetry
from durable_azure.engine.history import (
    ExecutionStarted,
    HistoryEvent,
    OrchestrationStatus,
)
from durable_azure.errors import (
    AlreadyExistsError,
    ConditionFailedError,
    InstanceAlreadyExistsError,
)
from durable_azure.storage.largepayloads import LargePayloads
from durable_azure.storage.messages import TaskMessage
from durable_azure.storage.names import (
    MAX_MESSAGE_DELAY,
    TaskHubNames,
    validate_instance_id,
)
from durable_azure.storage.poison import PoisonStore
from durable_azure.storage.primitives import StorageAccount
from durable_azure.storage.queues import ReceivedMessage, TaskHubQueue
from durable_azure.storage.tracking import (
    HistoryStore,
    InstanceRecord,
    InstanceStore,
    LoadedHistory,
)

logger = logging.getLogger(__name__)

#: Called after a message is enqueued to a queue, so an in-process poller can wake up.
SendListener = Callable[[str], None]
#: Told the queue name and the delay (seconds) after each delayed enqueue.
DelayedSendListener = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message an episode sends: to a control queue (by instance) or the work-item queue."""

    message: TaskMessage
    to_work_items: bool = False
    delay: float = 0.0


@dataclass
class Checkpoint:
    """Everything one episode writes, applied by :meth:`AzureStorageProvider.commit`."""

    instance_id: str
    execution_id: str
    outbound: list[Outbound]
    history_start: int
    new_events: list[HistoryEvent]
    history_etag: str | None
    instance_update: dict[str, Any]
    consumed: list[ReceivedMessage] = field(default_factory=list)
    #: Rows of a replaced execution (continue-as-new, rewind) up to here are deleted.
    previous_length: int = 0
    #: Columns to write too if the Instances row is missing (its table was recreated).
    instance_defaults: dict[str, Any] = field(default_factory=dict)


class AzureStorageProvider:
    """Storage operations of one task hub, on top of the storage primitives."""

    def __init__(self, account: StorageAccount, names: TaskHubNames) -> None:
        self.account = account
        self.names = names
        self.payloads = LargePayloads(account.container(names.large_messages_container))
        self.history = HistoryStore(account.table(names.history_table), self.payloads)
        self.instances = InstanceStore(
            account.table(names.instances_table), self.payloads, names.hub
        )
        self.control_queues = [
            TaskHubQueue(account.queue(name), self.payloads) for name in names.control_queues
        ]
        self.work_items = TaskHubQueue(account.queue(names.work_item_queue), self.payloads)
        self.poison = PoisonStore(account.container(names.poison_container))
        self._send_listeners: list[SendListener] = []
        self._delayed_send_listeners: list[DelayedSendListener] = []

    # --- task hub ------------------------------------------------------------------------

    async def create_if_not_exists(self) -> None:
        """Create every queue, table and container of the hub (idempotent)."""
        await asyncio.gather(
            self.history.table.create(),
            self.instances.table.create(),
            self.payloads.container.create(),
            self.poison.container.create(),
            self.work_items.queue.create(),
            *(q.queue.create() for q in self.control_queues),
        )

    async def delete_hub(self) -> None:
        """Delete every resource of the hub. Irreversible."""
        await asyncio.gather(
            self.history.table.delete_table(),
            self.instances.table.delete_table(),
            self.payloads.container.delete_container(),
            self.poison.container.delete_container(),
            self.work_items.queue.delete_queue(),
            *(q.queue.delete_queue() for q in self.control_queues),
        )

    def queue_named(self, name: str) -> TaskHubQueue:
        """The control or work-item queue called ``name``.

        Raises:
            ValueError: no queue of this task hub has that name.
        """
        for queue in [*self.control_queues, self.work_items]:
            if queue.name == name:
                return queue
        raise ValueError(f"task hub {self.names.hub!r} has no queue named {name!r}")

    async def requeue_poison(self, name: str) -> None:
        """Send a set-aside message's original body back to its queue, then forget it."""
        record = await self.poison.get(name)
        await self.queue_named(record.queue).queue.send(record.body)
        await self.poison.drop(name)

    def control_queue_of(self, instance_id: str) -> TaskHubQueue:
        return self.control_queues[self.names.partition_of(instance_id)]

    def add_send_listener(self, listener: SendListener) -> None:
        """Register a callback told the queue name after each enqueue from this process
        of a message that is visible at once."""
        self._send_listeners.append(listener)

    def add_delayed_send_listener(self, listener: DelayedSendListener) -> None:
        """Register a callback told the queue name and the delay after each enqueue of a
        message that becomes visible later (timers, retries, scheduled starts)."""
        self._delayed_send_listeners.append(listener)

    async def send(self, outbound: Outbound) -> None:
        queue = (
            self.work_items
            if outbound.to_work_items
            else self.control_queue_of(outbound.message.instance_id)
        )
        await queue.send(outbound.message, delay=outbound.delay)
        if outbound.delay <= 0:
            for listener in self._send_listeners:
                listener(queue.name)
        else:
            for delayed in self._delayed_send_listeners:
                delayed(queue.name, outbound.delay)

    # --- starting instances (client side) ------------------------------------------------

    async def start_instance(
        self,
        name: str,
        instance_id: str,
        input_text: str | None,
        *,
        now: datetime | None = None,
        start_at: datetime | None = None,
    ) -> str:
        """Create an instance: enqueue its ``ExecutionStarted``, then write it as Pending.

        The message goes first, as in DTFx: a crash after it leaves a message the worker
        can still run (it accepts a start whose Instances row does not exist yet); a
        crash before it leaves nothing. The row is then inserted, or - if the id belonged
        to a finished instance - replaced using the ETag read at the start, so two clients
        racing for one id cannot both win.

        Returns:
            The new execution id.

        Raises:
            InstanceAlreadyExistsError: the id names a Pending, Running or Suspended
                instance (nothing is sent), or another client started it concurrently.
        """
        with telemetry.span(
            f"create_orchestration:{name}",
            kind="producer",
            attributes={"durable_azure.instance_id": instance_id},
        ):
            return await self._start_instance(
                name, instance_id, input_text, now=now, start_at=start_at
            )

    async def _start_instance(
        self,
        name: str,
        instance_id: str,
        input_text: str | None,
        *,
        now: datetime | None,
        start_at: datetime | None,
    ) -> str:
        validate_instance_id(instance_id)
        existing = await self.instances.get(instance_id)
        if existing is not None and not existing.runtime_status.is_terminal:
            raise InstanceAlreadyExistsError(instance_id, existing.runtime_status.name)
        now = now or datetime.now(UTC)
        execution_id = uuid.uuid4().hex
        generation = existing.generation + 1 if existing is not None else 0
        # A scheduled start waits in its queue (in steps of < 7 days; the runner re-parks
        # a start that surfaces early).
        delay = (start_at - now).total_seconds() if start_at else 0.0
        await self.send(
            Outbound(
                TaskMessage(
                    event=ExecutionStarted(
                        timestamp=now,
                        name=name,
                        instance_id=instance_id,
                        execution_id=execution_id,
                        input=input_text,
                        generation=generation,
                        scheduled_start_time=start_at,
                        parent_trace_context=telemetry.current_trace_context(),
                    ),
                    instance_id=instance_id,
                    execution_id=execution_id,
                ),
                delay=min(max(0.0, delay), MAX_MESSAGE_DELAY.total_seconds()),
            )
        )
        values: dict[str, Any] = {
            "Name": name,
            "Version": "",
            "Input": input_text,
            "CustomStatus": "null",
            "RuntimeStatus": OrchestrationStatus.Pending.name,
            "ExecutionId": execution_id,
            "CreatedTime": now,
            "LastUpdatedTime": now,
            "Generation": generation,
            "Tags": "null",
            "ScheduledStartTime": start_at,
        }
        try:
            await self.instances.create(
                instance_id, values, replace_etag=existing.etag if existing else None
            )
        except (AlreadyExistsError, ConditionFailedError):
            # Either a worker already ran our start message (fine), or another client
            # started this id between our read and our write (we lost the race).
            current = await self.instances.get(instance_id)
            if current is None or current.execution_id != execution_id:
                status = current.runtime_status.name if current else "Pending"
                raise InstanceAlreadyExistsError(instance_id, status) from None
        return execution_id

    async def send_to_instance(self, instance_id: str, event: HistoryEvent) -> None:
        """Send a client event (raise, terminate, suspend, resume, rewind) to whatever
        execution of the instance is current."""
        await self.send(
            Outbound(TaskMessage(event=event, instance_id=instance_id, execution_id=None))
        )

    async def read_instance(self, instance_id: str) -> InstanceRecord | None:
        return await self.instances.get(instance_id)

    async def load_history(self, instance_id: str) -> LoadedHistory:
        return await self.history.load(instance_id)

    # --- the checkpoint ------------------------------------------------------------------

    async def commit(self, cp: Checkpoint) -> str:
        """Apply an episode's effects in the crash-safe order; returns the new history ETag.

        Raises:
            SessionAbortedError: another writer committed this instance's history first;
                nothing after step 1 was written and the caller must abandon the messages.
        """
        # Step 1: send outbound messages (activities, timers, responses) FIRST.
        # Crash here: the history does not mention them, so the consumed messages
        # reappear after their visibility timeout and the episode replays, sending the
        # same messages again. Activities may then run twice (at-least-once, as in DTFx);
        # their duplicate responses are dropped by the replay engine (task already
        # completed) and never reach history twice. Nothing is lost.
        await _gather(self.send(o) for o in cp.outbound)

        # Step 2: append history, guarded by the sentinel ETag. This is the commit point.
        # Crash here (before or during): as for step 1. A conflict (another worker wrote
        # first) raises SessionAbortedError before anything else is written.
        # Responses that arrive before this write finds its TaskScheduled row are
        # deferred, not dropped (see the episode runner's out-of-order check).
        etag = await self.history.append(
            cp.instance_id,
            execution_id=cp.execution_id,
            start_position=cp.history_start,
            events=cp.new_events,
            etag=cp.history_etag,
            previous_length=cp.previous_length,
        )

        # Step 3: update the Instances row (status, output, custom status).
        # Crash here: history is ahead of the Instances row. The consumed messages come
        # back, the runner finds their effects already in history (duplicates), and this
        # same update is written again when it processes them - the row converges.
        if cp.instance_update and not await self.instances.merge_existing(
            cp.instance_id, cp.instance_update
        ):
            # The row is gone (e.g. its table was deleted and recreated): write it whole.
            await self.instances.merge(
                cp.instance_id, {**cp.instance_defaults, **cp.instance_update}
            )

        # Step 4: delete the consumed messages.
        # Crash here: some consumed messages reappear; their effects are in history, so
        # the runner deletes them as duplicates without running anything.
        await _gather(m.queue.delete(m.raw) for m in cp.consumed)
        return etag


async def _gather(aws: Any) -> None:
    awaitables: list[Awaitable[Any]] = list(aws)
    if awaitables:
        await asyncio.gather(*awaitables)
