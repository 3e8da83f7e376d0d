"""Conformance suite for the storage primitives: every test runs against BOTH the in-memory
account and the Azure SDK implementation on Azurite, so the two stay interchangeable.

Time: the memory account gets a fake clock that :meth:`Env.advance` moves; on Azurite,
``advance`` really sleeps (a second or two). No test asserts on durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import AzureError
from azure.storage.queue.aio import QueueClient

from durable_azure.errors import (
    AlreadyExistsError,
    ConditionFailedError,
    ConfigurationError,
    MessageGoneError,
    NotFoundError,
    StorageError,
    TransactionFailedError,
)
from durable_azure.storage.azure_primitives import AzureStorageAccount
from durable_azure.storage.primitives import (
    AnyOf,
    BlobContainer,
    Cmp,
    Op,
    OpKind,
    Queue,
    StorageAccount,
    Table,
    TableOp,
    TableOpKind,
    UpdateMode,
)
from durable_azure.testing.memory import MemoryStorageAccount

# --- harness -----------------------------------------------------------------------------


class FakeClock:
    """A settable clock for the memory account."""

    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Env:
    """One implementation under test plus helpers for unique, cleaned-up resources."""

    kind: str
    account: StorageAccount
    clock: FakeClock | None = None
    connection_string: str | None = None
    cleanup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @staticmethod
    def unique(prefix: str) -> str:
        return f"{prefix}{uuid.uuid4().hex[:16]}"

    async def queue(self) -> Queue:
        q = self.account.queue(self.unique("q-"))
        self.cleanup.append(q.delete_queue)
        await q.create()
        return q

    async def table(self) -> Table:
        t = self.account.table(self.unique("t"))
        self.cleanup.append(t.delete_table)
        await t.create()
        return t

    async def container(self) -> BlobContainer:
        c = self.account.container(self.unique("c-"))
        self.cleanup.append(c.delete_container)
        await c.create()
        return c

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: move the fake clock, or really wait on Azurite."""
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            await asyncio.sleep(seconds)

    async def receive_soon(self, q: Queue, visibility: float = 30) -> list[Any]:
        """Receive, retrying briefly on Azurite where time and our sleep are not in lockstep."""
        for _ in range(20):
            got = await q.receive(32, visibility)
            if got or self.clock is not None:
                return got
            await asyncio.sleep(0.25)
        return []


@pytest.fixture(
    params=[
        "memory",
        pytest.param("azurite", marks=pytest.mark.azurite),
        pytest.param("azurite-sdk", marks=pytest.mark.azurite),
    ]
)
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """The account under test and Azurite's connection string (None for memory).

    ``azurite`` is the production setting (hot requests on the lean transport),
    ``azurite-sdk`` the same account with every request on the Azure SDK.
    A sync fixture on purpose: resolving the session ``azurite`` fixture from inside an
    async, function-scoped one could nest event loops.
    """
    if request.param == "memory":
        return "memory", None
    return request.param, str(request.getfixturevalue("azurite").connection_string)


@pytest.fixture
async def env(backend: tuple[str, str | None]) -> AsyncIterator[Env]:
    kind, connection_string = backend
    if connection_string is None:
        clock = FakeClock()
        e = Env("memory", MemoryStorageAccount(clock=clock), clock=clock)
    else:
        account = AzureStorageAccount.from_connection_string(
            connection_string, lean=kind == "azurite"
        )
        e = Env("azurite", account, connection_string=connection_string)
    try:
        yield e
    finally:
        for delete in reversed(e.cleanup):
            await delete()
        await e.account.close()


@contextlib.contextmanager
def raises_ours(cls: type[BaseException]) -> Iterator[pytest.ExceptionInfo[BaseException]]:
    """``pytest.raises`` that also insists the error is ours, never an azure.core one."""
    with pytest.raises(cls) as info:
        yield info
    assert not isinstance(info.value, AzureError)
    assert type(info.value).__module__ == "durable_azure.errors"


# --- queues ------------------------------------------------------------------------------


async def test_queue_send_receive_delete(env: Env) -> None:
    q = await env.queue()
    for i in range(3):
        await q.send(json.dumps({"n": i}))
    assert await q.approximate_count() == 3
    before = env.account.stats.snapshot().get(OpKind.QUEUE_RECEIVE.value, 0)
    got = await q.receive(32, 30)
    assert env.account.stats.snapshot()[OpKind.QUEUE_RECEIVE.value] == before + 1
    assert [json.loads(m.content)["n"] for m in got] == [0, 1, 2]
    assert all(m.dequeue_count == 1 and m.pop_receipt for m in got)
    assert all(m.inserted_on.tzinfo is not None for m in got)
    for m in got:
        assert m.pop_receipt is not None
        await q.delete(m.id, m.pop_receipt)
    assert await q.approximate_count() == 0
    assert await q.receive(32, 30) == []


async def test_queue_receive_takes_one_page_of_32(env: Env) -> None:
    q = await env.queue()
    for i in range(40):
        await q.send(str(i))
    before = env.account.stats.snapshot().get(OpKind.QUEUE_RECEIVE.value, 0)
    first = await q.receive(32, 30)
    assert len(first) == 32
    assert env.account.stats.snapshot()[OpKind.QUEUE_RECEIVE.value] == before + 1
    second = await q.receive(32, 30)
    assert len(second) == 8
    assert {m.content for m in first + second} == {str(i) for i in range(40)}
    assert len(await q.receive(5, 30)) == 0


async def test_queue_hidden_message_and_update_visibility(env: Env) -> None:
    q = await env.queue()
    await q.send('{"a": 1}')
    (m,) = await q.receive(1, 30)
    assert m.pop_receipt is not None
    assert await q.receive(32, 30) == []  # hidden
    assert await q.approximate_count() == 1  # still counted
    new_receipt = await q.update_visibility(m.id, m.pop_receipt, 0)
    assert new_receipt != m.pop_receipt
    with raises_ours(MessageGoneError):  # the receipt changed
        await q.delete(m.id, m.pop_receipt)
    with raises_ours(MessageGoneError):
        await q.update_visibility(m.id, m.pop_receipt, 10)
    (again,) = await env.receive_soon(q)
    assert again.id == m.id
    assert again.dequeue_count == 2
    assert again.pop_receipt not in (None, m.pop_receipt, new_receipt)
    with raises_ours(MessageGoneError):  # a receive also invalidates older receipts
        await q.delete(m.id, new_receipt)
    assert again.pop_receipt is not None
    await q.delete(again.id, again.pop_receipt)
    with raises_ours(MessageGoneError) as info:  # deleted: gone
        await q.delete(again.id, again.pop_receipt)
    assert isinstance(info.value, NotFoundError)


async def test_queue_visibility_timeout_expires(env: Env) -> None:
    q = await env.queue()
    await q.send("x")
    (m,) = await q.receive(1, 1)
    await env.advance(1.5)
    (again,) = await env.receive_soon(q)
    assert (again.id, again.dequeue_count) == (m.id, 2)
    assert m.pop_receipt is not None
    with raises_ours(MessageGoneError):
        await q.update_visibility(m.id, m.pop_receipt, 0)


async def test_queue_delayed_send(env: Env) -> None:
    q = await env.queue()
    await q.send("later", visibility_timeout=1)
    assert await q.peek(32) == []
    assert await q.receive(32, 30) == []
    assert await q.approximate_count() == 1
    await env.advance(1.5)
    (m,) = await env.receive_soon(q)
    assert m.content == "later"


async def test_queue_peek(env: Env) -> None:
    q = await env.queue()
    await q.send("a")
    await q.send("b")
    peeked = await q.peek(32)
    assert [m.content for m in peeked] == ["a", "b"]
    assert all(m.pop_receipt is None and m.dequeue_count == 0 for m in peeked)
    assert [m.content for m in await q.peek(1)] == ["a"]
    got = await q.receive(32, 30)
    assert [m.dequeue_count for m in got] == [1, 1]
    assert await q.peek(32) == []


async def test_queue_body_is_raw_json(env: Env) -> None:
    q = await env.queue()
    body = json.dumps({"text": "<tag> & 'quotes' \"dq\" ünïcødé ✓", "n": [1, 2]})
    await q.send(body)
    if env.connection_string is not None:
        # A plain SDK client (no decode policy) must see exactly our text, not base64.
        async with QueueClient.from_connection_string(env.connection_string, q.name) as raw:
            (stored,) = await raw.peek_messages(max_messages=1)
            assert stored.content == body
            assert stored.expires_on.year == 9999  # time_to_live=-1: never expires
    (m,) = await q.receive(1, 30)
    assert m.content == body


async def test_queue_limits_and_validation(env: Env) -> None:
    q = await env.queue()
    before = env.account.stats.snapshot()
    for bad in (-1, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="visibility"):
            await q.send("x", visibility_timeout=bad)
    with pytest.raises(ValueError, match="max_messages"):
        await q.receive(33, 30)
    with pytest.raises(ValueError, match="visibility"):
        await q.receive(1, 0)  # the service wants >= 1 s on receive
    with pytest.raises(ValueError, match="max_messages"):
        await q.peek(0)
    assert env.account.stats.snapshot() == before  # nothing was sent
    await q.send("x" * 65536)
    with raises_ours(StorageError) as info:
        await q.send("x" * 65537)
    assert info.value.status == 413  # type: ignore[attr-defined]


async def test_queue_missing_and_idempotent_admin(env: Env) -> None:
    q = env.account.queue(env.unique("q-"))
    with raises_ours(NotFoundError):
        await q.send("x")
    for call in (lambda: q.receive(1, 5), lambda: q.peek(1), q.approximate_count):
        with raises_ours(NotFoundError):
            await call()
    with raises_ours(NotFoundError) as info:
        await q.delete("id", "receipt")
    assert not isinstance(info.value, MessageGoneError)  # the queue is missing, not the message
    await q.delete_queue()  # missing: fine
    env.cleanup.append(q.delete_queue)
    await q.create()
    await q.create()  # exists: fine
    assert env.account.queue(q.name) is q
    assert env.account.stats.snapshot()[OpKind.QUEUE_ADMIN.value] == 3


# --- tables ------------------------------------------------------------------------------


async def test_table_insert_get_conflict(env: Env) -> None:
    t = await env.table()
    etag = await t.insert({"PartitionKey": "p", "RowKey": "r", "S": "v", "N": 7})
    assert etag
    e = await t.get("p", "r")
    assert e is not None
    assert dict(e.properties) == {"PartitionKey": "p", "RowKey": "r", "S": "v", "N": 7}
    assert (e.partition_key, e.row_key, e.etag) == ("p", "r", etag)
    with raises_ours(AlreadyExistsError) as info:
        await t.insert({"PartitionKey": "p", "RowKey": "r"})
    assert info.value.status == 409  # type: ignore[attr-defined]
    assert await t.get("p", "missing") is None
    sel = await t.get("p", "r", select=["N"])
    assert sel is not None
    assert dict(sel.properties) == {"PartitionKey": "p", "RowKey": "r", "N": 7}


async def test_table_upsert_merge_vs_replace(env: Env) -> None:
    t = await env.table()
    e1 = await t.upsert({"PartitionKey": "p", "RowKey": "r", "A": 1, "B": 2}, UpdateMode.MERGE)
    e2 = await t.upsert({"PartitionKey": "p", "RowKey": "r", "B": 3, "C": 4}, UpdateMode.MERGE)
    assert e1 != e2
    got = await t.get("p", "r")
    assert got is not None
    assert (got.get("A"), got.get("B"), got.get("C")) == (1, 3, 4)
    await t.upsert({"PartitionKey": "p", "RowKey": "r", "D": 5}, UpdateMode.REPLACE)
    got = await t.get("p", "r")
    assert got is not None
    assert dict(got.properties) == {"PartitionKey": "p", "RowKey": "r", "D": 5}


async def test_table_conditional_update_and_delete(env: Env) -> None:
    t = await env.table()
    key = {"PartitionKey": "p", "RowKey": "r"}
    etag1 = await t.insert({**key, "V": 1, "Keep": "k"})
    etag2 = await t.update({**key, "V": 2}, etag=etag1, mode=UpdateMode.MERGE)
    assert etag2 != etag1
    with raises_ours(ConditionFailedError) as info:
        await t.update({**key, "V": 3}, etag=etag1, mode=UpdateMode.MERGE)
    assert info.value.status == 412  # type: ignore[attr-defined]
    etag3 = await t.update({**key, "V": 4}, etag="*", mode=UpdateMode.REPLACE)
    got = await t.get("p", "r")
    assert got is not None
    assert got.etag == etag3
    assert dict(got.properties) == {**key, "V": 4}
    with raises_ours(NotFoundError):
        await t.update({"PartitionKey": "p", "RowKey": "nope"}, etag="*", mode=UpdateMode.MERGE)
    with raises_ours(ConditionFailedError):
        await t.delete("p", "r", etag=etag2)
    await t.delete("p", "r", etag=etag3)
    assert await t.get("p", "r") is None
    await t.delete("p", "r")  # missing: fine
    await t.delete("p", "r", etag=etag3)  # missing with an etag: also fine (SDK semantics)


async def _fill(t: Table) -> None:
    rows = [
        ("a", "1", {"Status": "Running", "N": 1, "Name": "it's"}),
        ("a", "2", {"Status": "Pending", "N": 5}),
        ("a", "3", {"Status": "Completed", "N": 10, "Name": "x"}),
        ("b", "1", {"Status": "Running", "N": 3}),
        ("b", "o'neil", {"Status": "Failed"}),
    ]
    for pk, rk, props in rows:
        await t.insert({"PartitionKey": pk, "RowKey": rk, **props})


def _keys(entities: list[Any]) -> list[tuple[str, str]]:
    return [(e.partition_key, e.row_key) for e in entities]


async def test_table_query_filters(env: Env) -> None:
    t = await env.table()
    await _fill(t)
    everything, token = await t.query()
    assert token is None
    assert _keys(everything) == [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1"), ("b", "o'neil")]
    part, _ = await t.query(partition_key="b")
    assert _keys(part) == [("b", "1"), ("b", "o'neil")]
    ranged, _ = await t.query(partition_key="a", where=[Cmp("N", Op.GT, 1), Cmp("N", Op.LE, 10)])
    assert _keys(ranged) == [("a", "2"), ("a", "3")]
    any_of = AnyOf((Cmp("Status", Op.EQ, "Running"), Cmp("Status", Op.EQ, "Pending")))
    running, _ = await t.query(where=[any_of])
    assert _keys(running) == [("a", "1"), ("a", "2"), ("b", "1")]
    quoted, _ = await t.query(where=[Cmp("Name", Op.EQ, "it's")])
    assert _keys(quoted) == [("a", "1")]
    by_key, _ = await t.query(where=[Cmp("RowKey", Op.EQ, "o'neil")])
    assert _keys(by_key) == [("b", "o'neil")]
    # A missing column never matches, not even with "ne".
    named, _ = await t.query(where=[Cmp("Name", Op.NE, "zzz")])
    assert _keys(named) == [("a", "1"), ("a", "3")]
    mismatched, _ = await t.query(where=[Cmp("N", Op.EQ, "1")])  # str vs int
    assert mismatched == []
    selected, _ = await t.query(partition_key="a", select=["Status"])
    assert dict(selected[0].properties) == {
        "PartitionKey": "a",
        "RowKey": "1",
        "Status": "Running",
    }
    assert all(e.etag for e in selected)
    injection, _ = await t.query(where=[Cmp("Name", Op.EQ, "x' or Name ne 'q")])
    assert injection == []


async def test_table_query_paging(env: Env) -> None:
    t = await env.table()
    for i in range(7):
        await t.insert({"PartitionKey": "p", "RowKey": f"r{i}", "N": i})
    pages: list[list[str]] = []
    token: str | None = None
    while True:
        page, token = await t.query(partition_key="p", page_size=3, continuation=token)
        pages.append([e.row_key for e in page])
        if token is None:
            break
        assert isinstance(token, str)
    assert [r for p in pages for r in p] == [f"r{i}" for i in range(7)]
    assert pages[0] == ["r0", "r1", "r2"]
    filtered, tok = await t.query(where=[Cmp("N", Op.GE, 2)], page_size=2)
    assert [e.row_key for e in filtered] == ["r2", "r3"]
    assert tok is not None
    rest, tok2 = await t.query(where=[Cmp("N", Op.GE, 2)], page_size=10, continuation=tok)
    assert [e.row_key for e in rest] == ["r4", "r5", "r6"]
    assert tok2 is None
    with pytest.raises(ValueError, match="continuation"):
        await t.query(continuation="not a token")
    with pytest.raises(ValueError, match="column"):
        await t.query(where=[Cmp("N eq 1 or N", Op.EQ, 1)])  # columns are not expressions
    with pytest.raises(ValueError, match="AnyOf"):
        await t.query(where=[AnyOf(())])


async def test_table_unbounded_query_follows_service_pages(env: Env) -> None:
    t = await env.table()
    for chunk in range(15):
        ops = [_op(TableOpKind.INSERT, f"r{chunk:02}{i:02}", N=i) for i in range(100)]
        await t.transaction(ops)
    before = env.account.stats.snapshot().get(OpKind.TABLE_QUERY.value, 0)
    rows, token = await t.query(partition_key="p")
    assert token is None
    assert len(rows) == 1500
    assert [e.row_key for e in rows] == sorted(e.row_key for e in rows)
    # The service pages by 1000, so that was two requests.
    assert env.account.stats.snapshot()[OpKind.TABLE_QUERY.value] == before + 2


async def test_table_value_round_trip(env: Env) -> None:
    t = await env.table()
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    cet = timezone(timedelta(hours=2))
    props = {
        "I32": 2**31 - 1,
        "Neg": -5,
        "I64": 2**40,
        "I64b": 2**31,
        "I64n": -(2**50),
        "F": 1.5,
        "B": True,
        "S": "text",
        "Bin": b"\x00\x01\xff",
        "When": when,
        "Local": when.astimezone(cet),
    }
    await t.insert({"PartitionKey": "p", "RowKey": "r", **props})
    got = await t.get("p", "r")
    assert got is not None
    for name, value in props.items():
        assert got.get(name) == value, name
        assert type(got.get(name)) is type(value), name
    assert got.get("Local").tzinfo == UTC
    by_i64, _ = await t.query(where=[Cmp("I64", Op.EQ, 2**40)])
    assert _keys(by_i64) == [("p", "r")]
    by_i64b, _ = await t.query(where=[Cmp("I64b", Op.EQ, 2**31)])
    assert _keys(by_i64b) == [("p", "r")]
    by_dt, _ = await t.query(
        where=[Cmp("When", Op.GE, when), Cmp("When", Op.LT, when + timedelta(days=1))]
    )
    assert _keys(by_dt) == [("p", "r")]
    later, _ = await t.query(where=[Cmp("When", Op.GT, when)])
    assert later == []
    await t.insert({"PartitionKey": "p", "RowKey": "enum", "Kind": OpKind.QUEUE_SEND})
    stored = await t.get("p", "enum")
    assert stored is not None
    assert stored.get("Kind") == "queue_send"  # the value, not "OpKind.QUEUE_SEND"
    with pytest.raises(ValueError, match="timezone-aware"):
        await t.insert({"PartitionKey": "p", "RowKey": "naive", "D": datetime(2024, 1, 1)})


async def test_table_limits(env: Env) -> None:
    t = await env.table()
    # 64 KiB per string property, measured in UTF-16: 32768 chars fit, 32769 do not.
    await t.insert({"PartitionKey": "p", "RowKey": "ok", "S": "x" * 32768})
    with raises_ours(StorageError) as info:
        await t.insert({"PartitionKey": "p", "RowKey": "big", "S": "x" * 32769})
    assert info.value.status == 400  # type: ignore[attr-defined]
    with raises_ours(StorageError) as info:
        await t.insert({"PartitionKey": "p", "RowKey": "a/b"})
    assert info.value.status == 400  # type: ignore[attr-defined]


async def test_table_missing(env: Env) -> None:
    t = env.account.table(env.unique("t"))
    with raises_ours(NotFoundError):
        await t.get("p", "r")
    with raises_ours(NotFoundError):
        await t.insert({"PartitionKey": "p", "RowKey": "r"})
    with raises_ours(NotFoundError):
        await t.query()
    with raises_ours(NotFoundError) as info:  # not a TransactionFailedError: no op failed
        await t.transaction([_op(TableOpKind.UPSERT_MERGE, "r")])
    assert not isinstance(info.value, TransactionFailedError)
    await t.delete("p", "r")  # the SDK swallows every 404 of a delete, even this one
    await t.delete_table()  # missing: fine
    env.cleanup.append(t.delete_table)
    await t.create()
    await t.create()  # exists: fine


# --- transactions ------------------------------------------------------------------------


def _op(kind: TableOpKind, rk: str, etag: str | None = None, **props: Any) -> TableOp:
    return TableOp(kind, {"PartitionKey": "p", "RowKey": rk, **props}, etag)


async def test_transaction_commits_mixed_ops(env: Env) -> None:
    t = await env.table()
    etag_a = await t.insert({"PartitionKey": "p", "RowKey": "a", "V": 1, "K": 1})
    await t.insert({"PartitionKey": "p", "RowKey": "d"})
    etags = await t.transaction(
        [
            _op(TableOpKind.INSERT, "n", V=1),
            _op(TableOpKind.UPDATE_MERGE, "a", etag_a, V=2),
            _op(TableOpKind.UPSERT_REPLACE, "u", V=3),
            _op(TableOpKind.DELETE, "d"),
        ]
    )
    assert len(etags) == 4
    assert all(etags[:3])
    assert etags[3] == ""
    rows, _ = await t.query(partition_key="p")
    assert {e.row_key: e.get("V") for e in rows} == {"a": 2, "n": 1, "u": 3}
    a = next(e for e in rows if e.row_key == "a")
    assert a.get("K") == 1
    assert a.etag == etags[1]


async def test_transaction_is_atomic_and_reports_index(env: Env) -> None:
    t = await env.table()
    etag = await t.insert({"PartitionKey": "p", "RowKey": "a", "V": 1})
    with raises_ours(TransactionFailedError) as info:
        await t.transaction(
            [
                _op(TableOpKind.INSERT, "b"),
                _op(TableOpKind.INSERT, "a"),
                _op(TableOpKind.UPSERT_MERGE, "c"),
            ]
        )
    err = info.value
    assert isinstance(err, TransactionFailedError)
    assert err.index == 1
    assert isinstance(err.cause, AlreadyExistsError)
    await t.update({"PartitionKey": "p", "RowKey": "a", "V": 2}, etag="*", mode=UpdateMode.MERGE)
    with raises_ours(TransactionFailedError) as info:
        await t.transaction(
            [_op(TableOpKind.UPSERT_MERGE, "c"), _op(TableOpKind.UPDATE_MERGE, "a", etag, V=9)]
        )
    err = info.value
    assert isinstance(err, TransactionFailedError)
    assert err.index == 1
    assert isinstance(err.cause, ConditionFailedError)
    with raises_ours(TransactionFailedError) as info:
        await t.transaction([_op(TableOpKind.UPDATE_REPLACE, "zz", "*")])
    assert isinstance(info.value, TransactionFailedError)
    assert isinstance(info.value.cause, NotFoundError)
    rows, _ = await t.query()
    assert _keys(rows) == [("p", "a")]
    assert rows[0].get("V") == 2


async def test_transaction_same_row_twice(env: Env) -> None:
    t = await env.table()
    with raises_ours(TransactionFailedError) as info:
        await t.transaction([_op(TableOpKind.UPSERT_MERGE, "x"), _op(TableOpKind.DELETE, "x")])
    err = info.value
    assert isinstance(err, TransactionFailedError)
    assert type(err.cause) is StorageError
    assert err.cause.status == 400
    assert (await t.query())[0] == []


async def test_transaction_limits(env: Env) -> None:
    t = await env.table()
    etags = await t.transaction([_op(TableOpKind.INSERT, f"r{i:03}") for i in range(100)])
    assert len(etags) == 100
    before = env.account.stats.snapshot()
    with pytest.raises(ValueError, match="transaction needs"):
        await t.transaction([_op(TableOpKind.UPSERT_MERGE, f"s{i:03}") for i in range(101)])
    with pytest.raises(ValueError, match="transaction needs"):
        await t.transaction([])
    mixed = [
        _op(TableOpKind.UPSERT_MERGE, "x"),
        TableOp(TableOpKind.UPSERT_MERGE, {"PartitionKey": "q", "RowKey": "x"}),
    ]
    with pytest.raises(ValueError, match="one PartitionKey"):
        await t.transaction(mixed)
    assert env.account.stats.snapshot() == before  # rejected before sending
    rows, _ = await t.query()
    assert len(rows) == 100


# --- blobs -------------------------------------------------------------------------------


async def test_blobs(env: Env) -> None:
    c = await env.container()
    assert c.url.startswith(("http://", "https://"))
    assert c.url.endswith("/" + c.name)
    await c.upload("inst/a.json", b"one")
    await c.upload("inst/b.json", b"two")
    await c.upload("other/c.json", b"three")
    assert await c.download("inst/a.json") == b"one"
    await c.upload("inst/a.json", b"overwritten")
    assert await c.download("inst/a.json") == b"overwritten"
    assert await c.list_names("inst/") == ["inst/a.json", "inst/b.json"]
    assert await c.list_names() == ["inst/a.json", "inst/b.json", "other/c.json"]
    await c.delete("inst/a.json")
    await c.delete("inst/a.json")  # missing: fine
    with raises_ours(NotFoundError):
        await c.download("inst/a.json")
    assert await c.list_names("inst/") == ["inst/b.json"]
    await c.create()  # exists: fine


async def test_blob_container_missing(env: Env) -> None:
    c = env.account.container(env.unique("c-"))
    with raises_ours(NotFoundError):
        await c.upload("x", b"x")
    with raises_ours(NotFoundError):
        await c.download("x")
    await c.delete_container()  # missing: fine


# --- construction (no network) ------------------------------------------------------------


async def test_azure_account_construction() -> None:
    dev = AzureStorageAccount.from_connection_string("UseDevelopmentStorage=true")
    assert dev.container("c1x").url == "http://127.0.0.1:10000/devstoreaccount1/c1x"
    await dev.close()
    cred = AzureNamedKeyCredential("acct", "a2V5")  # any credential object; never used here
    derived = AzureStorageAccount.from_credential(cred, account_name="acct")
    assert derived.container("box").url == "https://acct.blob.core.windows.net/box"
    assert derived.queue("q1x") is derived.queue("q1x")
    await derived.close()
    explicit = AzureStorageAccount.from_credential(
        cred,
        blob_url="https://blobs.example/acct",
        queue_url="https://q.example/acct",
        table_url="https://t.example/acct",
    )
    assert explicit.container("box").url == "https://blobs.example/acct/box"
    await explicit.close()
    with pytest.raises(ConfigurationError):
        AzureStorageAccount.from_credential(cred)
    with pytest.raises(ConfigurationError):
        AzureStorageAccount.from_connection_string("not a connection string")


# --- memory-only: the test hooks ---------------------------------------------------------


async def test_memory_entity_size_limit() -> None:
    # Real Azure rejects entities over 1 MiB (400 EntityTooLarge); Azurite 3.35 does not
    # (measured: 40 properties of 64 KiB accepted), so only the memory account checks it.
    account = MemoryStorageAccount()
    t = account.table("sizes")
    await t.create()
    huge = {f"P{i}": b"y" * 65536 for i in range(17)}
    with raises_ours(StorageError) as info:
        await t.insert({"PartitionKey": "p", "RowKey": "huge", **huge})
    assert info.value.status == 400  # type: ignore[attr-defined]
    assert await t.get("p", "huge") is None


async def test_memory_fault_injection() -> None:
    account = MemoryStorageAccount()
    q = account.queue("faulty")
    await q.create()
    account.fail_next(OpKind.QUEUE_SEND, StorageError("boom", status=503), name="faulty")
    with raises_ours(StorageError):
        await q.send("lost")
    await q.send("kept")  # the hook removed itself
    assert account.faults == []
    assert [m.content for m in await q.peek(32)] == ["kept"]
    calls: list[tuple[OpKind, str]] = []
    account.faults.append(lambda kind, name: calls.append((kind, name)))
    await q.approximate_count()
    assert calls == [(OpKind.QUEUE_PEEK, "faulty")]
