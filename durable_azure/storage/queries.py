"""Querying the Instances table: filters, paging and counts (reference §3, "Queries").

A query is an :class:`InstanceQuery`; every filter is applied by the service:

* ``runtime_status`` -> ``(RuntimeStatus eq 'A' or RuntimeStatus eq 'B' ...)``;
* ``created_time_from`` / ``created_time_to`` -> ``CreatedTime ge`` / ``CreatedTime le``
  (both ends inclusive, as in DTFx);
* ``instance_id_prefix`` -> ``PartitionKey ge p and PartitionKey lt p'`` where ``p`` is the
  *escaped* prefix and ``p'`` is ``p`` with its last character incremented
  (:func:`key_prefix_range`);
* ``name`` -> ``Name eq '...'`` (exact orchestration name);
* always ``RowKey eq ''``, so only instance rows come back.

Escaping maps each character of an id to a fixed code word (``/`` -> ``^0``, ``^`` -> ``^^``
...) and no code word is a prefix of another, so an id starts with a prefix exactly when its
escaped key starts with the escaped prefix - also when the prefix ends in an escaped
character. The key range can still hold keys that do not start with ``p`` in two corner cases
(see :func:`key_prefix_range`), so rows are also checked with ``startswith`` after they
arrive; a page can therefore hold fewer than ``page_size`` rows (the service may return short
pages anyway) - always follow the continuation until it is ``None``.

Continuation tokens are the table's own (the next PartitionKey/RowKey to read): opaque
strings that can be stored and handed back later, even by another process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from durable_azure.engine.history import OrchestrationStatus
from durable_azure.errors import ConfigurationError
from durable_azure.storage.names import INSTANCE_ROW_KEY, escape_key, unescape_key
from durable_azure.storage.primitives import AnyOf, Clause, Cmp, Entity, Op
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.storage.tracking import InstanceRecord

__all__ = [
    "MAX_PAGE_SIZE",
    "InstanceQuery",
    "count_instances",
    "iterate_instances",
    "key_prefix_range",
    "query_instances",
]

#: The largest page the service returns (its ``$top`` limit).
MAX_PAGE_SIZE = 1000

#: The Instances columns a query reads when inputs are not wanted (``Input`` left out).
_COLUMNS_WITHOUT_INPUT = (
    "Name",
    "Version",
    "ExecutionId",
    "Output",
    "CustomStatus",
    "RuntimeStatus",
    "CreatedTime",
    "LastUpdatedTime",
    "CompletedTime",
    "Generation",
    "Tags",
    "TaskHubName",
)


@dataclass(frozen=True)
class InstanceQuery:
    """Which instances a query, count or purge covers. Every filter given must hold.

    Attributes:
        runtime_status: any of these statuses (empty: any status). Names (``"Running"``)
            are accepted and converted.
        created_time_from: ``CreatedTime`` at or after this (timezone-aware).
        created_time_to: ``CreatedTime`` at or before this (timezone-aware).
        instance_id_prefix: instance ids starting with this (non-empty; unescaped text).
        name: the exact orchestration name.

    Raises:
        ConfigurationError: a naive datetime, ``created_time_from`` after
            ``created_time_to``, an empty prefix or name, or an unknown status.
    """

    runtime_status: tuple[OrchestrationStatus, ...] = ()
    created_time_from: datetime | None = None
    created_time_to: datetime | None = None
    instance_id_prefix: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "runtime_status", parse_statuses(self.runtime_status))
        for label in ("created_time_from", "created_time_to"):
            value = getattr(self, label)
            if value is None:
                continue
            if not isinstance(value, datetime):
                raise ConfigurationError(f"{label} must be a datetime, got {value!r}")
            if value.tzinfo is None or value.utcoffset() is None:
                raise ConfigurationError(
                    f"{label} must be timezone-aware (e.g. datetime.now(timezone.utc)), "
                    f"got the naive {value!r}"
                )
            object.__setattr__(self, label, value.astimezone(UTC))
        start, end = self.created_time_from, self.created_time_to
        if start is not None and end is not None and start > end:
            raise ConfigurationError(
                f"created_time_from ({start.isoformat()}) is after created_time_to "
                f"({end.isoformat()})"
            )
        if self.instance_id_prefix is not None:
            _check_text("instance_id_prefix", self.instance_id_prefix)
        if self.name is not None:
            _check_text("name", self.name)

    def where(self) -> list[Clause]:
        """The table filter clauses of this query (``RowKey eq ''`` first)."""
        clauses: list[Clause] = [Cmp("RowKey", Op.EQ, INSTANCE_ROW_KEY)]
        if self.instance_id_prefix is not None:
            lower, upper = key_prefix_range(escape_key(self.instance_id_prefix))
            clauses.append(Cmp("PartitionKey", Op.GE, lower))
            if upper is not None:
                clauses.append(Cmp("PartitionKey", Op.LT, upper))
        if self.runtime_status:
            clauses.append(
                AnyOf(tuple(Cmp("RuntimeStatus", Op.EQ, s.name) for s in self.runtime_status))
            )
        if self.created_time_from is not None:
            clauses.append(Cmp("CreatedTime", Op.GE, self.created_time_from))
        if self.created_time_to is not None:
            clauses.append(Cmp("CreatedTime", Op.LE, self.created_time_to))
        if self.name is not None:
            clauses.append(Cmp("Name", Op.EQ, self.name))
        return clauses

    def matches_key(self, partition_key: str) -> bool:
        """The client-side half of the prefix filter: the key starts with the escaped prefix."""
        if self.instance_id_prefix is None:
            return True
        return partition_key.startswith(escape_key(self.instance_id_prefix))


def parse_statuses(values: Iterable[OrchestrationStatus | str]) -> tuple[OrchestrationStatus, ...]:
    """Statuses given as members or names (``"Running"``), checked and de-duplicated.

    Raises:
        ConfigurationError: an unknown status name.
    """
    if isinstance(values, (str, OrchestrationStatus)):
        values = (values,)
    out: list[OrchestrationStatus] = []
    for value in values:
        if isinstance(value, OrchestrationStatus):
            status = value
        elif isinstance(value, str) and value in OrchestrationStatus.__members__:
            status = OrchestrationStatus[value]
        else:
            known = ", ".join(OrchestrationStatus.__members__)
            raise ConfigurationError(f"unknown runtime status {value!r} (known: {known})")
        if status not in out:
            out.append(status)
    return tuple(out)


def _check_text(label: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{label} must be a non-empty string, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{label} {value!r} is not valid Unicode text") from None


# Characters whose successor is not a safe exclusive upper bound in both string orders
# in play: code-point order (the memory tables) and UTF-16 code-unit order (the service,
# Azurite). U+D7FF is followed by the surrogates (no valid string holds one alone),
# U+FFFF's successor U+10000 is written as surrogates, which sort *below* U+E000-U+FFFF
# in UTF-16, and U+10FFFF has no successor at all.
_NO_SAFE_SUCCESSOR = frozenset({0xD7FF, 0xFFFF, 0x10FFFF})


def key_prefix_range(escaped_prefix: str) -> tuple[str, str | None]:
    """The key range ``[lower, upper)`` holding every key that starts with ``escaped_prefix``.

    ``upper`` is the prefix with its last character incremented (DTFx's ``p'``). When that
    character has no safe successor (see ``_NO_SAFE_SUCCESSOR``), it is dropped and the one
    before is incremented instead; the range then also holds some keys that do not start
    with the prefix, which callers filter out (:meth:`InstanceQuery.matches_key`).
    ``upper`` is ``None`` when no character can be incremented (no upper bound).

    The escaped prefix is made of whole escape sequences, so incrementing its last
    character never splits one: for ``a/`` (escaped ``a^0``) the range is
    ``['a^0', 'a^1')``, which holds ``a/x`` (``a^0x``) but not ``a^0`` (``a^^0``).
    """
    chars = list(escaped_prefix)
    while chars:
        last = ord(chars[-1])
        if last not in _NO_SAFE_SUCCESSOR:
            chars[-1] = chr(last + 1)
            return escaped_prefix, "".join(chars)
        chars.pop()
    return escaped_prefix, None


def _record(entity: Entity) -> InstanceRecord:
    return InstanceRecord.from_entity(unescape_key(entity.partition_key), entity)


async def query_page(
    provider: AzureStorageProvider,
    query: InstanceQuery,
    *,
    select: Sequence[str] | None,
    page_size: int,
    continuation: str | None,
) -> tuple[list[Entity], str | None]:
    """One page of matching Instances entities (the building block of this module and of
    :mod:`durable_azure.storage.purge`)."""
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ConfigurationError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
    entities, token = await provider.instances.table.query(
        where=query.where(), select=select, page_size=page_size, continuation=continuation
    )
    return [e for e in entities if query.matches_key(e.partition_key)], token


async def query_instances(
    provider: AzureStorageProvider,
    query: InstanceQuery,
    *,
    page_size: int = 100,
    continuation: str | None = None,
    include_input: bool = True,
) -> tuple[list[InstanceRecord], str | None]:
    """One page of the instances matching ``query``, in PartitionKey (escaped id) order.

    Args:
        provider: the task hub.
        query: the filters.
        page_size: at most this many instances (the service's ``$top``; up to 1000).
        continuation: the token returned with the previous page, or ``None`` to start.
        include_input: read the ``Input`` column too (``False`` leaves ``record.input``
            ``None``, saving the transfer of large inputs).

    Returns:
        The page and the token for the next one (``None`` when there is no more). A page
        may be shorter than ``page_size``, even empty, while the token is not ``None``.
        Large ``Input``/``Output`` values hold blob URLs; resolve them with
        ``provider.payloads.fetch_instance_value``.

    Raises:
        ConfigurationError: ``page_size`` is outside 1..1000.
        ValueError: ``continuation`` is not a token from this function.
        NotFoundError: the task hub's Instances table does not exist.
    """
    select = None if include_input else _COLUMNS_WITHOUT_INPUT
    entities, token = await query_page(
        provider, query, select=select, page_size=page_size, continuation=continuation
    )
    return [_record(e) for e in entities], token


async def iterate_instances(
    provider: AzureStorageProvider,
    query: InstanceQuery,
    *,
    page_size: int = 100,
    include_input: bool = True,
) -> AsyncIterator[InstanceRecord]:
    """Every instance matching ``query``, reading ``page_size`` at a time.

    See :func:`query_instances` for the arguments and errors.
    """
    continuation: str | None = None
    while True:
        records, continuation = await query_instances(
            provider,
            query,
            page_size=page_size,
            continuation=continuation,
            include_input=include_input,
        )
        for record in records:
            yield record
        if continuation is None:
            return


async def count_instances(provider: AzureStorageProvider, query: InstanceQuery) -> dict[str, int]:
    """How many instances match ``query``, per runtime status name.

    Only ``RuntimeStatus`` is read (plus the keys). Statuses with no instance are left out;
    a row without ``RuntimeStatus`` counts as ``Pending`` (as :class:`InstanceRecord` reads
    it). The keys are in :class:`OrchestrationStatus` order.

    Raises:
        NotFoundError: the task hub's Instances table does not exist.
    """
    counts: dict[str, int] = {}
    continuation: str | None = None
    while True:
        entities, continuation = await query_page(
            provider,
            query,
            select=("RuntimeStatus",),
            page_size=MAX_PAGE_SIZE,
            continuation=continuation,
        )
        for entity in entities:
            status = str(entity.get("RuntimeStatus") or OrchestrationStatus.Pending.name)
            counts[status] = counts.get(status, 0) + 1
        if continuation is None:
            break
    order = {name: index for index, name in enumerate(OrchestrationStatus.__members__)}
    return dict(sorted(counts.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
