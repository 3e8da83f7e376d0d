"""Delete every storage resource of one task hub (tests and benchmarks, synchronous SDK).

Azurite's queue operations scan the messages of *all* queues, so messages left behind by
one test slow down every later test. Tests therefore delete their hub's queues, tables
and containers when they finish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobLeaseClient, BlobServiceClient
from azure.storage.queue import QueueServiceClient

logger = logging.getLogger(__name__)

__all__ = ["DeletedResources", "delete_hub_resources"]

#: The tables of a task hub are named ``{hub}{suffix}``.
_TABLE_SUFFIXES = ("History", "Instances", "Partitions")


@dataclass
class DeletedResources:
    """The names of what :func:`delete_hub_resources` deleted."""

    queues: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.queues or self.tables or self.containers)


def delete_hub_resources(connection_string: str, hub: str) -> DeletedResources:
    """Delete the queues, tables and blob containers of task hub ``hub``.

    Deletes queues and containers whose names start with ``lower(hub) + "-"`` and the
    tables ``{hub}History``, ``{hub}Instances`` and ``{hub}Partitions`` (compared
    case-insensitively, as Azure does). Table names have no separator, so they are matched
    exactly: hub ``Hello`` never takes hub ``HelloCities``'s tables.

    Idempotent: resources that are already gone are ignored. Leased containers have
    their lease broken first.
    """
    if not hub:
        raise ValueError("hub must be a non-empty task hub name")
    prefix = hub.lower() + "-"
    deleted = DeletedResources()

    with QueueServiceClient.from_connection_string(connection_string) as queues:
        for queue in list(queues.list_queues(name_starts_with=prefix)):
            try:
                queues.delete_queue(queue.name)
            except ResourceNotFoundError:
                continue
            deleted.queues.append(queue.name)

    with TableServiceClient.from_connection_string(connection_string) as tables:
        wanted = {f"{hub}{suffix}".lower() for suffix in _TABLE_SUFFIXES}
        names = [t.name for t in tables.list_tables() if t.name.lower() in wanted]
        for name in names:
            try:
                tables.delete_table(name)  # the SDK swallows 404 here
            except ResourceNotFoundError:
                continue
            deleted.tables.append(name)

    with BlobServiceClient.from_connection_string(connection_string) as blobs:
        for container in list(blobs.list_containers(name_starts_with=prefix)):
            client = blobs.get_container_client(container.name)
            try:
                client.delete_container()
            except ResourceNotFoundError:
                continue
            except HttpResponseError as exc:
                if exc.status_code != 412:  # 412 LeaseIdMissing: break the lease, retry
                    raise
                try:
                    BlobLeaseClient(client).break_lease(lease_break_period=0)
                    client.delete_container()
                except ResourceNotFoundError:
                    continue
            deleted.containers.append(container.name)

    if deleted:
        logger.debug("deleted task hub %s resources: %s", hub, deleted)
    return deleted
