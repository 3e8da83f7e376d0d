"""Where a task hub lives: connection, hub name, partition count.

Resolution order for each setting: the explicit argument, then the environment
(``AZURE_STORAGE_CONNECTION_STRING``, ``DURABLE_TASK_HUB``, ``DURABLE_PARTITION_COUNT``,
``DURABLE_STORAGE_TRANSPORT``), then the default (Azurite's development storage, hub
``TestHubName``, 4 partitions, the lean transport).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from durable_azure.errors import ConfigurationError
from durable_azure.storage.names import (
    DEFAULT_PARTITION_COUNT,
    TaskHubNames,
    validate_partition_count,
    validate_task_hub_name,
)
from durable_azure.storage.primitives import StorageAccount

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_TASK_HUB = "DURABLE_TASK_HUB"
ENV_PARTITION_COUNT = "DURABLE_PARTITION_COUNT"
ENV_ACCOUNT_URL = "DURABLE_STORAGE_ACCOUNT_URL"
ENV_TRANSPORT = "DURABLE_STORAGE_TRANSPORT"

#: How the hot queue and table requests are sent: ``lean`` (signed HTTP of our own,
#: :mod:`durable_azure.storage.rest`) or ``sdk`` (every request through the Azure SDK).
TRANSPORTS = ("lean", "sdk")

#: Azurite on its default ports (what ``UseDevelopmentStorage=true`` means).
DEVELOPMENT_STORAGE = "UseDevelopmentStorage=true"

#: The Durable Functions default hub name.
DEFAULT_TASK_HUB = "TestHubName"


@dataclass(frozen=True)
class StorageSettings:
    """How to reach one task hub.

    Either ``connection_string`` or ``account_url`` is used. With ``account_url``
    (``https://<account>.blob.core.windows.net``, or the account's queue/table URL, or
    just ``https://<account>``) the ``credential`` is an async ``azure-identity``
    credential; by default ``azure.identity.aio.DefaultAzureCredential()`` (managed
    identity, workload identity, environment, Azure CLI...). ``transport``: one of
    :data:`TRANSPORTS`.
    """

    task_hub: str = DEFAULT_TASK_HUB
    partition_count: int = DEFAULT_PARTITION_COUNT
    connection_string: str | None = None
    account_url: str | None = None
    credential: Any = None
    transport: str = "lean"

    def __post_init__(self) -> None:
        validate_task_hub_name(self.task_hub)
        if self.transport not in TRANSPORTS:
            raise ConfigurationError(
                f"unknown storage transport {self.transport!r}: use one of {', '.join(TRANSPORTS)}"
            )
        validate_partition_count(self.partition_count)
        if self.connection_string is not None and not self.connection_string.strip():
            raise ConfigurationError("the storage connection string must not be empty")
        if self.account_url is not None:
            _account_name(self.account_url)  # a clear error now for a URL without one

    @classmethod
    def resolve(
        cls,
        *,
        connection_string: str | None = None,
        task_hub: str | None = None,
        partition_count: int | None = None,
        account_url: str | None = None,
        credential: Any = None,
        transport: str | None = None,
    ) -> StorageSettings:
        """Fill unset values from the environment, then the defaults."""
        if partition_count is None:
            raw = os.environ.get(ENV_PARTITION_COUNT)
            try:
                partition_count = int(raw) if raw else DEFAULT_PARTITION_COUNT
            except ValueError:
                raise ConfigurationError(
                    f"{ENV_PARTITION_COUNT} must be an integer, got {raw!r}"
                ) from None
        if account_url is None and connection_string is None:
            # None means "not given" (an explicit "" is kept, and refused): then the
            # environment's connection string, its account URL, or Azurite, in that order.
            connection_string = os.environ.get(ENV_CONNECTION_STRING) or None
            if connection_string is None:
                account_url = os.environ.get(ENV_ACCOUNT_URL) or None
            if connection_string is None and account_url is None:
                connection_string = DEVELOPMENT_STORAGE
        if task_hub is None:
            task_hub = os.environ.get(ENV_TASK_HUB) or DEFAULT_TASK_HUB
        if transport is None:
            transport = os.environ.get(ENV_TRANSPORT) or "lean"
        return cls(
            task_hub=task_hub,
            partition_count=partition_count,
            connection_string=connection_string,
            account_url=account_url,
            credential=credential,
            transport=transport,
        )

    @property
    def names(self) -> TaskHubNames:
        return TaskHubNames(self.task_hub, self.partition_count)

    def open_account(self) -> StorageAccount:
        """Create the storage account clients (the caller closes them)."""
        from durable_azure.storage.azure_primitives import AzureStorageAccount

        lean = self.transport == "lean"

        if self.account_url:
            credential = self.credential
            if credential is None:
                from azure.identity.aio import DefaultAzureCredential

                credential = DefaultAzureCredential()
            return AzureStorageAccount.from_credential(
                credential, account_name=_account_name(self.account_url), lean=lean
            )
        assert self.connection_string is not None
        return AzureStorageAccount.from_connection_string(self.connection_string, lean=lean)

    def describe(self) -> str:
        """A description safe to log: never the account key or a SAS."""
        if self.account_url:
            where = self.account_url
        else:
            parts = dict(
                p.split("=", 1) for p in (self.connection_string or "").split(";") if "=" in p
            )
            where = parts.get("AccountName") or (
                "development storage" if "UseDevelopmentStorage" in parts else "storage account"
            )
        return f"task hub {self.task_hub!r} in {where} ({self.partition_count} partitions)"


def _account_name(account_url: str) -> str:
    from urllib.parse import urlparse

    host = urlparse(account_url).hostname or ""
    name = host.split(".", 1)[0]
    if not name:
        raise ConfigurationError(f"cannot read an account name from {account_url!r}")
    return name
