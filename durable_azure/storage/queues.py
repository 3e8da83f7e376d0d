"""Control queues and the work-item queue (DTFx ``Messaging/``).

:class:`TaskHubQueue` wraps one storage queue: it encodes task messages (spilling large
ones to blobs), decodes what it receives (fetching spilled bodies back), deletes, and
abandons with exponential backoff.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from durable_azure import logevents as ev
from durable_azure import telemetry
from durable_azure.engine.history import ExecutionStarted, TimerFired
from durable_azure.errors import MessageGoneError
from durable_azure.storage import messages
from durable_azure.storage.largepayloads import LargePayloads
from durable_azure.storage.messages import TaskMessage
from durable_azure.storage.names import (
    MAX_INLINE_MESSAGE_BYTES,
    MAX_MESSAGES_PER_RECEIVE,
    MAX_VISIBILITY_TIMEOUT,
)
from durable_azure.storage.primitives import Queue, QueueMessage

logger = logging.getLogger(__name__)

#: How long a received message stays invisible to other workers (DTFx default: 5 min).
DEFAULT_VISIBILITY_TIMEOUT = timedelta(minutes=5)

#: Abandon backoff cap (DTFx: 600 s).
MAX_ABANDON_DELAY = timedelta(minutes=10)

# A per-process tie-breaker for messages enqueued in the same second (DTFx does the same).
_sequence = itertools.count(1)


def abandon_delay(dequeue_count: int) -> float:
    """Seconds to hide an abandoned message: 2^(dequeue count - 1), capped at 10 minutes.

    DTFx uses 2^dequeueCount; we start at 1 s so a message abandoned once because its
    scheduling checkpoint was a moment late is retried quickly.
    """
    exponent = max(0, min(dequeue_count - 1, 20))
    return float(min(2**exponent, MAX_ABANDON_DELAY.total_seconds()))


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A decoded task message and the queue message it came in."""

    message: TaskMessage
    raw: QueueMessage
    queue: TaskHubQueue

    @property
    def dequeue_count(self) -> int:
        return self.raw.dequeue_count


@dataclass(frozen=True, slots=True)
class UnreadableMessage:
    """A queue message that could not be decoded (kept to abandon or set aside)."""

    raw: QueueMessage
    queue: TaskHubQueue
    error: str


class TaskHubQueue:
    """One control queue or the work-item queue of a task hub."""

    def __init__(self, queue: Queue, payloads: LargePayloads) -> None:
        self.queue = queue
        self.payloads = payloads

    @property
    def name(self) -> str:
        return self.queue.name

    async def send(self, message: TaskMessage, *, delay: float = 0.0) -> None:
        """Enqueue ``message``, hidden for ``delay`` seconds (capped by the caller)."""
        if delay > MAX_VISIBILITY_TIMEOUT.total_seconds():
            raise ValueError(f"a message delay of {delay:.0f} s exceeds the 7-day queue limit")
        if message.sequence_number == 0:
            message = _with_sequence(message)
        body = messages.encode(message)
        if len(body.encode("utf-8")) > MAX_INLINE_MESSAGE_BYTES:
            blob = await self.payloads.store_message(
                body,
                instance_id=message.instance_id,
                activity_id=message.activity_id,
                event_type=type(message.event).__name__,
            )
            body = messages.encode_blob_reference(blob)
        await self.queue.send(body, visibility_timeout=max(0.0, delay))

    async def receive(
        self,
        max_messages: int = MAX_MESSAGES_PER_RECEIVE,
        visibility: timedelta = DEFAULT_VISIBILITY_TIMEOUT,
    ) -> tuple[list[ReceivedMessage], list[UnreadableMessage]]:
        """Receive and decode up to ``max_messages`` messages in one request."""
        raw_messages = await self.queue.receive(
            min(max_messages, MAX_MESSAGES_PER_RECEIVE), visibility.total_seconds()
        )
        good: list[ReceivedMessage] = []
        bad: list[UnreadableMessage] = []
        for raw in raw_messages:
            try:
                envelope = messages.parse_envelope(raw.content)
                blob = messages.blob_reference(envelope)
                if blob is not None:
                    envelope = messages.parse_envelope(await self.payloads.fetch_message(blob))
                good.append(ReceivedMessage(messages.decode(envelope), raw, self))
            except Exception as exc:  # unreadable for any reason: set aside, never fatal
                logger.error(
                    "unreadable message %s in %s (dequeue count %d): %s",
                    raw.id,
                    self.name,
                    raw.dequeue_count,
                    exc,
                    extra=ev.fields(ev.MESSAGE_UNREADABLE, queue=self.name, message_id=raw.id),
                )
                bad.append(UnreadableMessage(raw, self, str(exc)))
        if good and telemetry.available():
            now = datetime.now(UTC)
            for received in good:
                telemetry.record_message_age((now - _due(received)).total_seconds(), self.name)
        return good, bad

    async def delete(self, raw: QueueMessage) -> bool:
        """Delete a received message; False if it was already gone (another worker took it
        after our visibility expired, or it was deleted before)."""
        assert raw.pop_receipt is not None
        try:
            await self.queue.delete(raw.id, raw.pop_receipt)
        except MessageGoneError:
            logger.warning(
                "message %s in %s was already gone when deleting it",
                raw.id,
                self.name,
                extra=ev.fields(ev.MESSAGE_GONE, queue=self.name, message_id=raw.id),
            )
            return False
        return True

    async def renew(self, raw: QueueMessage, visibility: timedelta) -> QueueMessage:
        """Hide a received message for another ``visibility``; returns it with its new
        pop receipt (the old one no longer works).

        Raises:
            MessageGoneError: the message was deleted, or its receipt is stale.
        """
        assert raw.pop_receipt is not None
        receipt = await self.queue.update_visibility(
            raw.id, raw.pop_receipt, visibility.total_seconds()
        )
        return replace(raw, pop_receipt=receipt)

    async def abandon(self, raw: QueueMessage, delay: float | None = None) -> None:
        """Make a received message visible again after a backoff delay."""
        assert raw.pop_receipt is not None
        seconds = abandon_delay(raw.dequeue_count) if delay is None else delay
        try:
            await self.queue.update_visibility(raw.id, raw.pop_receipt, seconds)
        except MessageGoneError:
            logger.warning(
                "message %s in %s was gone when abandoning it",
                raw.id,
                self.name,
                extra=ev.fields(ev.MESSAGE_GONE, queue=self.name, message_id=raw.id),
            )


def _with_sequence(message: TaskMessage) -> TaskMessage:
    return replace(message, sequence_number=next(_sequence))


def _due(received: ReceivedMessage) -> datetime:
    """When a message became due: its timer's or scheduled start's time, else when it was
    sent (for the ``durable_azure.message.age`` metric)."""
    event = received.message.event
    if isinstance(event, TimerFired):
        return event.fire_at
    if isinstance(event, ExecutionStarted) and event.scheduled_start_time is not None:
        return event.scheduled_start_time
    return received.raw.inserted_on
