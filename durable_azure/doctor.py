"""Find and repair inconsistencies in a task hub: :func:`diagnose`, then :func:`fix`.

What :func:`diagnose` looks for (reference §10 lists the DTFx failures behind most of them):

* **Instances rows that disagree with their history** - the history says Completed,
  Failed or Terminated (or Suspended, or Running) and the row says otherwise; the row
  names an older execution than the history. This is DTFx's "Completed but stuck in
  Running" (durabletask#1252): a crash between checkpoint step 2 (history) and step 3
  (the row). *Fixed* by rewriting the row from the history, as the runner's own repair
  does (``EpisodeRunner._repair_instance_row``).
* **A lost start** - a Pending row older than ``stale_after`` whose execution has no
  history and whose ``ExecutionStarted`` is not in its control queue. Our client sends
  the message *before* writing the row, so this should not happen; it is DTFx's "stuck
  in Pending" (ext#1380 and friends) and what an external tool deleting messages
  leaves. *Fixed* by sending the start again - see :func:`fix` for why that is safe.
* **Old messages** - a queue whose oldest visible message is older than ``stale_after``
  (no worker is running, or the workers cannot keep up); control queues beyond the
  configured partition count that hold messages (a changed partition count strands
  them). Reported only.
* **Orphaned blobs** - large-payload blobs of an instance that has neither an Instances
  row nor history (left by a purge or a crash mid-write). *Fixed* by deleting them, when
  that is certainly safe (see :func:`fix`).
* **Partitions without a live owner** (``ExpiresAt`` in the past) when the hub has a
  ``{hub}Partitions`` table (a hub shared with DTFx), **poison records**, and **missing
  resources**. Reported only.

Nothing here trusts a snapshot when it writes: :func:`fix` reads the row and the history
again and writes the row only if it did not change since (If-Match on its ETag). Anything
ambiguous is reported with ``fixable=False`` and left alone.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from azure.core.exceptions import AzureError

from durable_azure import effects
from durable_azure.engine.history import (
    ExecutionResumed,
    ExecutionStarted,
    ExecutionSuspended,
    OrchestrationStatus,
)
from durable_azure.errors import NotFoundError
from durable_azure.hub import (
    all_control_queue_names,
    container_exists,
    format_duration,
    iso_time,
    read_partitions,
    read_queue,
    table_exists,
)
from durable_azure.storage import messages
from durable_azure.storage.codec import completion_of
from durable_azure.storage.messages import TaskMessage
from durable_azure.storage.names import (
    INSTANCE_ROW_KEY,
    MAX_MESSAGES_PER_RECEIVE,
    escape_key,
    unescape_key,
)
from durable_azure.storage.primitives import BlobContainer, Queue, QueueMessage
from durable_azure.storage.provider import AzureStorageProvider, Outbound
from durable_azure.storage.queries import InstanceQuery, iterate_instances
from durable_azure.storage.tracking import InstanceRecord, LoadedHistory

__all__ = [
    "DEFAULT_STALE_AFTER",
    "SETTLE_TIME",
    "Finding",
    "FindingKind",
    "Report",
    "diagnose",
    "fix",
]

logger = logging.getLogger(__name__)

#: How old a Pending row, a queued message or a blob must be before it counts as stuck.
DEFAULT_STALE_AFTER = timedelta(minutes=10)

#: A row is not reported as lagging its history until the history's newest event is this
#: old (or ``stale_after``, if shorter): a worker between checkpoint steps 2 and 3 is not
#: a crash. Steps 2 and 3 are milliseconds apart.
SETTLE_TIME = timedelta(seconds=30)

#: Instances whose history is read concurrently.
_CONCURRENCY = 16

#: Statuses of rows whose history is checked (terminal rows are not read).
_ACTIVE = (
    OrchestrationStatus.Pending,
    OrchestrationStatus.Running,
    OrchestrationStatus.Suspended,
    OrchestrationStatus.ContinuedAsNew,
)


class FindingKind(str, enum.Enum):
    """What a :class:`Finding` is about. The first three can be fixed."""

    #: The Instances row lags its history (fixable: rewritten from the history).
    ROW_LAGS_HISTORY = "row_lags_history"
    #: A Pending instance's start message is gone (fixable: sent again).
    START_LOST = "start_lost"
    #: Large-payload blobs of an instance with no row and no history (fixable: deleted).
    ORPHANED_BLOB = "orphaned_blob"
    #: A Pending instance is old and its start could not be found or ruled out.
    PENDING_STALE = "pending_stale"
    #: A rewind was requested (row Pending) but the history still ends Failed.
    REWIND_STALLED = "rewind_stalled"
    #: A Running/Suspended row with no history at all.
    ROW_WITHOUT_HISTORY = "row_without_history"
    #: A Pending row naming a new execution while the history runs another.
    EXECUTION_MISMATCH = "execution_mismatch"
    #: A queue's oldest visible message is older than ``stale_after``.
    OLD_MESSAGE = "old_message"
    #: A control queue beyond the configured partition count holds messages.
    STRANDED_QUEUE = "stranded_queue"
    #: A row of ``{hub}Partitions`` whose lease has expired or has no owner.
    PARTITION_UNOWNED = "partition_unowned"
    #: A message set aside in the poison container.
    POISON_RECORD = "poison_record"
    #: A queue, table or container of the hub does not exist.
    MISSING_RESOURCE = "missing_resource"


@dataclass(frozen=True)
class Finding:
    """One problem found by :func:`diagnose`.

    Attributes:
        kind: what kind of problem.
        subject: what it is about: an instance id, a queue, a blob or a resource name.
        message: one human sentence saying what is wrong (and what ``fix`` would do).
        fixable: :func:`fix` repairs it; ``False`` for what is reported only.
        instance_id, queue, blob: the instance, queue or blob concerned, where there is one.
        details: more facts (JSON types only), e.g. both statuses of a lagging row.
    """

    kind: FindingKind
    subject: str
    message: str
    fixable: bool = False
    instance_id: str | None = None
    queue: str | None = None
    blob: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "subject": self.subject,
            "message": self.message,
            "fixable": self.fixable,
            "instance_id": self.instance_id,
            "queue": self.queue,
            "blob": self.blob,
            "details": self.details,
        }

    def format(self) -> str:
        mark = "fixable" if self.fixable else "report only"
        return f"[{self.kind.value}] {self.message} ({mark})"


@dataclass(frozen=True)
class Report:
    """What :func:`diagnose` found in one task hub.

    Attributes:
        hub: the task hub name.
        checked_at: the time the checks were judged against (UTC).
        stale_after: the age after which something counts as stuck.
        findings: the problems, instances first, then queues, blobs, partitions, poison.
        instances_checked: active (non-terminal) instances whose history was read.
        queues_checked: queues looked at.
        blobs_checked: large-payload blobs looked at.
    """

    hub: str
    checked_at: datetime
    stale_after: timedelta
    findings: list[Finding]
    instances_checked: int = 0
    queues_checked: int = 0
    blobs_checked: int = 0

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def fixable(self) -> list[Finding]:
        return [f for f in self.findings if f.fixable]

    def of_kind(self, kind: FindingKind) -> list[Finding]:
        return [f for f in self.findings if f.kind is kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "hub": self.hub,
            "checked_at": iso_time(self.checked_at),
            "stale_after_seconds": self.stale_after.total_seconds(),
            "clean": self.clean,
            "instances_checked": self.instances_checked,
            "queues_checked": self.queues_checked,
            "blobs_checked": self.blobs_checked,
            "findings": [f.to_json() for f in self.findings],
        }

    def format(self) -> str:
        checked = (
            f"{self.instances_checked} active instances, {self.queues_checked} queues, "
            f"{self.blobs_checked} blobs checked"
        )
        if self.clean:
            return f"task hub {self.hub}: no problems found ({checked})"
        lines = [
            f"task hub {self.hub}: {len(self.findings)} problem(s), "
            f"{len(self.fixable)} fixable ({checked})"
        ]
        lines.extend(f"  {f.format()}" for f in self.findings)
        if self.fixable:
            lines.append("run the fix to repair the fixable ones; the others are left alone")
        return "\n".join(lines)


# --- reading queues ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Peeked:
    raw: QueueMessage
    message: TaskMessage | None  # None: unreadable
    blob: str | None  # the CompressedBlobName of a spilled message


@dataclass(frozen=True)
class _QueueView:
    """The visible messages of a queue, as far as one peek shows them."""

    visible: list[_Peeked]
    approximate_count: int

    @property
    def all_visible_seen(self) -> bool:
        """Fewer than a full peek came back: no visible message was left unseen."""
        return len(self.visible) < MAX_MESSAGES_PER_RECEIVE

    @property
    def all_seen(self) -> bool:
        """Every message (visible or not) was seen: nothing hidden, nothing beyond."""
        return self.all_visible_seen and self.approximate_count <= len(self.visible)

    def references_blob(self, name: str) -> bool:
        return any(p.blob == name for p in self.visible)

    def has_start(self, instance_id: str, execution_id: str | None) -> bool:
        return any(
            p.message is not None
            and isinstance(p.message.event, ExecutionStarted)
            and p.message.instance_id == instance_id
            and p.message.event.execution_id == execution_id
            for p in self.visible
        )


class _Views:
    """Queue views read at most once per diagnosis (or per fix)."""

    def __init__(self, provider: AzureStorageProvider) -> None:
        self.provider = provider
        self._views: dict[str, asyncio.Task[_QueueView | None]] = {}

    async def get(self, queue: Queue) -> _QueueView | None:
        """The view of ``queue``; ``None`` if the queue does not exist."""
        if queue.name not in self._views:
            self._views[queue.name] = asyncio.ensure_future(self._read(queue))
        return await self._views[queue.name]

    async def _read(self, queue: Queue) -> _QueueView | None:
        try:
            count = await queue.approximate_count()
            raw_messages = await queue.peek(MAX_MESSAGES_PER_RECEIVE)
        except NotFoundError:
            return None
        return _QueueView([await self._decode(raw) for raw in raw_messages], count)

    async def _decode(self, raw: QueueMessage) -> _Peeked:
        blob: str | None = None
        try:
            envelope = messages.parse_envelope(raw.content)
            blob = messages.blob_reference(envelope)
            if blob is not None:
                envelope = messages.parse_envelope(await self.provider.payloads.fetch_message(blob))
            return _Peeked(raw, messages.decode(envelope), blob)
        except Exception:  # unreadable or its blob is gone: the poison path deals with it
            return _Peeked(raw, None, blob)


# --- instances -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    """What the row and the history of one instance say together."""

    kind: FindingKind
    message: str
    fixable: bool
    details: dict[str, Any]
    update: dict[str, Any] | None = None  # ROW_LAGS_HISTORY: the columns to write


def _history_status(history: LoadedHistory) -> OrchestrationStatus:
    """The status the history implies: its completion's, else Suspended or Running."""
    completed = completion_of(history.events)
    if completed is not None:
        return completed.orchestration_status
    suspended = False
    for event in history.events:
        if isinstance(event, ExecutionSuspended):
            suspended = True
        elif isinstance(event, ExecutionResumed):
            suspended = False
    return OrchestrationStatus.Suspended if suspended else OrchestrationStatus.Running


def _older_than(moment: datetime | None, age: timedelta, now: datetime) -> bool:
    return moment is not None and moment + age <= now


def _pending_since(row: InstanceRecord) -> datetime | None:
    """When a Pending row last had reason to change: created, written or scheduled."""
    moments = [t for t in (row.created_time, row.last_updated_time, row.scheduled_start_time) if t]
    return max(moments) if moments else None


def _row_update(history: LoadedHistory, row: InstanceRecord, clock: datetime) -> dict[str, Any]:
    """The columns that bring ``row`` in line with ``history`` (as the runner writes them)."""
    status = _history_status(history)
    completed = completion_of(history.events)
    update: dict[str, Any] = {"RuntimeStatus": status.name, "LastUpdatedTime": clock}
    started = history.started
    if started is not None and row.execution_id != history.execution_id:
        # The row names an older execution (its continue-as-new row update was lost).
        update.update(
            {
                "Name": started.name,
                "Version": started.version or "",
                "Input": started.input,
                "CreatedTime": started.timestamp,
                "ExecutionId": started.execution_id,
                "Generation": started.generation or 0,
                "ParentInstanceId": (
                    started.parent_instance.instance_id if started.parent_instance else None
                ),
                "Output": None,
                "CompletedTime": None,
            }
        )
    if completed is not None:
        update["Output"] = effects.output_column(completed.result, completed.failure_details)
        update["CompletedTime"] = completed.timestamp
    return update


async def _judge_instance(
    provider: AzureStorageProvider,
    row: InstanceRecord,
    history: LoadedHistory,
    views: _Views,
    *,
    now: datetime,
    stale_after: timedelta,
    clock: datetime,
) -> _Verdict | None:
    """Compare one active row with its history (read after the row). ``None``: consistent."""
    iid = row.instance_id
    status = row.runtime_status
    settle = min(stale_after, SETTLE_TIME)
    last_event = history.events[-1].timestamp if history.events else None
    base: dict[str, Any] = {
        "row_status": status.name,
        "row_execution_id": row.execution_id,
        "history_execution_id": history.execution_id,
    }

    if status is OrchestrationStatus.Pending and (
        not history.started
        or (history.execution_id != row.execution_id and completion_of(history.events))
    ):
        # Not started yet (or a restart of a finished instance): where is the start?
        return await _judge_start(provider, row, views, now=now, stale_after=stale_after)

    if not history.started:
        if not _older_than(row.last_updated_time, stale_after, now):
            return None
        return _Verdict(
            FindingKind.ROW_WITHOUT_HISTORY,
            f"instance {iid!r} is {status.name} but has no history at all; left alone "
            "(nothing to rebuild the row from)",
            False,
            base,
        )

    expected = _history_status(history)
    if history.execution_id != row.execution_id:
        if status is OrchestrationStatus.Pending:
            if not _older_than(_pending_since(row), stale_after, now):
                return None
            return _Verdict(
                FindingKind.EXECUTION_MISMATCH,
                f"instance {iid!r} is Pending as execution {row.execution_id} while its "
                f"history runs execution {history.execution_id}; left alone",
                False,
                base,
            )
        # Running/Suspended rows are written only after their execution's history was
        # committed, so a history naming another execution was committed later: the row
        # lags (a continue-as-new whose row update was lost).
        if not _older_than(last_event, settle, now):
            return None
        return _Verdict(
            FindingKind.ROW_LAGS_HISTORY,
            f"instance {iid!r}: the Instances row names execution {row.execution_id} "
            f"({status.name}) but the history has moved on to execution "
            f"{history.execution_id} ({expected.name}); fix rewrites the row from the history",
            True,
            {**base, "history_status": expected.name},
            _row_update(history, row, clock),
        )

    if status is expected:
        return None
    completed = completion_of(history.events)
    if (
        status is OrchestrationStatus.Pending
        and completed is not None
        and completed.orchestration_status is OrchestrationStatus.Failed
        and row.last_updated_time is not None
        and row.last_updated_time >= completed.timestamp
    ):
        # The client wrote Pending after the failure: a rewind waiting for a worker.
        if not _older_than(row.last_updated_time, stale_after, now):
            return None
        return _Verdict(
            FindingKind.REWIND_STALLED,
            f"instance {iid!r} was asked to rewind {_ago(row.last_updated_time, now)} ago "
            "but its history still ends Failed (no worker ran the rewind); left alone",
            False,
            {**base, "history_status": expected.name},
        )
    if not _older_than(last_event, settle, now):
        return None
    cause = (
        " - a crash between the history write and the Instances write"
        if completed is not None
        else ""
    )
    return _Verdict(
        FindingKind.ROW_LAGS_HISTORY,
        f"instance {iid!r} is {status.name} in the Instances table but {expected.name} in "
        f"its history{cause}; fix rewrites the row from the history",
        True,
        {**base, "history_status": expected.name},
        _row_update(history, row, clock),
    )


async def _judge_start(
    provider: AzureStorageProvider,
    row: InstanceRecord,
    views: _Views,
    *,
    now: datetime,
    stale_after: timedelta,
) -> _Verdict | None:
    """A Pending row with no history for its execution: is its start message anywhere?"""
    iid = row.instance_id
    since = _pending_since(row)
    if not _older_than(since, stale_after, now):
        return None  # recent, or scheduled to start later
    queue = provider.control_queue_of(iid)
    view = await views.get(queue.queue)
    details: dict[str, Any] = {
        "row_status": row.runtime_status.name,
        "row_execution_id": row.execution_id,
        "control_queue": queue.name,
        "pending_since": iso_time(since),
    }
    if view is not None and view.has_start(iid, row.execution_id):
        return None  # it waits in its queue: reported as an old message if it is old
    age = _ago(since, now)
    if row.execution_id and view is not None and view.all_visible_seen:
        return _Verdict(
            FindingKind.START_LOST,
            f"instance {iid!r} has been Pending for {age} and its start message is not in "
            f"{queue.name} (no history either): the start was lost; fix sends it again "
            "from the Instances row (name, input, execution id)",
            True,
            details,
        )
    reason = (
        "the row names no execution id to start"
        if not row.execution_id
        else f"{queue.name} does not exist"
        if view is None
        else f"{queue.name} holds more messages than one peek shows; the start may be waiting there"
    )
    return _Verdict(
        FindingKind.PENDING_STALE,
        f"instance {iid!r} has been Pending for {age} with no history; left alone: {reason}",
        False,
        details,
    )


async def _check_instance(
    provider: AzureStorageProvider,
    instance_id: str,
    views: _Views,
    *,
    now: datetime,
    stale_after: timedelta,
    clock: datetime,
    row: InstanceRecord | None = None,
) -> tuple[InstanceRecord, _Verdict] | None:
    """Judge one instance; ``row`` is its row if just read (else it is read here).

    The row first, then the history: a worker that checkpoints in between leaves a newer
    history than the row (reported only once settled, and fixed with If-Match on the
    row's ETag), never a newer row than the history it is judged by.
    """
    if row is None:
        row = await provider.instances.get(instance_id)
    if row is None or row.runtime_status not in _ACTIVE:
        return None
    history = await provider.history.load(instance_id)
    verdict = await _judge_instance(
        provider, row, history, views, now=now, stale_after=stale_after, clock=clock
    )
    return None if verdict is None else (row, verdict)


# --- blobs ---------------------------------------------------------------------------------


async def _blob_times(container: BlobContainer, prefix: str) -> dict[str, datetime] | None:
    """Last-modified times of the blobs under ``prefix``; ``None`` when this container
    implementation cannot tell (only the Azure one can: the ``BlobContainer`` protocol
    lists names only)."""
    client = getattr(container, "_client", None)
    list_blobs = getattr(client, "list_blobs", None)
    if list_blobs is None:
        return None
    try:
        return {str(b.name): b.last_modified async for b in list_blobs(name_starts_with=prefix)}
    except AzureError:
        return None


async def _instance_exists(provider: AzureStorageProvider, key: str) -> bool:
    """An Instances row or any History row under the (escaped) key."""
    if await provider.instances.table.get(key, INSTANCE_ROW_KEY) is not None:
        return True
    rows, _ = await provider.history.table.query(partition_key=key, select=("RowKey",), page_size=1)
    return bool(rows)


async def _judge_blobs(
    provider: AzureStorageProvider,
    key: str,
    names: list[str],
    views: _Views,
    *,
    now: datetime,
    stale_after: timedelta,
) -> list[Finding]:
    """Findings for the blobs of one instance key (empty if the instance exists)."""
    if await _instance_exists(provider, key):
        return []
    instance_id = unescape_key(key)
    container = provider.payloads.container
    times = await _blob_times(container, key + "/")
    queues = [provider.control_queue_of(instance_id).queue, provider.work_items.queue]
    queue_views = [await views.get(q) for q in queues]
    findings: list[Finding] = []
    for name in names:
        modified = times.get(name) if times is not None else None
        if times is not None and modified is None:
            continue  # deleted since it was listed
        if any(v is not None and v.references_blob(name) for v in queue_views):
            continue  # a queued message still needs it
        is_message = name[len(key) + 1 :].startswith("message-")
        reason = ""
        if modified is None:
            reason = "its age is unknown"
        elif not _older_than(modified, stale_after, now):
            continue  # young: a write may be in progress
        elif is_message and not all(v is not None and v.all_seen for v in queue_views):
            # A hidden or unseen message (a parked start, a backlog) could still need it.
            reason = "its queues hold messages this check cannot see"
        findings.append(
            Finding(
                FindingKind.ORPHANED_BLOB,
                name,
                f"blob {name!r} belongs to instance {instance_id!r}, which has no Instances "
                "row and no history"
                + (f"; left alone: {reason}" if reason else "; fix deletes it"),
                fixable=not reason,
                instance_id=instance_id,
                blob=name,
                details={"last_modified": iso_time(modified)},
            )
        )
    return findings


# --- diagnose ------------------------------------------------------------------------------

_T = TypeVar("_T")


async def _bounded(aws: Iterable[Awaitable[_T]], limit: int = _CONCURRENCY) -> list[_T]:
    semaphore = asyncio.Semaphore(limit)

    async def run(aw: Awaitable[_T]) -> _T:
        async with semaphore:
            return await aw

    return list(await asyncio.gather(*(run(aw) for aw in aws)))


async def diagnose(
    provider: AzureStorageProvider,
    *,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    now: datetime | None = None,
) -> Report:
    """Check the provider's task hub for the problems listed in this module's docstring.

    Reads only; nothing is changed. Cost: one Instances query over the active
    (non-terminal) instances plus one History query each, a peek of every queue, a
    listing of the large-message container (plus two point reads per instance key that
    has blobs), and the Partitions table if there is one.

    Args:
        provider: the task hub.
        stale_after: how old a Pending row, a queued message or a blob must be to count as
            stuck or orphaned.
        now: judge ages as of this time (default: now, UTC) - "as if checked later".
            Partition leases are always judged by the real clock.

    Returns:
        The :class:`Report`; ``report.clean`` when nothing was found.
    """
    clock = datetime.now(UTC)
    now = now or clock
    names = provider.names
    views = _Views(provider)
    findings: list[Finding] = []

    # Resources.
    tables = [provider.history.table, provider.instances.table]
    containers = [provider.payloads.container, provider.poison.container]
    table_found = await asyncio.gather(*(table_exists(t) for t in tables))
    container_found = await asyncio.gather(*(container_exists(c) for c in containers))
    missing = [t.name for t, ok in zip(tables, table_found, strict=True) if not ok]
    missing += [c.name for c, ok in zip(containers, container_found, strict=True) if not ok]

    # Queues: the configured ones, and control queues beyond the partition count.
    configured = [*names.control_queues, names.work_item_queue]
    extra = all_control_queue_names(names)[names.partition_count :]
    infos = await asyncio.gather(
        *(read_queue(provider.account.queue(n), now) for n in [*configured, *extra])
    )
    queues_checked = 0
    queue_findings: list[Finding] = []
    for info in infos:
        if not info.exists:
            if info.name in configured:
                missing.append(info.name)
            continue
        queues_checked += 1
        if info.name in extra and info.approximate_count > 0:
            queue_findings.append(
                Finding(
                    FindingKind.STRANDED_QUEUE,
                    info.name,
                    f"{info.name} holds ~{info.approximate_count} message(s) but the hub is "
                    f"configured with {names.partition_count} partitions, so no worker reads "
                    "it (was the partition count changed?)",
                    queue=info.name,
                    details={"approximate_count": info.approximate_count},
                )
            )
        elif info.oldest_age_seconds is not None and info.oldest_age_seconds >= (
            stale_after.total_seconds()
        ):
            view = await views.get(provider.account.queue(info.name))
            first = view.visible[0].message if view and view.visible else None
            about = f" (for instance {first.instance_id!r})" if first else ""
            queue_findings.append(
                Finding(
                    FindingKind.OLD_MESSAGE,
                    info.name,
                    f"{info.name}: the oldest visible message{about} has waited "
                    f"{format_duration(info.oldest_age_seconds)} (~{info.approximate_count} "
                    "message(s) queued); is a worker running and keeping up?",
                    queue=info.name,
                    instance_id=first.instance_id if first else None,
                    details={
                        "approximate_count": info.approximate_count,
                        "oldest_age_seconds": info.oldest_age_seconds,
                        "oldest_inserted_on": iso_time(info.oldest_inserted_on),
                    },
                )
            )
    for name in missing:
        findings.append(
            Finding(
                FindingKind.MISSING_RESOURCE,
                name,
                f"{name} does not exist; create the task hub (nothing else is checked "
                "where it is missing)",
                details={"resource": name},
            )
        )

    # Instances and their histories.
    instances_checked = 0
    if provider.instances.table.name not in missing and provider.history.table.name not in missing:
        rows = [
            record
            async for record in iterate_instances(
                provider, InstanceQuery(runtime_status=_ACTIVE), include_input=False
            )
        ]
        instances_checked = len(rows)
        results = await _bounded(
            _check_instance(
                provider, r.instance_id, views, now=now, stale_after=stale_after, clock=clock, row=r
            )
            for r in rows
        )
        for result in results:
            if result is None:
                continue
            row, verdict = result
            findings.append(
                Finding(
                    verdict.kind,
                    row.instance_id,
                    verdict.message,
                    fixable=verdict.fixable,
                    instance_id=row.instance_id,
                    details=verdict.details,
                )
            )
    findings.extend(queue_findings)

    # Blobs of instances that are gone.
    blobs_checked = 0
    if not {provider.payloads.container.name, *(t.name for t in tables)} & set(missing):
        blob_names = await provider.payloads.container.list_names()
        blobs_checked = len(blob_names)
        by_key: dict[str, list[str]] = {}
        for blob in blob_names:
            key, sep, _ = blob.partition("/")
            if sep:
                by_key.setdefault(key, []).append(blob)
        for blob_findings in await _bounded(
            _judge_blobs(provider, key, blobs, views, now=now, stale_after=stale_after)
            for key, blobs in by_key.items()
        ):
            findings.extend(blob_findings)

    # Partition leases ({hub}Partitions), judged by the real clock, not ``now``: a live
    # worker renews its leases, so "as if checked later" says nothing about them.
    for partition in await read_partitions(provider) or []:
        if partition.live(clock):
            continue
        owner = partition.current_owner or "nobody"
        expiry = (
            f"its lease expired {_ago(partition.expires_at, clock)} ago"
            if partition.current_owner and partition.expires_at is not None
            else "it has no owner (released, or never claimed: is any worker running?)"
        )
        findings.append(
            Finding(
                FindingKind.PARTITION_UNOWNED,
                partition.queue,
                f"partition {partition.queue} has no live owner: owned by {owner}, {expiry}"
                + (f", next owner {partition.next_owner}" if partition.next_owner else ""),
                queue=partition.queue,
                details=partition.to_json(),
            )
        )

    # Poison records.
    if provider.poison.container.name not in missing:
        for record in await provider.poison.container.list_names():
            queue, _, _ = record.partition("/")
            findings.append(
                Finding(
                    FindingKind.POISON_RECORD,
                    record,
                    f"poison record {record}: a message from {queue} was set aside after "
                    "failing repeatedly; see `durable-azure poison list`",
                    queue=queue or None,
                    blob=record,
                )
            )

    return Report(
        hub=names.hub,
        checked_at=now,
        stale_after=stale_after,
        findings=findings,
        instances_checked=instances_checked,
        queues_checked=queues_checked,
        blobs_checked=blobs_checked,
    )


# --- fix -----------------------------------------------------------------------------------


async def fix(provider: AzureStorageProvider, report: Report) -> list[str]:
    """Repair the report's fixable findings; returns one sentence per finding handled.

    Every finding is judged again first, on fresh reads, as of ``report.checked_at`` or
    later (staleness only grows with time), and skipped - with a sentence saying so - if it
    no longer holds:

    * **row lags history**: the row is rewritten from the history (status, output,
      completed time; the execution's columns if the row named an older execution), with
      If-Match on the row's ETag just read, so a worker writing the row meanwhile wins.
    * **start lost**: the ``ExecutionStarted`` is sent again, rebuilt from the Pending row:
      its name, its input (fetched from its blob if it was offloaded), its execution id,
      generation and scheduled start. Re-sending beats failing the instance: the row holds
      everything the start carried (the client writes it from the same values), the
      caller's work is done rather than lost, and re-sending is idempotent - the runner
      accepts a start whose execution the row names and deletes any second copy as a
      duplicate (same execution already in history, or one execution per episode), so a
      start that was merely hidden cannot run twice. It is only judged lost when its
      control queue shows fewer messages than one peek can return and none is it.
    * **orphaned blob**: deleted, after checking again that the instance has no row and
      no history, that no visible message names the blob, and - for a queue-message blob -
      that its queues hold nothing this check cannot see.

    Report-only findings are ignored.
    """
    clock = datetime.now(UTC)
    now = max(report.checked_at, clock)
    views = _Views(provider)
    done: list[str] = []
    for finding in report.findings:
        if not finding.fixable:
            continue
        if finding.kind is FindingKind.ORPHANED_BLOB and finding.blob and finding.instance_id:
            done.append(
                await _fix_blob(provider, finding.instance_id, finding.blob, views, now, report)
            )
        elif finding.instance_id is not None and finding.kind in (
            FindingKind.ROW_LAGS_HISTORY,
            FindingKind.START_LOST,
        ):
            done.append(
                await _fix_instance(provider, finding, views, now=now, report=report, clock=clock)
            )
    return done


async def _fix_instance(
    provider: AzureStorageProvider,
    finding: Finding,
    views: _Views,
    *,
    now: datetime,
    report: Report,
    clock: datetime,
) -> str:
    iid = finding.instance_id
    assert iid is not None
    checked = await _check_instance(
        provider, iid, views, now=now, stale_after=report.stale_after, clock=clock
    )
    if checked is None or checked[1].kind is not finding.kind:
        return f"left {iid!r} alone: it no longer shows the problem ({finding.kind.value})"
    row, verdict = checked
    if verdict.kind is FindingKind.ROW_LAGS_HISTORY:
        assert verdict.update is not None
        values = {"PartitionKey": escape_key(iid), **verdict.update}
        await provider.payloads.offload_instance_row(values)
        del values["PartitionKey"]
        if not await provider.instances.merge_if_unchanged(iid, values, etag=row.etag):
            return f"left {iid!r} alone: its Instances row changed while it was being fixed"
        logger.warning(
            "doctor rewrote the instance row of %s: %s -> %s",
            iid,
            row.runtime_status.name,
            verdict.update["RuntimeStatus"],
            extra={"instance_id": iid},
        )
        return (
            f"rewrote the Instances row of {iid!r} from its history: "
            f"{row.runtime_status.name} -> {verdict.update['RuntimeStatus']}"
        )
    # START_LOST
    assert row.execution_id is not None
    input_text = await provider.payloads.fetch_instance_value(row.input)
    start = ExecutionStarted(
        timestamp=row.created_time or clock,
        name=row.name,
        instance_id=iid,
        execution_id=row.execution_id,
        input=input_text,
        generation=row.generation,
        scheduled_start_time=row.scheduled_start_time,
    )
    await provider.send(
        Outbound(TaskMessage(event=start, instance_id=iid, execution_id=row.execution_id))
    )
    logger.warning(
        "doctor re-sent the lost start of %s (execution %s)",
        iid,
        row.execution_id,
        extra={"instance_id": iid},
    )
    return (
        f"sent the lost start of {iid!r} again (orchestrator {row.name!r}, execution "
        f"{row.execution_id}) to {provider.control_queue_of(iid).name}"
    )


async def _fix_blob(
    provider: AzureStorageProvider,
    instance_id: str,
    blob: str,
    views: _Views,
    now: datetime,
    report: Report,
) -> str:
    key = escape_key(instance_id)
    again = await _judge_blobs(
        provider, key, [blob], views, now=now, stale_after=report.stale_after
    )
    if not any(f.fixable and f.blob == blob for f in again):
        return f"left blob {blob!r} alone: it is no longer certainly orphaned"
    await provider.payloads.container.delete(blob)
    return f"deleted orphaned blob {blob!r} (instance {instance_id!r} has no row and no history)"


# --- helpers -------------------------------------------------------------------------------


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "an unknown time"
    return format_duration(max(0.0, (now - moment).total_seconds()))
