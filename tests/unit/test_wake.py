"""Wake-ups over UDP: WakeListener and WakeSender on real loopback sockets, with the
partitions rows in the in-memory account (written by real PartitionManagers)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable_azure.storage.names import TaskHubNames
from durable_azure.storage.partitions import PartitionManager
from durable_azure.storage.primitives import OpKind
from durable_azure.testing.memory import MemoryStorageAccount
from durable_azure.wake import (
    MAX_DATAGRAM_BYTES,
    WakeListener,
    WakeSender,
    encode_wake,
    parse_address,
)

HUB = "WakeHub"
NAMES = TaskHubNames(HUB, 4)


@dataclass
class Recorder:
    """An ``on_wake`` callback that remembers its calls and lets a test wait for them."""

    calls: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, queue: str) -> None:
        self.calls.append(queue)
        self._changed.set()

    async def wait_for(self, condition: Callable[[list[str]], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition(self.calls):
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def listening(
    names: TaskHubNames = NAMES, **kwargs: Any
) -> AsyncIterator[tuple[WakeListener, Recorder]]:
    recorder = Recorder()
    listener = WakeListener(names, recorder, **kwargs)
    await listener.start()
    try:
        yield listener, recorder
    finally:
        await listener.close()


@contextmanager
def raw_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        yield sock
    finally:
        sock.close()


def send_raw(sock: socket.socket, address: str, data: bytes) -> None:
    sock.sendto(data, parse_address(address))


async def split_between(
    account: MemoryStorageAccount, a_address: str | None, b_address: str | None
) -> tuple[PartitionManager, PartitionManager]:
    """Two managers sharing the hub's 4 partitions 2/2 (by a cooperative hand-over)."""
    a = PartitionManager.for_account(account, NAMES, "a", wake_address=a_address)
    b = PartitionManager.for_account(account, NAMES, "b", wake_address=b_address)
    await a.create_rows()
    await a.step()
    asked = (await b.step()).requested
    assert (await a.step()).draining == asked
    for queue in asked:
        a.mark_drained(queue)
    assert (await a.step()).released == asked
    assert (await b.step()).acquired == asked
    assert len(a.owned) == len(b.owned) == 2
    return a, b


async def test_a_control_queue_wake_reaches_only_its_owner() -> None:
    account = MemoryStorageAccount()
    async with listening() as (la, ra), listening() as (lb, rb):
        a, b = await split_between(account, la.address, lb.address)
        sender = WakeSender.for_account(account, NAMES)
        try:
            queue_a = sorted(a.owned)[0]
            queue_b = sorted(b.owned)[0]
            # The cache is empty: this schedules the read and sends once it is done.
            sender.notify(queue_a)
            await ra.wait_for(lambda calls: queue_a in calls)
            sender.notify(queue_b)
            await rb.wait_for(lambda calls: queue_b in calls)
            await asyncio.sleep(0.05)  # anything misdirected would have arrived by now
            assert ra.calls == [queue_a]
            assert rb.calls == [queue_b]
            assert sender.stats["sent"] == 2
            assert sender.stats["refreshes"] == 1
            assert sender.addresses_for(queue_a) == [la.address]
        finally:
            await sender.aclose()


async def test_a_work_item_wake_reaches_every_owner_once() -> None:
    account = MemoryStorageAccount()
    async with listening() as (la, ra), listening() as (lb, rb):
        await split_between(account, la.address, lb.address)
        sender = WakeSender.for_account(account, NAMES)
        try:
            await sender.refresh()
            assert sorted(sender.addresses_for(NAMES.work_item_queue)) == sorted(
                [la.address, lb.address]
            )  # two rows each, one address each
            sender.notify(NAMES.work_item_queue)
            await ra.wait_for(lambda calls: bool(calls))
            await rb.wait_for(lambda calls: bool(calls))
            await asyncio.sleep(0.05)
            assert ra.calls == rb.calls == [NAMES.work_item_queue]
            assert sender.stats["sent"] == 2
        finally:
            await sender.aclose()


async def test_skip_address_and_rows_without_a_live_owner() -> None:
    clock = {"now": datetime.now(UTC)}
    account = MemoryStorageAccount()
    async with listening() as (la, ra), listening() as (lb, _):
        a, _b = await split_between(account, la.address, None)  # b publishes no address
        sender = WakeSender.for_account(
            account, NAMES, skip_address=lb.address, utc_clock=lambda: clock["now"]
        )
        try:
            await sender.refresh()
            assert sender.addresses_for(NAMES.work_item_queue) == [la.address]
            for queue in NAMES.control_queues:
                expected = [la.address] if queue in a.owned else []
                assert sender.addresses_for(queue) == expected, queue
            skipping = WakeSender.for_account(account, NAMES, skip_address=la.address)
            await skipping.refresh()
            assert skipping.addresses_for(NAMES.work_item_queue) == []
            await skipping.aclose()
            # Expired leases (a dead worker's) are not sent to.
            clock["now"] += timedelta(minutes=5)
            assert sender.addresses_for(NAMES.work_item_queue) == []
            sender.notify(NAMES.work_item_queue)
            assert sender.stats["no_owner"] == 1
            assert sender.stats["sent"] == 0
            assert ra.calls == []
        finally:
            await sender.aclose()


async def test_a_sender_with_no_owner_sends_nothing_and_never_raises() -> None:
    account = MemoryStorageAccount()
    sender = WakeSender.for_account(account, NAMES, refresh_interval=0)
    try:
        # No table at all: the read fails in the background, notify does not.
        sender.notify(NAMES.control_queue(0))
        await asyncio.sleep(0.05)
        assert sender.stats["refresh_failed"] == 1
        assert sender.stats["sent"] == 0
        # Rows, but nobody owns them.
        await PartitionManager.for_account(account, NAMES, "creator").create_rows()
        sender.notify(NAMES.control_queue(0))
        await asyncio.sleep(0.05)
        assert sender.stats["refreshes"] == 1
        sender.notify(NAMES.control_queue(0))
        sender.notify(NAMES.work_item_queue)
        sender.notify("otherhub-control-00")
        sender.notify(None)  # type: ignore[arg-type]  # nonsense: ignored too
        await asyncio.sleep(0.05)
        assert sender.stats["sent"] == 0
        assert sender.stats["no_owner"] >= 2
        assert sender.stats["unknown_queue"] == 2
    finally:
        await sender.aclose()


def test_notify_outside_an_event_loop_does_nothing() -> None:
    sender = WakeSender.for_account(MemoryStorageAccount(), NAMES)
    sender.notify(NAMES.control_queue(0))
    assert sender.stats["sent"] == 0
    sender.close()


async def test_the_cache_is_refreshed_in_the_background_at_most_every_refresh_interval() -> None:
    account = MemoryStorageAccount()
    ticks = {"now": 0.0}
    async with listening() as (la, ra):
        a = PartitionManager.for_account(account, NAMES, "a", wake_address=la.address)
        await a.create_rows()
        await a.step()
        sender = WakeSender.for_account(
            account, NAMES, refresh_interval=5.0, clock=lambda: ticks["now"]
        )
        try:
            queue = NAMES.control_queue(0)
            account.stats.reset()
            sender.notify(queue)
            sender.notify(queue)  # a read is in flight: no second one
            await ra.wait_for(lambda calls: len(calls) >= 1)
            assert account.stats.snapshot() == {OpKind.TABLE_QUERY.value: 1}
            for _ in range(5):
                ticks["now"] += 0.9
                sender.notify(queue)
            await asyncio.sleep(0.02)
            assert account.stats.snapshot() == {OpKind.TABLE_QUERY.value: 1}
            ticks["now"] += 1.0
            # Due: sent at once from the (old) cache, and the cache is read again.
            sender.notify(queue)
            await asyncio.sleep(0.02)
            assert account.stats.snapshot() == {OpKind.TABLE_QUERY.value: 2}
            # The two notifies before the first read became one send (same queue).
            assert sender.stats["sent"] == 7
        finally:
            await sender.aclose()


async def test_bad_datagrams_are_ignored_and_counted() -> None:
    async with listening(min_interval=0) as (listener, recorder):
        good = NAMES.control_queue(3)
        bad = [
            b"\xff\xfe not utf-8",
            b"not json",
            b"[1, 2]",
            json.dumps({"v": 2, "hub": HUB, "queue": good}).encode(),
            json.dumps({"v": True, "hub": HUB, "queue": good}).encode(),
            json.dumps({"v": 1, "hub": HUB, "queue": 7}).encode(),
            json.dumps({"v": 1, "queue": good}).encode(),
        ]
        with raw_socket() as sock:
            for data in bad:
                send_raw(sock, listener.address, data)
            send_raw(sock, listener.address, encode_wake("OtherHub", "otherhub-control-03"))
            send_raw(sock, listener.address, encode_wake(HUB, "wakehub-control-09"))
            send_raw(sock, listener.address, encode_wake(HUB, "wakehub-history"))
            padded = {"v": 1, "hub": HUB, "queue": good, "pad": "x" * MAX_DATAGRAM_BYTES}
            send_raw(sock, listener.address, json.dumps(padded).encode())
            send_raw(sock, listener.address, encode_wake(HUB.upper(), good))  # hub: any case
            await recorder.wait_for(lambda calls: bool(calls))
        assert recorder.calls == [good]
        assert listener.stats["malformed"] == len(bad)
        assert listener.stats["other_hub"] == 1
        assert listener.stats["unknown_queue"] == 2
        assert listener.stats["oversized"] == 1
        assert listener.stats["received"] == len(bad) + 5
        assert listener.stats["delivered"] == 1


async def test_a_burst_collapses_into_a_leading_and_a_trailing_call() -> None:
    async with listening(min_interval=0.5) as (listener, recorder):
        first, other = NAMES.control_queue(0), NAMES.work_item_queue
        with raw_socket() as sock:
            for _ in range(20):
                send_raw(sock, listener.address, encode_wake(HUB, first))
            send_raw(sock, listener.address, encode_wake(HUB, other))  # not held back
            await recorder.wait_for(lambda calls: other in calls)
            assert recorder.calls == [first, other]
            await recorder.wait_for(lambda calls: len(calls) == 3)  # the trailing call
            assert recorder.calls == [first, other, first]
            await asyncio.sleep(0.6)
            assert len(recorder.calls) == 3
            assert listener.stats["collapsed"] == 19
            # Once the interval has passed, the next one is delivered at once.
            send_raw(sock, listener.address, encode_wake(HUB, first))
            await recorder.wait_for(lambda calls: len(calls) == 4)


async def test_a_failing_callback_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()

    def on_wake(queue: str) -> None:
        recorder(queue)
        raise RuntimeError("handler bug")

    listener = WakeListener(NAMES, on_wake, min_interval=0)
    await listener.start()
    try:
        with raw_socket() as sock:
            for _ in range(2):  # the listener keeps going after the first failure
                send_raw(sock, listener.address, encode_wake(HUB, NAMES.work_item_queue))
            await recorder.wait_for(lambda calls: len(calls) == 2)
    finally:
        await listener.close()
    assert "on_wake" in caplog.text


async def test_close_is_clean_and_idempotent() -> None:
    account = MemoryStorageAccount()
    async with listening() as (listener, _):
        a = PartitionManager.for_account(account, NAMES, "a", wake_address=listener.address)
        await a.create_rows()
        await a.step()
    # The listener is closed: the wake-up notified before aclose still goes out (to no
    # one, harmlessly); closing twice is fine, and a notify after close does nothing.
    sender = WakeSender.for_account(account, NAMES)
    sender.notify(NAMES.work_item_queue)
    await sender.aclose()
    await sender.aclose()
    sender.notify(NAMES.work_item_queue)
    assert sender.stats["sent"] == 1
    # Sync close works too (no refresh ever started).
    other = WakeSender.for_account(account, NAMES)
    other.close()
    other.close()
    await listener.close()  # twice is fine
    with pytest.raises(RuntimeError, match="not started"):
        _ = WakeListener(NAMES, print).address


async def test_listener_options() -> None:
    with pytest.raises(ValueError, match="advertise_host"):
        WakeListener(NAMES, print, host="0.0.0.0")
    async with listening(host="0.0.0.0", advertise_host="127.0.0.1") as (listener, recorder):
        assert listener.address.startswith("127.0.0.1:")
        with raw_socket() as sock:
            send_raw(sock, listener.address, encode_wake(HUB, NAMES.work_item_queue))
            await recorder.wait_for(lambda calls: bool(calls))
    only = [NAMES.control_queue(1)]
    async with listening(queues=only, min_interval=0) as (listener, recorder):
        with raw_socket() as sock:
            send_raw(sock, listener.address, encode_wake(HUB, NAMES.work_item_queue))
            send_raw(sock, listener.address, encode_wake(HUB, only[0]))
            await recorder.wait_for(lambda calls: bool(calls))
        assert recorder.calls == only
        assert listener.stats["unknown_queue"] == 1


def test_addresses() -> None:
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address("[::1]:9") == ("::1", 9)
    for bad in ("localhost:80", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":80", "x"):
        with pytest.raises(ValueError, match="numeric IP"):
            parse_address(bad)
    assert json.loads(encode_wake("H", "h-workitems")) == {
        "v": 1,
        "hub": "H",
        "queue": "h-workitems",
    }


async def test_closing_right_after_a_notify_still_sends_it() -> None:
    # A one-shot client (a CLI command) sends, notifies and closes at once: the wake-up
    # waits for the first read of the rows, and aclose lets that read finish first.
    account = MemoryStorageAccount()
    async with listening() as (listener, recorder):
        manager = PartitionManager.for_account(account, NAMES, "a", wake_address=listener.address)
        await manager.create_rows()
        await manager.step()
        queue = NAMES.control_queues[1]
        sender = WakeSender.for_account(account, NAMES)
        sender.notify(queue)
        await sender.aclose()
        await recorder.wait_for(lambda calls: queue in calls)
        assert sender.stats["sent"] == 1
