"""Running activity work items: execute, send the response, then delete the work item.

Plain functions run on a thread pool and ``async def`` activities on the event loop.
While an activity runs its work item is kept hidden from other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from typing import Any

from durable_azure import logevents as ev
from durable_azure import telemetry
from durable_azure.engine import serialization
from durable_azure.engine.history import (
    FailureDetails,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
)
from durable_azure.errors import StorageError, UnknownFunctionError
from durable_azure.storage.messages import TaskMessage
from durable_azure.storage.poison import DEFAULT_MAX_DEQUEUE_COUNT
from durable_azure.storage.primitives import QueueMessage
from durable_azure.storage.provider import AzureStorageProvider, Outbound
from durable_azure.storage.queues import DEFAULT_VISIBILITY_TIMEOUT, ReceivedMessage

logger = logging.getLogger(__name__)


class ActivityRunner:
    """Runs activity work items: plain functions on a thread pool, coroutines on the loop."""

    def __init__(
        self,
        provider: AzureStorageProvider,
        activities: Callable[[str], Callable[..., Any] | None],
        executor: Executor | None,
        *,
        visibility_timeout: timedelta = DEFAULT_VISIBILITY_TIMEOUT,
        max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT,
    ) -> None:
        self.provider = provider
        self.activities = activities
        self.executor = executor
        self.visibility_timeout = visibility_timeout
        self.max_dequeue_count = max_dequeue_count

    async def execute(
        self,
        name: str,
        input_text: str | None,
        task_id: int,
        *,
        instance_id: str = "",
        trace_context: Mapping[str, Any] | None = None,
    ) -> TaskCompleted | TaskFailed:
        """Run activity ``name``; returns its TaskCompleted or TaskFailed for ``task_id``.

        It runs in an ``activity`` span (:mod:`durable_azure.telemetry`), a child of
        ``trace_context`` (the scheduling episode's, carried by its ``TaskScheduled``).
        """
        attributes = {"durable_azure.instance_id": instance_id, "durable_azure.task_id": task_id}
        with telemetry.span(
            f"activity:{name}", parent=trace_context, kind="server", attributes=attributes
        ) as current:
            event = await self._execute(name, input_text, task_id)
            if isinstance(event, TaskFailed):
                telemetry.mark_failed(current, event.reason or "failed")
        return event

    async def _execute(
        self, name: str, input_text: str | None, task_id: int
    ) -> TaskCompleted | TaskFailed:
        now = datetime.now(UTC)
        try:
            fn = self.activities(name)
            if fn is None:
                raise UnknownFunctionError(
                    f"no activity named {name!r} is registered with this worker"
                )
            try:
                value = serialization.loads(input_text)
            except serialization.PayloadError:
                # Input scheduled by another client as plain text: passed on as the text,
                # as azure-functions-durable's activity trigger does.
                value = input_text
            if inspect.iscoroutinefunction(fn):
                output = await fn(value)
            else:
                # In the thread, the activity span stays current (the user's own spans
                # and log correlation nest under it), as asyncio.to_thread does.
                loop = asyncio.get_running_loop()
                call = functools.partial(contextvars.copy_context().run, fn, value)
                output = await loop.run_in_executor(self.executor, call)
            return TaskCompleted(
                timestamp=now, task_scheduled_id=task_id, result=serialization.dumps(output)
            )
        except Exception as exc:
            details = FailureDetails(
                error_type=type(exc).__name__,
                error_message=str(exc),
                stack_trace="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )
            return TaskFailed(
                timestamp=now,
                task_scheduled_id=task_id,
                reason=details.summary(),
                details=details.stack_trace,
                failure_details=details,
            )

    async def process(self, received: ReceivedMessage) -> None:
        """Run the work item's activity, send the response, then delete the work item.

        A crash after the send and before the delete runs the activity again later and
        sends a second response; the orchestration drops the duplicate.
        """
        request = received.message
        scheduled = request.event
        if not isinstance(scheduled, TaskScheduled):
            logger.error(
                "work-item queue held a %s message; deleting it",
                type(scheduled).__name__,
                extra=ev.fields(
                    ev.MESSAGE_DISCARDED,
                    instance_id=request.instance_id,
                    queue=received.queue.name,
                    message_id=received.raw.id,
                ),
            )
            await received.queue.delete(received.raw)
            return
        if received.dequeue_count > self.max_dequeue_count:
            await self._set_aside(received, scheduled)
            return
        # Keep the work item hidden while the activity runs, however long it takes, so no
        # other worker starts it a second time; each renewal gives a new pop receipt.
        latest = [received.raw]
        keeper = asyncio.create_task(self._keep_hidden(received, latest))
        try:
            response = await self.execute(
                scheduled.name,
                scheduled.input,
                scheduled.event_id,
                instance_id=request.instance_id,
                trace_context=scheduled.parent_trace_context,
            )
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self.provider.send(
            Outbound(
                TaskMessage(
                    event=response,
                    instance_id=request.instance_id,
                    execution_id=request.execution_id,
                    episode=request.episode,
                )
            )
        )
        await received.queue.delete(latest[0])

    async def _set_aside(self, received: ReceivedMessage, scheduled: TaskScheduled) -> None:
        """A work item delivered too often (its activity kept killing or stalling the
        worker): set it aside and answer the orchestration with a failure it can catch.
        Order: copy, answer, delete; a crash in between repeats harmlessly (the copy has
        the same name, a second answer is dropped as a duplicate)."""
        request = received.message
        poison = self.provider.poison
        record = await poison.set_aside(
            received.queue.name,
            received.raw,
            reason=f"activity {scheduled.name!r} delivered {received.dequeue_count} times",
            instance_id=request.instance_id,
        )
        failure = FailureDetails(
            error_type="PoisonMessageError",
            error_message=(
                f"activity {scheduled.name!r} was delivered {received.dequeue_count} times "
                "without finishing (the worker running it died or could not complete it); "
                f"its work item was set aside as {poison.container.name}/{record.name}"
            ),
        )
        logger.error(
            "poison work item: %s",
            failure.error_message,
            extra=ev.fields(
                ev.POISON_MOVED,
                instance_id=request.instance_id,
                execution_id=request.execution_id,
                activity=scheduled.name,
                queue=received.queue.name,
                message_id=received.raw.id,
            ),
        )
        await self.provider.send(
            Outbound(
                TaskMessage(
                    event=TaskFailed(
                        timestamp=datetime.now(UTC),
                        task_scheduled_id=scheduled.event_id,
                        reason=failure.summary(),
                        failure_details=failure,
                    ),
                    instance_id=request.instance_id,
                    execution_id=request.execution_id,
                    episode=request.episode,
                )
            )
        )
        await received.queue.delete(received.raw)

    async def _keep_hidden(self, received: ReceivedMessage, latest: list[QueueMessage]) -> None:
        interval = max(1.0, self.visibility_timeout.total_seconds() / 2)
        while True:
            await asyncio.sleep(interval)
            try:
                latest[0] = await received.queue.renew(latest[0], self.visibility_timeout)
            except StorageError as exc:
                # Transient: the next renewal may succeed; if the message is gone another
                # worker may run the activity too (its result is deduplicated).
                logger.warning(
                    "could not extend work item %s: %s",
                    received.raw.id,
                    exc,
                    extra=ev.fields(
                        ev.RENEW_FAILED,
                        instance_id=received.message.instance_id,
                        queue=received.queue.name,
                        message_id=received.raw.id,
                    ),
                )
