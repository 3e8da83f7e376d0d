"""Which worker reads which control queue: the ``{hub}Partitions`` table partition manager.

This is DTFx's table partition manager ("V3", the default of ``DurableTask.AzureStorage``;
reference ``dtfx-azure-storage.md`` §6.1), re-implemented from its description. The table
has one row per control queue: PartitionKey ``""``, RowKey the queue's name, and the
columns ``CurrentOwner``, ``NextOwner`` (worker ids), ``OwnedSince``, ``LastRenewal``,
``ExpiresAt`` (UTC date-times) and ``IsDraining`` (bool). Null columns are not written, as
the .NET SDK omits them, so rows read the same whichever implementation wrote them. One
column is ours: ``WakeAddress`` (``"host:port"``), where the owner listens for wake-up
datagrams (:mod:`durable_azure.wake`); written on claim and renewal by a manager given one,
cleared on release. DTFx ignores it (and drops it when a .NET worker rewrites the row).

Every worker runs a :class:`PartitionManager`. One :meth:`PartitionManager.step` reads
all rows once and applies these rules; every write is a Replace with If-Match on the ETag
just read, so of two workers acting on one row only the first succeeds and the other
(412) re-reads at once:

* **claim** a row that is empty, expired (``now >= ExpiresAt``), or handed to me
  (no ``CurrentOwner``, ``NextOwner`` = me): ``CurrentOwner`` = me, ``ExpiresAt`` = now +
  ``claim_duration``;
* **renew** my rows: ``ExpiresAt`` = now + ``lease_interval`` (DTFx renews at every
  iteration; here a row is renewed once half of ``renew_interval`` has passed, so the
  1-second steps of a hand-over do not rewrite every row every second);
* **hand over** a row of mine whose ``NextOwner`` someone set: mark it ``IsDraining``,
  report it as draining, keep renewing; once the worker has drained it
  (:meth:`PartitionManager.mark_drained`) or ``drain_timeout`` passed, **release** it
  (``CurrentOwner`` = null); the next owner claims it on its next step;
* **take over** from a worker that is shutting down (``IsDraining``, no ``NextOwner``):
  set ``NextOwner`` = me;
* **balance**: with ``average = floor(rows / (other live owners + 1))``, a worker owning
  at most the average asks each worker owning more than the average for
  ``min(average - mine, their excess)`` rows (one if that is 0 but they exceed the average
  by more than one), by setting ``NextOwner`` on them. Nothing is ever taken by force, so
  a queue is handed over only after its old owner has drained it.

Ownership is fenced by time. A worker believes it owns a queue
(:attr:`~PartitionManager.owned`, :meth:`~PartitionManager.owns`) only after its claim or
renewal was written and only while the clock is before the ``ExpiresAt`` it wrote; it stops
believing before it writes a release. Another worker can claim the row only once it is
released or expired by its own clock. So when clocks agree, two workers never believe they
own one queue at the same time, even if one of them stalls without stepping (its belief
simply lapses).

Fewer requests when nothing changes
-----------------------------------
An idle worker's steps are mostly renewals, so two things keep them cheap:

* **One transaction renews them all.** The rows due for renewal are renewed in one
  entity-group transaction (they share the PartitionKey ``""``), each op a Replace with
  If-Match on the row's ETag, so it is exactly the per-row writes, sent as one request.
  When it fails with a 412 (someone wrote one of the rows, e.g. set ``NextOwner``; the
  transaction then wrote nothing), the step falls back: it re-reads the table and applies
  the rules row by row with single writes, as above. Renewals are batched only when the
  previous step was *steady* (changed nothing, failed nothing, asked for nothing, nothing
  draining or awaited); right after a change, when a conflict is likeliest, rows are
  written one by one.
* **A steady step need not read.** Everything the read would show that concerns this
  worker's own rows changes their ETags, so a successful If-Match renewal already proves
  that nobody asked for them, took them, or marked them. The read is needed only to see
  other workers' rows: ones released or expired (to claim), and ones to balance against.
  So after a steady step, the next step renews from the rows as last read and written,
  without a query, unless a full read is due: at least every ``idle_read_interval``; as
  soon as a row of another worker reaches the ``ExpiresAt`` last read (so a dead worker's
  rows are claimed as promptly as before: at the first step after they expire); and
  always when this worker owns nothing, drains, waits for a row, shuts down, failed in
  the previous step, or has a lease lapsed. The cost: a row *released* by a worker that
  stopped gracefully, or a new worker's share, is noticed up to ``idle_read_interval``
  later (never later than the released row's last ``ExpiresAt``);
  :meth:`PartitionManager.request_read` makes the next step read at once. A worker that
  owns *every* row skips the periodic read altogether: there is no other worker's row to
  see, and a newcomer's request (``NextOwner``) changes the ETag of a row it owns, so its
  next renewal fails with a 412 and the step reads.

With the defaults, a lone idle worker owning all 4 rows makes 360 table requests an hour
(one batch per 10-s step) instead of 1,800 (a query and 4 writes per step); a worker that
shares the table with others also reads every 30 s (480 an hour).

Worker integration (the contract)
---------------------------------
The worker creates the rows once (:meth:`~PartitionManager.create_rows`, idempotent) and
runs :meth:`~PartitionManager.run` as a background task (or calls
:meth:`~PartitionManager.step` itself). Each :class:`PartitionChanges` it is handed is
relative to the previous one, and must be applied in this order:

1. ``lost`` and ``released``: stop the poller of these queues at once. ``lost`` means
   the lease lapsed or another worker became the owner without a hand-over (e.g. this
   worker stalled past ``ExpiresAt``); ``released`` means this worker handed the queue over
   (after :meth:`~PartitionManager.mark_drained`, or forcibly after ``drain_timeout``).
   Episodes of these queues still running must not be trusted to own the queue; their
   checkpoints are guarded by the history sentinel ETag anyway.
2. ``draining``: stop *receiving* from these queues, let the episodes already received
   from them finish (and abandon anything buffered), then call
   ``mark_drained(queue)``. The manager keeps renewing the lease meanwhile, releases it on
   its next step (run() wakes at once), and reports it in ``released``.
3. ``acquired``: start the poller of these queues.

Before every receive from a control queue the poller should also check
:meth:`~PartitionManager.may_receive` (owned, lease not lapsed, not draining): that is a
local clock comparison, and it closes the window in which a stalled partition loop lets a
lease lapse before the loss is reported.

Shutdown: set the ``stop_event`` given to :meth:`~PartitionManager.run`. It then stops
claiming, marks every owned row ``IsDraining`` (other workers line up as ``NextOwner``),
reports them all as ``draining``, releases each as the worker calls ``mark_drained`` (or at
``drain_timeout``), and returns when nothing is owned. A worker that drains on its own can
instead stop the loop and call :meth:`~PartitionManager.release_all`, which releases every
owned row at once so others claim it on their next step. Cancelling ``run()`` is a hard
stop: the leases then expire, and others take them at their first step after ``ExpiresAt``
(at most ``lease_interval`` after the last renewal, ``claim_duration`` after a claim).
``worker_id`` must be unique per process (:func:`new_worker_id`). Give the manager the
worker's wake-up address (``wake_address``, from a started
:class:`~durable_azure.wake.WakeListener`) to have it published in the rows it owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta

from durable_azure import logevents as ev
from durable_azure.errors import (
    AlreadyExistsError,
    ConditionFailedError,
    StorageError,
    TransactionFailedError,
)
from durable_azure.storage.names import TaskHubNames
from durable_azure.storage.primitives import (
    MAX_TRANSACTION_OPS,
    Entity,
    StorageAccount,
    Table,
    TableOp,
    TableOpKind,
    TableValue,
    UpdateMode,
)

__all__ = [
    "LeaseOptions",
    "PartitionChanges",
    "PartitionLease",
    "PartitionManager",
    "new_worker_id",
]

logger = logging.getLogger(__name__)

#: The PartitionKey of every row of the partitions table.
PARTITION_KEY = ""

#: After this many consecutive failed steps, run() stops retrying at once (DTFx: 10).
MAX_IMMEDIATE_RETRIES = 10

#: A row is renewed once this fraction of ``renew_interval`` has passed since its last
#: renewal, so a step that comes a little early (timer jitter) still renews.
_RENEW_AT = 0.5


def _utc_now() -> datetime:
    return datetime.now(UTC)


def new_worker_id() -> str:
    """A worker id unique to this process: ``host-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseOptions:
    """Timings of the partition manager, in seconds (DTFx defaults).

    Attributes:
        lease_interval: how long a renewal keeps a row (DTFx ``LeaseInterval``, 30 s).
        renew_interval: how often owned rows are renewed (``LeaseRenewInterval``, 10 s): a
            step renews a row once half of this has passed since its last renewal, and
            :meth:`PartitionManager.run` steps at least this often. At most half of
            ``lease_interval`` and ``claim_duration``, so one late step does not lose a row.
            That limit is safe: ``renew_interval=15`` with ``lease_interval=30`` (set
            ``acquire_interval=15`` too, or the loop still steps, and renews, every 10 s)
            leaves a whole renewal period of margin: a renewal that fails is retried at
            once, and a worker that cannot renew for 15 s more stops believing it owns the
            row when the lease runs out, before anyone else may claim it. Ownership is
            fenced by ``ExpiresAt``, so a longer interval only delays failover, never
            makes two owners.
        acquire_interval: the loop's period when nothing is changing
            (``LeaseAcquireInterval``, 10 s).
        claim_duration: the lease a claim writes (DTFx hard-codes 1 minute).
        drain_timeout: the longest a hand-over waits for :meth:`PartitionManager.mark_drained`
            before releasing anyway (60 s).
        busy_interval: the loop's period while draining or waiting for a row (1 s).
        operation_timeout: the longest one step may take in :meth:`PartitionManager.run`
            (``PartitionTableOperationTimeout``, 2 s); a step cut short is retried at once.
        idle_read_interval: in a steady state (nothing changing), how long steps may renew
            without reading the table (30 s); see "Fewer requests" in the module docstring.
            A released row, or a new worker's request for a share, is noticed up to this
            much later. Set it to at most the step interval to read at every step (DTFx).
    """

    lease_interval: float = 30.0
    renew_interval: float = 10.0
    acquire_interval: float = 10.0
    claim_duration: float = 60.0
    drain_timeout: float = 60.0
    busy_interval: float = 1.0
    operation_timeout: float = 2.0
    idle_read_interval: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{f.name} must be a positive number of seconds, got {value!r}")
        for name in ("lease_interval", "claim_duration"):
            if self.renew_interval * 2 > getattr(self, name):
                raise ValueError(
                    f"renew_interval ({self.renew_interval} s) must be at most half of "
                    f"{name} ({getattr(self, name)} s), so a late renewal does not lose the row"
                )

    @property
    def step_interval(self) -> float:
        """The loop's period when idle: every ``acquire_interval``, but never so rarely that
        a renewal is late."""
        return min(self.acquire_interval, self.renew_interval)


# --- rows --------------------------------------------------------------------------------


def _text(value: TableValue) -> str | None:
    return value if isinstance(value, str) and value else None


def _time(value: TableValue) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:  # Edm.DateTime is UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class PartitionLease:
    """One row of the partitions table, as read (with its ETag)."""

    queue: str
    current_owner: str | None = None
    next_owner: str | None = None
    owned_since: datetime | None = None
    last_renewal: datetime | None = None
    expires_at: datetime | None = None
    is_draining: bool = False
    wake_address: str | None = None
    etag: str = ""

    @classmethod
    def from_entity(cls, entity: Entity) -> PartitionLease:
        """Read a row; missing or mistyped columns read as null (``IsDraining``: false)."""
        return cls(
            queue=entity.row_key,
            current_owner=_text(entity.get("CurrentOwner")),
            next_owner=_text(entity.get("NextOwner")),
            owned_since=_time(entity.get("OwnedSince")),
            last_renewal=_time(entity.get("LastRenewal")),
            expires_at=_time(entity.get("ExpiresAt")),
            is_draining=entity.get("IsDraining") is True,
            wake_address=_text(entity.get("WakeAddress")),
            etag=entity.etag,
        )

    def to_entity(self) -> dict[str, TableValue]:
        """The row to write: DTFx's columns (and ``WakeAddress``), null ones left out."""
        props: dict[str, TableValue] = {
            "PartitionKey": PARTITION_KEY,
            "RowKey": self.queue,
            "CurrentOwner": self.current_owner,
            "NextOwner": self.next_owner,
            "OwnedSince": self.owned_since,
            "LastRenewal": self.last_renewal,
            "ExpiresAt": self.expires_at,
            "IsDraining": self.is_draining,
            "WakeAddress": self.wake_address,
        }
        return {k: v for k, v in props.items() if v is not None}

    def expired(self, now: datetime) -> bool:
        """True when the lease has run out (a row never leased counts as expired)."""
        return self.expires_at is None or now >= self.expires_at


@dataclass(frozen=True)
class PartitionChanges:
    """What changed for this worker, relative to the previous changes it was given.

    Apply ``lost`` and ``released`` first, then ``draining``, then ``acquired`` (see the
    module docstring). A queue is in at most one of ``acquired``, ``released``, ``lost``.

    Attributes:
        acquired: queues this worker now owns; start polling them.
        draining: queues another worker asked for (or, on shutdown, all owned ones): stop
            receiving, finish what is in flight, then call ``mark_drained``. (If a step was
            cut short, this can name a queue never reported as acquired: then there is
            nothing to drain; call ``mark_drained`` at once.)
        released: queues this worker handed over; it no longer owns them.
        lost: queues this worker no longer owns without having handed them over (its lease
            lapsed, or the table names another owner).
        requested: queues this worker asked another worker for (``NextOwner`` = me).
        conflicts: writes refused because the row changed since it was read (412).
        errors: writes that failed otherwise (their outcome is unknown).
        waiting: this worker waits for a row to be released to it.
    """

    acquired: frozenset[str] = frozenset()
    draining: frozenset[str] = frozenset()
    released: frozenset[str] = frozenset()
    lost: frozenset[str] = frozenset()
    requested: frozenset[str] = frozenset()
    conflicts: int = 0
    errors: int = 0
    waiting: bool = False

    @property
    def changed(self) -> bool:
        """True if the set of owned or draining queues changed."""
        return bool(self.acquired or self.draining or self.released or self.lost)

    @property
    def retry_now(self) -> bool:
        """True if a write failed, so the table should be read again at once."""
        return bool(self.conflicts or self.errors)


@dataclass
class _Held:
    """A lease this worker holds: what it last wrote successfully."""

    expires_at: datetime
    last_renewal: datetime
    drain_deadline: datetime | None = None
    drained: bool = False


@dataclass
class _StepLog:
    requested: set[str] = field(default_factory=set)
    conflicts: int = 0
    errors: int = 0


#: How a renewal transaction ended.
_BATCH_OK = "ok"
_BATCH_CONFLICT = "conflict"  # 412: nothing written; re-read and go row by row
_BATCH_FAILED = "failed"  # any other failure: counted as an error, retried next step

#: Renewals deferred to one transaction: (row as read, row to write).
_Renewals = list[tuple[PartitionLease, PartitionLease]]


# --- the manager -------------------------------------------------------------------------


class PartitionManager:
    """One worker's view of the ``{hub}Partitions`` table (see the module docstring).

    Args:
        table: the task hub's partitions table (``names.partitions_table``).
        names: the task hub's names; its control queues are the rows managed.
        worker_id: this worker's id, unique per process.
        options: timings.
        clock: the current time, aware UTC (tests inject a fake one).
        wake_address: where this worker listens for wake-up datagrams (``"host:port"``,
            :attr:`durable_azure.wake.WakeListener.address`); written into the
            ``WakeAddress`` column of the rows it owns. None: the column is not written.
    """

    def __init__(
        self,
        table: Table,
        names: TaskHubNames,
        worker_id: str,
        *,
        options: LeaseOptions | None = None,
        clock: Callable[[], datetime] = _utc_now,
        wake_address: str | None = None,
    ) -> None:
        if not isinstance(worker_id, str) or not worker_id:
            raise ValueError("worker_id must be a non-empty string")
        if wake_address is not None and (not isinstance(wake_address, str) or not wake_address):
            raise ValueError("wake_address must be a non-empty 'host:port' string or None")
        self.table = table
        self.wake_address = wake_address
        self.names = names
        self.worker_id = worker_id
        self.options = options or LeaseOptions()
        self._clock = clock
        self._queues = tuple(names.control_queues)
        self._held: dict[str, _Held] = {}
        # What the caller was last told: owned queues, not draining / draining.
        self._reported_active: set[str] = set()
        self._reported_draining: set[str] = set()
        self._released: set[str] = set()  # handed over since the last report
        self._waiting = False
        self._shutting_down = False
        self._closed = False
        self._wake = asyncio.Event()
        self._warned_unknown: set[str] = set()
        # The rows as last read, updated with what this worker wrote since (ETags too).
        self._rows: dict[str, PartitionLease] = {}
        self._last_read: datetime | None = None
        # The previous step changed nothing, failed nothing and awaits nothing.
        self._steady = False
        self._read_requested = False

    @classmethod
    def for_account(
        cls,
        account: StorageAccount,
        names: TaskHubNames,
        worker_id: str,
        *,
        options: LeaseOptions | None = None,
        clock: Callable[[], datetime] = _utc_now,
        wake_address: str | None = None,
    ) -> PartitionManager:
        """A manager on ``account``'s ``{hub}Partitions`` table."""
        table = account.table(names.partitions_table)
        return cls(table, names, worker_id, options=options, clock=clock, wake_address=wake_address)

    # --- what this worker owns ------------------------------------------------------------

    def owns(self, queue: str) -> bool:
        """True while this worker holds ``queue``'s lease (written, and not yet expired)."""
        held = self._held.get(queue)
        return held is not None and self._clock() < held.expires_at

    def may_receive(self, queue: str) -> bool:
        """True if the worker may receive from ``queue`` now: owned and not draining."""
        held = self._held.get(queue)
        return held is not None and held.drain_deadline is None and self.owns(queue)

    @property
    def owned(self) -> set[str]:
        """The queues this worker owns right now (draining ones included)."""
        return {q for q in self._held if self.owns(q)}

    @property
    def draining(self) -> set[str]:
        """The owned queues being drained for a hand-over or shutdown."""
        return {q for q, h in self._held.items() if h.drain_deadline is not None and self.owns(q)}

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`begin_shutdown` or :meth:`release_all` was called."""
        return self._shutting_down

    def mark_drained(self, queue: str) -> None:
        """The worker has stopped receiving from ``queue`` and finished its in-flight work:
        release it at the next step. Ignored for a queue that is not draining."""
        held = self._held.get(queue)
        if held is None or held.drain_deadline is None:
            logger.debug("%s: mark_drained(%s) ignored: not draining", self.worker_id, queue)
            return
        held.drained = True
        self._wake.set()

    def begin_shutdown(self) -> None:
        """Stop claiming and balancing; from the next step on, drain and release every row."""
        self._shutting_down = True
        self._wake.set()

    def request_read(self) -> None:
        """Make the next step read the whole table (e.g. on a hint that another worker
        released rows), and wake :meth:`run` for it."""
        self._read_requested = True
        self._wake.set()

    # --- storage --------------------------------------------------------------------------

    async def create_rows(self) -> None:
        """Create the table (if needed) and one empty row per control queue; rows that
        exist are left alone (409 ignored)."""
        await self.table.create()
        for queue in self._queues:
            with contextlib.suppress(AlreadyExistsError):
                await self.table.insert(PartitionLease(queue).to_entity())

    async def read_leases(self) -> list[PartitionLease]:
        """Every row of this task hub's control queues, in queue order (one query)."""
        entities, _ = await self.table.query(partition_key=PARTITION_KEY)
        known = set(self._queues)
        rows: dict[str, PartitionLease] = {}
        for entity in entities:
            lease = PartitionLease.from_entity(entity)
            if lease.queue in known:
                rows[lease.queue] = lease
            elif lease.queue not in self._warned_unknown:
                self._warned_unknown.add(lease.queue)
                logger.warning(
                    "%s: ignoring partitions row %r: not one of this hub's %d control queues",
                    self.worker_id,
                    lease.queue,
                    len(self._queues),
                    extra=ev.fields(
                        ev.LEASE_FAILED, worker_id=self.worker_id, partition=lease.queue
                    ),
                )
        return [rows[q] for q in self._queues if q in rows]

    async def _write(
        self, row: PartitionLease, new: PartitionLease, log: _StepLog, what: str
    ) -> PartitionLease | None:
        """Replace ``row`` with ``new`` if its ETag still matches; None if that failed."""
        try:
            etag = await self.table.update(new.to_entity(), etag=row.etag, mode=UpdateMode.REPLACE)
        except ConditionFailedError:
            log.conflicts += 1
            logger.info(
                "%s: %s %s: row changed meanwhile (412)",
                self.worker_id,
                what,
                row.queue,
                extra=ev.fields(ev.LEASE_CONFLICT, worker_id=self.worker_id, partition=row.queue),
            )
            return None
        except StorageError as exc:
            log.errors += 1
            logger.warning(
                "%s: %s %s failed: %s",
                self.worker_id,
                what,
                row.queue,
                exc,
                extra=ev.fields(ev.LEASE_FAILED, worker_id=self.worker_id, partition=row.queue),
            )
            return None
        logger.debug("%s: %s %s", self.worker_id, what, row.queue)
        return replace(new, etag=etag)

    # --- one iteration --------------------------------------------------------------------

    async def step(self) -> PartitionChanges:
        """One iteration of the partition loop: read all rows once, then claim, renew,
        drain, release and balance (see the module docstring). In a steady state the read
        may be skipped, and renewals are written in one transaction (see "Fewer requests"
        in the module docstring).

        Raises:
            StorageError: the table could not be read (nothing was written).
        """
        if self._closed:
            return PartitionChanges()
        batch = self._steady
        self._steady = False  # until this step ends well (_report)
        read_requested, self._read_requested = self._read_requested, False
        log = _StepLog()
        now = self._clock()
        if batch and not read_requested and not self._read_due(now):
            outcome = await self._renew_from_cache(now, log)
            if outcome != _BATCH_CONFLICT:
                return self._report(log)
            batch = False  # fall back: re-read, then row by row
        while True:
            rows = {row.queue: row for row in await self.read_leases()}
            now = self._clock()  # after the read: a claim is judged no earlier than it is made
            self._last_read = now
            if await self._step_rows(rows, now, log, batch=batch):
                break
            batch = False  # the renewal transaction met a 412: re-read, then row by row
        return self._report(log)

    def _read_due(self, now: datetime) -> bool:
        """True if the table must be read before acting (see "Fewer requests" in the module
        docstring); called only after a steady step."""
        if self._shutting_down or self._waiting or not self._held or self._last_read is None:
            return True
        owns_every_row = self._rows.keys() <= self._held.keys()
        if not owns_every_row and now - self._last_read >= timedelta(
            seconds=self.options.idle_read_interval
        ):
            # Only other workers' rows need the read: a change to one of this worker's
            # rows (a NextOwner request, a takeover) fails the next renewal's If-Match.
            return True
        if any(now >= h.expires_at or h.drain_deadline is not None for h in self._held.values()):
            return True
        # Another worker's row reaching its ExpiresAt (as last read) may be claimable now.
        return any(row.expired(now) for q, row in self._rows.items() if q not in self._held)

    async def _renew_from_cache(self, now: datetime, log: _StepLog) -> str:
        """A step without a read: renew the rows that are due, in one transaction guarded
        by the ETags last seen. Success proves nobody wrote them since."""
        renewals: _Renewals = []
        for queue, held in self._held.items():
            row = self._rows.get(queue)
            if row is None:  # not seen since it was claimed (cannot happen): read first
                return _BATCH_CONFLICT
            if self._renewal_due(held, now):
                renewals.append((row, self._renewal(row, now, is_draining=False)))
        return await self._renew_together(renewals, now, log, self._rows)

    async def _step_rows(
        self, rows: dict[str, PartitionLease], now: datetime, log: _StepLog, *, batch: bool
    ) -> bool:
        """Apply the rules to every row just read. With ``batch``, plain renewals go in one
        transaction; False if it met a 412 (nothing of it was written: the caller re-reads
        and steps again row by row)."""
        for queue, held in list(self._held.items()):
            row = rows.get(queue)
            if now >= held.expires_at or row is None or row.current_owner != self.worker_id:
                del self._held[queue]
                logger.warning(
                    "%s: lost %s (lease lapsed or taken)",
                    self.worker_id,
                    queue,
                    extra=ev.fields(ev.LEASE_LOST, worker_id=self.worker_id, partition=queue),
                )
        renewals: _Renewals | None = [] if batch else None
        for queue, row in list(rows.items()):
            rows[queue] = await self._step_row(row, now, log, renewals)
        if renewals and await self._renew_together(renewals, now, log, rows) == _BATCH_CONFLICT:
            return False
        if not self._shutting_down and not log.conflicts and not log.errors:
            await self._balance(rows, log)
        self._rows = rows
        self._waiting = any(
            r.next_owner == self.worker_id and r.current_owner != self.worker_id
            for r in rows.values()
        )
        return True

    async def _renew_together(
        self,
        renewals: _Renewals,
        now: datetime,
        log: _StepLog,
        rows: dict[str, PartitionLease],
    ) -> str:
        """Write ``renewals`` in one transaction (each op If-Match on the row's ETag) and
        record them in ``rows``; returns how it ended (a 412 is not counted: the caller
        re-reads and steps row by row)."""
        ok = True
        for start in range(0, len(renewals), MAX_TRANSACTION_OPS):
            chunk = renewals[start : start + MAX_TRANSACTION_OPS]
            ops = [
                TableOp(TableOpKind.UPDATE_REPLACE, new.to_entity(), etag=row.etag)
                for row, new in chunk
            ]
            try:
                etags = await self.table.transaction(ops)
            except StorageError as exc:
                if isinstance(exc, TransactionFailedError) and isinstance(
                    exc.cause, ConditionFailedError
                ):
                    queue = chunk[exc.index][0].queue if exc.index is not None else "a row"
                    logger.info(
                        "%s: renewing %d rows: %s changed meanwhile (412); re-reading",
                        self.worker_id,
                        len(chunk),
                        queue,
                        extra=ev.fields(
                            ev.LEASE_CONFLICT, worker_id=self.worker_id, partition=queue
                        ),
                    )
                    return _BATCH_CONFLICT
                log.errors += 1
                logger.warning(
                    "%s: renewing %d rows failed: %s",
                    self.worker_id,
                    len(chunk),
                    exc,
                    extra=ev.fields(ev.LEASE_FAILED, worker_id=self.worker_id),
                )
                ok = False
                continue
            for (_, new), etag in zip(chunk, etags, strict=True):
                self._renewed(self._held[new.queue], new, now)
                rows[new.queue] = replace(new, etag=etag)
            logger.debug("%s: renewed %d rows in one transaction", self.worker_id, len(chunk))
        return _BATCH_OK if ok else _BATCH_FAILED

    async def _step_row(
        self,
        row: PartitionLease,
        now: datetime,
        log: _StepLog,
        renewals: _Renewals | None = None,
    ) -> PartitionLease:
        """Apply the rules to one row; returns the row as it now is (as far as we know).
        A plain renewal is appended to ``renewals`` (when given) instead of written."""
        me = self.worker_id
        held = self._held.get(row.queue)
        if held is not None:
            return await self._step_mine(row, held, now, log, renewals)
        if self._shutting_down:
            if row.current_owner == me:  # ours in the table, nothing of it in flight here
                return await self._release(row, log)
            if row.next_owner == me:  # withdraw a request: let others claim it at once
                new = replace(row, next_owner=None)
                return await self._write(row, new, log, "withdrew request for") or row
            return row
        if self._claimable(row, now):
            new = PartitionLease(
                queue=row.queue,
                current_owner=me,
                owned_since=now,
                last_renewal=now,
                expires_at=now + timedelta(seconds=self.options.claim_duration),
                wake_address=self.wake_address,
            )
            written = await self._write(row, new, log, "claimed")
            if written is None:
                return row
            assert new.expires_at is not None
            self._held[row.queue] = _Held(expires_at=new.expires_at, last_renewal=now)
            logger.info(
                "%s: acquired %s",
                me,
                row.queue,
                extra=ev.fields(ev.LEASE_ACQUIRED, worker_id=me, partition=row.queue),
            )
            return written
        if row.current_owner == me:  # ours in the table, unknown here, and someone waits
            return await self._release(row, log)
        if row.current_owner is not None and row.next_owner is None and row.is_draining:
            # Its owner is shutting down: ask for it.
            new = replace(row, next_owner=me)
            written = await self._write(row, new, log, "asked (owner shutting down) for")
            if written is None:
                return row
            log.requested.add(row.queue)
            return written
        return row

    def _claimable(self, row: PartitionLease, now: datetime) -> bool:
        me = self.worker_id
        if row.expired(now):
            return True
        if row.current_owner is None:
            return row.next_owner is None or row.next_owner == me
        # Ours in the table but not held here (a claim whose reply was lost, or a restart
        # under the same id): claim it again, unless someone is waiting for it.
        return row.current_owner == me and row.next_owner is None

    async def _step_mine(
        self,
        row: PartitionLease,
        held: _Held,
        now: datetime,
        log: _StepLog,
        renewals: _Renewals | None,
    ) -> PartitionLease:
        hand_over = (
            self._shutting_down
            or row.next_owner is not None
            or row.is_draining
            or held.drain_deadline is not None
        )
        if hand_over and held.drain_deadline is None:
            new = self._renewal(row, now, is_draining=True)
            written = await self._write(row, new, log, "started draining")
            if written is None:
                return row
            self._renewed(held, new, now)
            held.drain_deadline = now + timedelta(seconds=self.options.drain_timeout)
            logger.info(
                "%s: draining %s for %s",
                self.worker_id,
                row.queue,
                row.next_owner or "shutdown",
                extra=ev.fields(ev.LEASE_DRAINING, worker_id=self.worker_id, partition=row.queue),
            )
            return written
        if held.drain_deadline is not None and (held.drained or now >= held.drain_deadline):
            if not held.drained:
                logger.warning(
                    "%s: %s not drained within %s s; releasing it anyway",
                    self.worker_id,
                    row.queue,
                    self.options.drain_timeout,
                    extra=ev.fields(
                        ev.LEASE_DRAINING, worker_id=self.worker_id, partition=row.queue
                    ),
                )
            return await self._release(row, log)
        if not self._renewal_due(held, now):
            return row
        new = self._renewal(row, now, is_draining=row.is_draining)
        if renewals is not None:
            renewals.append((row, new))
            return row
        written = await self._write(row, new, log, "renewed")
        if written is None:
            return row
        self._renewed(held, new, now)
        return written

    def _renewal_due(self, held: _Held, now: datetime) -> bool:
        return now - held.last_renewal >= timedelta(seconds=self.options.renew_interval * _RENEW_AT)

    def _renewal(self, row: PartitionLease, now: datetime, *, is_draining: bool) -> PartitionLease:
        expires_at = now + timedelta(seconds=self.options.lease_interval)
        return replace(
            row,
            last_renewal=now,
            expires_at=expires_at,
            is_draining=is_draining,
            wake_address=self.wake_address,
        )

    @staticmethod
    def _renewed(held: _Held, new: PartitionLease, now: datetime) -> None:
        assert new.expires_at is not None
        held.expires_at = new.expires_at
        held.last_renewal = now

    async def _release(self, row: PartitionLease, log: _StepLog) -> PartitionLease:
        """Give ``row`` up. We stop believing we own it *before* the write: if the write
        fails the row stays ours in the table and is released again at the next step."""
        if self._held.pop(row.queue, None) is not None:
            self._released.add(row.queue)
            logger.info(
                "%s: released %s to %s",
                self.worker_id,
                row.queue,
                row.next_owner or "anyone",
                extra=ev.fields(ev.LEASE_RELEASED, worker_id=self.worker_id, partition=row.queue),
            )
        next_owner = None if row.next_owner == self.worker_id else row.next_owner
        new = replace(
            row, current_owner=None, next_owner=next_owner, is_draining=False, wake_address=None
        )
        return await self._write(row, new, log, "released") or row

    async def _balance(self, rows: dict[str, PartitionLease], log: _StepLog) -> None:
        """Ask workers owning more than their share for rows (``NextOwner`` = me)."""
        me = self.worker_id
        mine = 0
        counts: dict[str, int] = {}
        stealable: dict[str, list[PartitionLease]] = {}
        for row in rows.values():
            owner = row.next_owner or row.current_owner
            if owner is None:
                continue
            if owner == me:
                mine += 1
                continue
            if row.next_owner is None and row.is_draining:
                continue  # its owner is shutting down; it is not part of the balance
            counts[owner] = counts.get(owner, 0) + 1
            if row.next_owner is None:
                stealable.setdefault(owner, []).append(row)
        if not counts:
            return
        average = len(rows) // (len(counts) + 1)
        if mine > average:
            return
        for owner in sorted(counts, key=lambda o: (-counts[o], o)):
            wanted = average - mine
            if wanted < 0:
                break
            excess = counts[owner] - average
            if excess <= 0:
                continue
            if wanted == 0 and excess > 1:
                wanted = 1
            for row in stealable.get(owner, [])[: min(wanted, excess)]:
                new = replace(row, next_owner=me)
                written = await self._write(row, new, log, f"asked {owner} for")
                if written is None:
                    return  # the view is stale: re-read before deciding more
                rows[row.queue] = written
                log.requested.add(row.queue)
                mine += 1

    def _report(self, log: _StepLog) -> PartitionChanges:
        """The changes since the last report, computed from the current state (so what a
        step cut short did is reported, consistently, by the next report)."""
        now = self._clock()
        for queue in [q for q, h in self._held.items() if now >= h.expires_at]:
            del self._held[queue]  # lapsed without a step noticing (e.g. the table is down)
            logger.warning(
                "%s: lost %s (lease lapsed)",
                self.worker_id,
                queue,
                extra=ev.fields(ev.LEASE_LOST, worker_id=self.worker_id, partition=queue),
            )
        active = {q for q, h in self._held.items() if h.drain_deadline is None}
        draining = set(self._held) - active
        gone = (self._reported_active | self._reported_draining) - set(self._held)
        released = gone & self._released
        changes = PartitionChanges(
            acquired=frozenset(active - self._reported_active),
            draining=frozenset(draining - self._reported_draining),
            released=frozenset(released),
            lost=frozenset(gone - released),
            requested=frozenset(log.requested),
            conflicts=log.conflicts,
            errors=log.errors,
            waiting=self._waiting,
        )
        self._reported_active = active
        self._reported_draining = draining
        self._released.clear()
        self._steady = not (
            changes.changed
            or changes.retry_now
            or changes.requested
            or changes.waiting
            or draining
            or self._shutting_down
        )
        return changes

    # --- shutdown -------------------------------------------------------------------------

    async def release_all(self, *, attempts: int = 3) -> PartitionChanges:
        """Release every row this worker owns at once, and withdraw its requests, so other
        workers claim them at their next step. The caller must have drained them already.

        Afterwards the manager is closed: :meth:`step` does nothing. Rows whose release
        could not be written (``attempts`` reads, each followed by the writes) are left to
        expire; this worker no longer believes it owns them either way.

        Raises:
            StorageError: the table could not be read (owned rows are then left to expire).
        """
        self._shutting_down = True
        self._closed = True
        self._wake.set()
        log = _StepLog()
        try:
            for _ in range(max(1, attempts)):
                pending = False
                for row in await self.read_leases():
                    if row.current_owner == self.worker_id:
                        written = await self._release(row, log)
                    elif row.next_owner == self.worker_id:
                        new = replace(row, next_owner=None)
                        written = await self._write(row, new, log, "withdrew request for") or row
                    else:
                        continue
                    pending = pending or written is row
                if not pending:
                    break
        finally:
            for queue in self._held:
                self._released.add(queue)
            self._held.clear()
            self._waiting = False
        return self._report(log)

    # --- the loop -------------------------------------------------------------------------

    async def run(
        self,
        on_change: Callable[[PartitionChanges], Awaitable[None]],
        stop_event: asyncio.Event,
    ) -> None:
        """Step until stopped, calling ``on_change`` with every change of ownership.

        The loop steps every ``min(acquire_interval, renew_interval)``; every
        ``busy_interval`` while draining, waiting for a row or shutting down; at once after
        a failed write or step (up to :data:`MAX_IMMEDIATE_RETRIES` in a row) and when
        :meth:`mark_drained` is called. Errors are logged, never raised: a dead loop would
        let every lease lapse.

        When ``stop_event`` is set, the manager drains and releases everything (see the
        module docstring) and returns once it owns nothing. Cancel the task for a hard stop.
        """
        failures = 0
        while not self._closed:
            if stop_event.is_set() and not self._shutting_down:
                self.begin_shutdown()
            self._wake.clear()
            changes: PartitionChanges | None = None
            try:
                # asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for swallows
                # a cancellation that lands as the step finishes, and this loop would then
                # outlive the worker that cancelled it.
                async with asyncio.timeout(self.options.operation_timeout):
                    changes = await self.step()
            except TimeoutError:
                logger.warning(
                    "%s: partition step exceeded %s s; retrying",
                    self.worker_id,
                    self.options.operation_timeout,
                    extra=ev.fields(ev.LEASE_FAILED, worker_id=self.worker_id),
                )
            except StorageError as exc:
                logger.warning(
                    "%s: partition step failed: %s",
                    self.worker_id,
                    exc,
                    extra=ev.fields(ev.LEASE_FAILED, worker_id=self.worker_id),
                )
            except Exception:
                logger.exception(
                    "%s: unexpected error in the partition step",
                    self.worker_id,
                    extra=ev.fields(ev.WORKER_ERROR, worker_id=self.worker_id),
                )
            if changes is None:
                # Cut short: report what it did (the next step would, too).
                changes = self._report(_StepLog(errors=1))
            if changes.changed:
                try:
                    await on_change(changes)
                except Exception:
                    logger.exception(
                        "%s: partition change handler failed",
                        self.worker_id,
                        extra=ev.fields(ev.WORKER_ERROR, worker_id=self.worker_id),
                    )
            failures = failures + 1 if changes.retry_now else 0
            if (
                self._shutting_down
                and not self._held
                and (not self._waiting or failures >= MAX_IMMEDIATE_RETRIES)
            ):
                logger.info(
                    "%s: partition manager stopped; nothing owned",
                    self.worker_id,
                    extra=ev.fields(ev.LEASE_RELEASED, worker_id=self.worker_id),
                )
                return
            if 0 < failures < MAX_IMMEDIATE_RETRIES:
                delay = 0.0
            elif self._shutting_down or self._waiting or self.draining:
                delay = min(self.options.busy_interval, self.options.step_interval)
            else:
                delay = self.options.step_interval
            await self._pause(delay, () if self._shutting_down else (stop_event,))

    async def _pause(self, delay: float, events: Iterable[asyncio.Event]) -> None:
        """Sleep ``delay`` seconds, or less if :meth:`mark_drained` (or an event) fires."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._wake, *events)]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
