"""Poison messages: messages that keep failing are set aside, never dropped, never looped.

DTFx leaves such a message cycling in its queue forever (durabletask#1040). Here, a
message delivered more than ``max_dequeue_count`` times is copied, with why and where it
came from, to one JSON blob in the ``{hub}-poison`` container, and then deleted from its
queue. A blob (not a queue) because it holds a body of any size and the record of why;
the CLI lists, requeues (sends the original body back to its queue) and drops them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from durable_azure.storage.primitives import BlobContainer, QueueMessage

#: Deliveries after which a message that keeps failing is set aside (DTFx's own warning
#: threshold; with the abandon backoff that is about 8 minutes of retries, or 10
#: visibility timeouts when the worker dies each time).
DEFAULT_MAX_DEQUEUE_COUNT = 10


@dataclass(frozen=True)
class PoisonRecord:
    """A message that was set aside, with where it came from and why."""

    name: str
    queue: str
    message_id: str
    dequeue_count: int
    inserted_on: str
    set_aside_at: str
    reason: str
    instance_id: str | None
    body: str


class PoisonStore:
    """The poison container of one task hub."""

    def __init__(self, container: BlobContainer) -> None:
        self.container = container

    async def set_aside(
        self, queue: str, raw: QueueMessage, *, reason: str, instance_id: str | None
    ) -> PoisonRecord:
        """Store a copy of ``raw`` (the caller deletes it from its queue afterwards)."""
        record = PoisonRecord(
            name=f"{queue}/{raw.id}.json",
            queue=queue,
            message_id=raw.id,
            dequeue_count=raw.dequeue_count,
            inserted_on=raw.inserted_on.isoformat(),
            set_aside_at=datetime.now(UTC).isoformat(),
            reason=reason,
            instance_id=instance_id,
            body=raw.content,
        )
        await self.container.upload(record.name, json.dumps(asdict(record)).encode("utf-8"))
        return record

    async def list(self) -> list[PoisonRecord]:
        return [await self.get(name) for name in await self.container.list_names()]

    async def get(self, name: str) -> PoisonRecord:
        """Raises :class:`NotFoundError` if there is no such record."""
        data = json.loads(await self.container.download(name))
        return PoisonRecord(**data)

    async def drop(self, name: str) -> None:
        """Delete a record for good. Raises :class:`NotFoundError` if it does not exist."""
        await self.get(name)
        await self.container.delete(name)
