"""Push wake-ups over UDP: a message sent to a queue reaches its poller at once.

Pollers back off while their queue is idle, so a message sent after a quiet spell would
wait for the next poll. Here the sender tells the worker that owns the queue instead: after
every enqueue, :meth:`WakeSender.notify` sends one small datagram to the owner's
:class:`WakeListener`, whose address the owner publishes in the ``WakeAddress`` column of
its ``{hub}Partitions`` rows (:mod:`durable_azure.storage.partitions`). The listener calls
``on_wake(queue_name)`` and the worker polls that queue now.

**An optimization, never needed for correctness.** Datagrams can be lost, late,
duplicated or sent to a worker that has just handed the queue over; the sender's view of
the owners is up to ``refresh_interval`` old. None of that matters: every worker still
polls its queues on its own schedule, so a lost wake-up only means the message is picked
up at the next poll.

Datagram format: UTF-8 JSON of at most :data:`MAX_DATAGRAM_BYTES` bytes,
``{"v":1,"hub":"MyHub","queue":"myhub-control-02"}``. ``hub`` is compared ignoring case
(task hub names are case-insensitive in storage). The listener ignores (and counts in
:attr:`WakeListener.stats`, and logs at debug level) anything oversized, not JSON, of
another version, for another task hub, or naming a queue not in its allowed set.

Security: the listener binds the loopback interface by default, so only processes on the
same machine can reach it; bind another interface (``host``, with ``advertise_host`` for
a wildcard) only on a network you trust. There is no authentication, and none is needed
for safety: the worst a datagram can do is cause an extra poll of one of the hub's queues,
and the listener calls back at most once per queue per ``min_interval`` (a burst collapses
into at most two calls), so a flood costs at most a bounded number of extra polls.

Integration (the contract)
--------------------------
Worker:

1. Before claiming leases, start a listener whose callback wakes the poller of the named
   queue if this worker polls it::

       listener = WakeListener(names, on_wake)
       await listener.start()

   where ``on_wake(queue)`` sets the wake event of that queue's poll backoff (if the
   worker owns / polls the queue; otherwise it does nothing).
2. Pass ``listener.address`` to the partition manager
   (``PartitionManager.for_account(..., wake_address=listener.address)``): it writes it
   into every row it claims or renews and clears it on release.
3. To wake other workers for messages it sends to queues it does not poll itself (e.g.
   an activity's result for a partition another worker owns), register a sender as a
   send listener: ``provider.add_send_listener(sender.notify)`` with
   ``sender = WakeSender.for_account(account, names, skip_address=listener.address)``.
   The provider calls it with the queue name after every non-delayed send.
4. On stop, after the lease loop released the rows: ``await listener.close()`` and
   ``await sender.aclose()``.

Client: ``sender = WakeSender.for_account(account, names)``,
``provider.add_send_listener(sender.notify)``, and ``await sender.aclose()`` on close.

``notify`` is synchronous, never raises and never blocks: it sends from a cache of the
partitions rows with a non-blocking socket, and refreshes the cache in a background task
(one query at most every ``refresh_interval``, 5 s by default, and only while notifying:
an idle sender makes no requests). The very first notify finds the cache empty: it starts
the refresh and sends once the rows are read (one query's latency later). After a quiet
spell, a notify sends from the old rows at once (owners rarely move) and refreshes them in
the background; if the queue did move meanwhile, the old owner gets a harmless extra
wake-up and the new one picks the message up at its next poll.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from durable_azure import logevents as ev
from durable_azure.storage.names import TaskHubNames
from durable_azure.storage.partitions import PARTITION_KEY, PartitionLease
from durable_azure.storage.primitives import StorageAccount, Table

__all__ = [
    "DEFAULT_MIN_INTERVAL",
    "DEFAULT_REFRESH_INTERVAL",
    "MAX_DATAGRAM_BYTES",
    "WAKE_PROTOCOL_VERSION",
    "WakeListener",
    "WakeSender",
    "encode_wake",
    "parse_address",
]

logger = logging.getLogger(__name__)

#: The ``v`` of the datagrams this module sends and accepts.
WAKE_PROTOCOL_VERSION = 1
#: Larger datagrams are ignored (ours are well under 200 bytes).
MAX_DATAGRAM_BYTES = 512
#: The listener calls back at most once per queue per this many seconds.
DEFAULT_MIN_INTERVAL = 0.01
#: The sender re-reads the partitions table at most this often.
DEFAULT_REFRESH_INTERVAL = 5.0
#: Seconds :meth:`WakeSender.aclose` waits for the first read of the partitions rows, so
#: the wake-ups notified before it still go out.
FLUSH_TIMEOUT = 1.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def encode_wake(hub: str, queue: str) -> bytes:
    """The datagram that wakes the poller of ``queue`` in task hub ``hub``."""
    body = {"v": WAKE_PROTOCOL_VERSION, "hub": hub, "queue": queue}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"`` for IPv6) as ``(host, port)``.

    The host must be a numeric IP address, so sending never waits for name resolution.

    Raises:
        ValueError: not such an address.
    """
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    port = int(port_text) if port_text.isdigit() else 0
    if not sep or ip is None or not 0 < port < 65536:
        raise ValueError(f"not a 'host:port' address with a numeric IP: {address!r}")
    return str(ip), port


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the listener --------------------------------------------------------------------------


class _Ignored(Exception):
    """A datagram to ignore, and why (a key of :attr:`WakeListener.stats`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class _ListenerProtocol(asyncio.DatagramProtocol):
    def __init__(self, listener: WakeListener) -> None:
        self._listener = listener
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._listener._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("wake listener: socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class WakeListener:
    """Receives wake-up datagrams for one task hub and calls ``on_wake(queue_name)``.

    Args:
        names: the task hub; datagrams for other hubs are ignored.
        on_wake: called (on the event loop) with the queue's name; should only set an
            event. Its exceptions are logged, never raised.
        host: the interface to bind (loopback by default; see the module docstring).
        port: the UDP port; 0 picks a free one.
        queues: the queue names accepted (default: the hub's control queues and its
            work-item queue).
        advertise_host: the numeric IP to publish in :attr:`address` (required when
            ``host`` is a wildcard such as ``0.0.0.0``; default: the address bound).
        min_interval: at most one call per queue per this many seconds; datagrams that
            come sooner are collapsed into one call at the end of the interval.

    ``stats`` counts ``received``, ``delivered``, ``collapsed`` and the reasons datagrams
    were ignored: ``oversized``, ``malformed``, ``other_hub``, ``unknown_queue``.
    """

    def __init__(
        self,
        names: TaskHubNames,
        on_wake: Callable[[str], None],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        queues: Iterable[str] | None = None,
        advertise_host: str | None = None,
        min_interval: float = DEFAULT_MIN_INTERVAL,
    ) -> None:
        if advertise_host is not None:
            advertise_host = str(ipaddress.ip_address(advertise_host))
        elif _is_wildcard(host):
            raise ValueError(f"binding {host!r} needs advertise_host (the IP others send to)")
        if min_interval < 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval}")
        self.names = names
        self.on_wake = on_wake
        self.host = host
        self.port = port
        self.min_interval = min_interval
        self.stats: Counter[str] = Counter()
        self._hub = names.hub.lower()
        self._queues = frozenset(
            queues if queues is not None else [*names.control_queues, names.work_item_queue]
        )
        self._advertise_host = advertise_host
        self._address: str | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _ListenerProtocol | None = None
        self._last_call: dict[str, float] = {}
        self._deferred: dict[str, asyncio.TimerHandle] = {}

    @property
    def address(self) -> str:
        """Where to send wake-ups, ``"host:port"`` (after :meth:`start`)."""
        if self._address is None:
            raise RuntimeError("the wake listener is not started")
        return self._address

    async def start(self) -> None:
        """Bind the socket on the running event loop.

        Raises:
            OSError: the address could not be bound.
        """
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _ListenerProtocol(self), local_addr=(self.host, self.port)
        )
        self._transport, self._protocol = transport, protocol
        bound_host, bound_port = transport.get_extra_info("sockname")[:2]
        self._address = _format_address(self._advertise_host or bound_host, bound_port)
        logger.debug("wake listener for %s on %s", self.names.hub, self._address)

    async def close(self) -> None:
        """Stop listening; pending collapsed calls are dropped."""
        for handle in self._deferred.values():
            handle.cancel()
        self._deferred.clear()
        transport, protocol = self._transport, self._protocol
        self._transport = self._protocol = None
        if transport is not None and protocol is not None:
            transport.close()
            await protocol.closed

    async def __aenter__(self) -> WakeListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- receiving ------------------------------------------------------------------------

    def _received(self, data: bytes, addr: Any) -> None:
        self.stats["received"] += 1
        queue = self._parse(data)
        if queue is None:
            return
        if self._transport is None:
            return  # closing
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._last_call.get(queue)
        if last is None or now - last >= self.min_interval:
            self._deliver(queue, now)
            return
        self.stats["collapsed"] += 1
        if queue not in self._deferred:
            delay = self.min_interval - (now - last)
            self._deferred[queue] = loop.call_later(delay, self._deliver_deferred, queue)

    def _parse(self, data: bytes) -> str | None:
        """The queue a datagram names, or None (counted and logged) if it is to be ignored."""
        try:
            return self._check(data)
        except _Ignored as ignored:
            self.stats[ignored.reason] += 1
            logger.debug(
                "wake listener %s: ignored a datagram (%s: %s)",
                self._address,
                ignored.reason,
                ignored.detail,
            )
            return None

    def _check(self, data: bytes) -> str:
        if len(data) > MAX_DATAGRAM_BYTES:
            raise _Ignored("oversized", f"{len(data)} bytes")
        try:
            message = json.loads(data.decode("utf-8"))
        except ValueError:  # also UnicodeDecodeError
            raise _Ignored("malformed", "not UTF-8 JSON") from None
        if not isinstance(message, dict):
            raise _Ignored("malformed", "not a JSON object")
        version, hub, queue = message.get("v"), message.get("hub"), message.get("queue")
        if type(version) is not int or version != WAKE_PROTOCOL_VERSION:
            raise _Ignored("malformed", f"version {version!r}")
        if not isinstance(hub, str) or not isinstance(queue, str):
            raise _Ignored("malformed", "hub and queue must be strings")
        if hub.lower() != self._hub:
            raise _Ignored("other_hub", repr(hub))
        if queue not in self._queues:
            raise _Ignored("unknown_queue", repr(queue))
        return queue

    def _deliver_deferred(self, queue: str) -> None:
        self._deferred.pop(queue, None)
        if self._transport is not None:
            self._deliver(queue, asyncio.get_running_loop().time())

    def _deliver(self, queue: str, now: float) -> None:
        self._last_call[queue] = now
        self.stats["delivered"] += 1
        try:
            self.on_wake(queue)
        except Exception:
            logger.exception(
                "wake listener: on_wake(%r) failed",
                queue,
                extra=ev.fields(ev.WORKER_ERROR, queue=queue),
            )


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


# --- the sender ----------------------------------------------------------------------------


class WakeSender:
    """Sends a wake-up to the owner(s) of a queue after a message was sent to it.

    Args:
        table: the task hub's partitions table (``names.partitions_table``).
        names: the task hub.
        refresh_interval: the partitions rows are re-read (in the background) when the
            cached ones are older than this; also the wait before retrying a failed read.
        skip_address: an address never sent to (a worker passes its own listener's).
        clock: monotonic seconds, for the cache's age (tests inject a fake one).
        utc_clock: the current UTC time, to skip rows whose lease has expired.

    ``stats`` counts ``sent``, ``send_failed``, ``no_owner``, ``unknown_queue``,
    ``refreshes`` and ``refresh_failed``.
    """

    def __init__(
        self,
        table: Table,
        names: TaskHubNames,
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        skip_address: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        utc_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if refresh_interval < 0:
            raise ValueError(f"refresh_interval must be >= 0, got {refresh_interval}")
        self.table = table
        self.names = names
        self.refresh_interval = refresh_interval
        self.skip_address = skip_address
        self.stats: Counter[str] = Counter()
        self._clock = clock
        self._utc_clock = utc_clock
        self._control = frozenset(names.control_queues)
        self._rows: dict[str, PartitionLease] | None = None  # None: never read
        self._next_refresh = float("-inf")
        self._refresh_task: asyncio.Task[None] | None = None
        self._pending: set[str] = set()  # notified before the first read
        self._closed = False

    @classmethod
    def for_account(cls, account: StorageAccount, names: TaskHubNames, **kwargs: Any) -> WakeSender:
        """A sender reading ``account``'s ``{hub}Partitions`` table."""
        return cls(account.table(names.partitions_table), names, **kwargs)

    def notify(self, queue_name: str) -> None:
        """Wake the owner(s) of ``queue_name``: its control queue's owner, or every live
        owner for the work-item queue. Never raises, never blocks; a provider send
        listener (``provider.add_send_listener(sender.notify)``)."""
        try:
            self._notify(queue_name)
        except Exception:
            logger.debug("wake sender: notify(%r) failed", queue_name, exc_info=True)

    def addresses_for(self, queue_name: str) -> list[str]:
        """The addresses a notify for ``queue_name`` would send to now (from the cache)."""
        rows = self._rows or {}
        now = self._utc_clock()
        if queue_name == self.names.work_item_queue:
            candidates = list(rows.values())
        elif queue_name in self._control:
            candidates = [rows[queue_name]] if queue_name in rows else []
        else:
            return []
        out: list[str] = []
        for row in candidates:
            address = row.wake_address
            if (
                address is not None
                and row.current_owner is not None
                and not row.expired(now)
                and address != self.skip_address
                and address not in out
            ):
                out.append(address)
        return out

    async def refresh(self) -> None:
        """Read the partitions rows now (one query).

        Raises:
            StorageError: the table could not be read (the old cache is kept).
        """
        entities, _ = await self.table.query(partition_key=PARTITION_KEY)
        rows = {}
        for entity in entities:
            if entity.row_key in self._control:
                rows[entity.row_key] = PartitionLease.from_entity(entity)
        self._rows = rows
        self.stats["refreshes"] += 1

    def close(self) -> None:
        """Stop: cancel the refresh in flight. Notify then does
        nothing. (:meth:`aclose` also waits for the cancelled refresh to end.)"""
        self._closed = True
        self._pending.clear()
        if self._refresh_task is not None:
            self._refresh_task.cancel()

    async def aclose(self) -> None:
        """Send the wake-ups still waiting for the first read of the rows (waiting for
        that read at most :data:`FLUSH_TIMEOUT` seconds: a one-shot client, such as a CLI
        command, closes right after its send), then :meth:`close` and wait for the
        cancelled refresh task to finish."""
        task = self._refresh_task
        if (
            self._pending
            and task is not None
            and not task.done()
            and task is not asyncio.current_task()
        ):
            await asyncio.wait({task}, timeout=FLUSH_TIMEOUT)
        self.close()
        task, self._refresh_task = self._refresh_task, None
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> WakeSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- internals ------------------------------------------------------------------------

    def _notify(self, queue_name: str) -> None:
        if self._closed:
            return
        if queue_name != self.names.work_item_queue and queue_name not in self._control:
            self.stats["unknown_queue"] += 1
            return
        refreshing = self._start_refresh()
        if self._rows is None:
            if refreshing:
                self._pending.add(queue_name)  # sent when the first read completes
            return
        self._send(queue_name)

    def _start_refresh(self) -> bool:
        """Start a background refresh if the cache is due for one; True if one is in
        flight afterwards."""
        if self._refresh_task is not None and not self._refresh_task.done():
            return True
        if self._clock() < self._next_refresh:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False  # called outside the event loop: nothing to refresh with
        self._next_refresh = float("inf")  # set for real when the refresh ends
        self._refresh_task = loop.create_task(self._refresh_in_background(), name="wake refresh")
        return True

    async def _refresh_in_background(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:
            self.stats["refresh_failed"] += 1
            logger.debug("wake sender: reading %s failed: %s", self.table.name, exc)
            self._pending.clear()
        finally:
            self._next_refresh = self._clock() + self.refresh_interval
        pending, self._pending = self._pending, set()
        if not self._closed:
            for queue_name in sorted(pending):
                self._send(queue_name)

    def _send(self, queue_name: str) -> None:
        addresses = self.addresses_for(queue_name)
        if not addresses:
            self.stats["no_owner"] += 1
            return
        payload = encode_wake(self.names.hub, queue_name)
        for address in addresses:
            try:
                host, port = parse_address(address)
                # A socket per datagram (microseconds, next to the HTTP send that came
                # before): a sender holds no socket, so a client never closed leaks none.
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                with socket.socket(family, socket.SOCK_DGRAM) as sock:
                    sock.setblocking(False)
                    sock.sendto(payload, (host, port))
            except (OSError, ValueError) as exc:  # BlockingIOError: buffer full, dropped
                self.stats["send_failed"] += 1
                logger.debug("wake sender: %s to %s failed: %s", queue_name, address, exc)
            else:
                self.stats["sent"] += 1
