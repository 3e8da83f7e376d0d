"""Payloads too large for a queue message or a table property go to gzip blobs.

DTFx layout (reference §2.7, §4.2), in the ``{hub}-largemessages`` container:

* a queue message over 45 KiB -> ``{escapedId}/message-{ActivityId:N}-{EventType}.json.gz``,
  and the queue gets a wrapper with only ``CompressedBlobName``;
* a History string property over 60 KiB (UTF-16) ->
  ``{escapedId}/history-{RowKey}-{EventType}-{rand:X8}-{Prop}.json.gz``; the column becomes
  ``""`` and ``{Prop}BlobName`` holds the blob name;
* an Instances property over 60 KiB -> ``{escapedId}/{Prop}-{rand:X8}.json.gz`` with the
  column holding the blob's full URL, as DTFx does.

Blob names start with the *escaped* instance id (DTFx uses the raw id for message blobs,
which its purge then misses for ids with escapable characters; we do not copy that).
"""

from __future__ import annotations

import gzip
import secrets
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlparse

from durable_azure.storage.names import MAX_INLINE_PROPERTY_BYTES, escape_key, utf16_size
from durable_azure.storage.primitives import BlobContainer

#: String properties that may be offloaded (DTFx's list).
OFFLOADABLE_PROPERTIES = (
    "Name",
    "Input",
    "Result",
    "Output",
    "Reason",
    "Details",
    "Correlation",
    "FailureDetails",
    "Tags",
    "CustomStatus",
)

# gzip level 6: compression past it costs CPU for little gain on JSON.
_GZIP_LEVEL = 6


def _compress(text: str) -> bytes:
    return gzip.compress(text.encode("utf-8"), compresslevel=_GZIP_LEVEL)


def _decompress(data: bytes) -> str:
    return gzip.decompress(data).decode("utf-8")


class LargePayloads:
    """Offloads and fetches large payloads for one task hub's container."""

    def __init__(self, container: BlobContainer) -> None:
        self.container = container

    # --- queue messages ------------------------------------------------------------------

    async def store_message(
        self, body: str, *, instance_id: str, activity_id: str, event_type: str
    ) -> str:
        """Upload a message body; returns the blob name for the wrapper."""
        name = (
            f"{escape_key(instance_id)}/message-{activity_id.replace('-', '')}-{event_type}.json.gz"
        )
        await self.container.upload(name, _compress(body))
        return name

    async def fetch_message(self, blob_name: str) -> str:
        return _decompress(await self.container.download(blob_name))

    # --- history rows --------------------------------------------------------------------

    async def offload_history_row(self, row: dict[str, Any], *, event_type: str) -> None:
        """Move large properties of a History row to blobs, in place."""
        for prop in _large_properties(row):
            name = (
                f"{row['PartitionKey']}/history-{row['RowKey']}-{event_type}-"
                f"{secrets.token_hex(4).upper()}-{prop}.json.gz"
            )
            await self.container.upload(name, _compress(row[prop]))
            row[prop] = ""
            row[f"{prop}BlobName"] = name

    async def fetch_history_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Put offloaded properties of a History row back into their columns."""
        for column in [c for c in row if c.endswith("BlobName") and row[c]]:
            prop = column[: -len("BlobName")]
            row[prop] = _decompress(await self.container.download(str(row[column])))
        return row

    # --- instances rows ------------------------------------------------------------------

    async def offload_instance_row(self, row: dict[str, Any]) -> None:
        """Move large properties of an Instances row to blobs; the column holds the URL."""
        for prop in _large_properties(row):
            name = f"{row['PartitionKey']}/{prop}-{secrets.token_hex(4).upper()}.json.gz"
            await self.container.upload(name, _compress(row[prop]))
            row[prop] = f"{self.container.url}/{quote(name, safe='/')}"

    async def fetch_instance_value(self, value: str | None) -> str | None:
        """Resolve an Instances column that may hold a blob URL."""
        name = self.blob_name_from_url(value)
        if name is None:
            return value
        return _decompress(await self.container.download(name))

    def blob_name_from_url(self, value: str | None) -> str | None:
        """The blob name if ``value`` is a URL into this container, else ``None``."""
        if not value or not value.startswith(("http://", "https://")):
            return None
        prefix = urlparse(self.container.url).path.rstrip("/") + "/"
        path = urlparse(value).path
        if not path.startswith(prefix):
            return None
        return unquote(path[len(prefix) :])

    # --- cleanup -------------------------------------------------------------------------

    async def delete_blobs(self, names: Iterable[str]) -> None:
        for name in names:
            await self.container.delete(name)

    async def delete_instance_blobs(self, instance_id: str) -> int:
        """Delete every blob of an instance; returns how many were deleted."""
        names = await self.container.list_names(escape_key(instance_id) + "/")
        await self.delete_blobs(names)
        return len(names)


def _large_properties(row: Mapping[str, Any]) -> list[str]:
    return [
        prop
        for prop in OFFLOADABLE_PROPERTIES
        if isinstance(row.get(prop), str) and utf16_size(row[prop]) > MAX_INLINE_PROPERTY_BYTES
    ]
