"""The lean transport's own logic: retries, answers read, credentials.

The requests go to a small aiohttp server on loopback that plays the storage service's
part for what is checked here (statuses, dropped connections, bodies). That the
signatures and formats are what the real service accepts is shown against Azurite, in
``tests/integration/test_primitives.py`` (every test runs on the lean transport and on
the SDK) and ``tests/integration/test_rest_transport.py``.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from durable_azure.errors import (
    AlreadyExistsError,
    ConditionFailedError,
    MessageGoneError,
    NotFoundError,
    StorageError,
)
from durable_azure.storage import rest

KEY = base64.b64encode(b"k" * 32).decode()


@dataclass
class FakeService:
    """Answers each request with the next scripted reply: ``(status, body)``, or
    ``"drop"`` to close the connection without an answer."""

    replies: list[tuple[int, bytes] | str]
    seen: list[web.Request] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        reply = self.replies.pop(0) if self.replies else (500, b"")
        if reply == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client
        assert isinstance(reply, tuple)
        status, body = reply
        headers = {"ETag": 'W/"etag-1"', "x-ms-popreceipt": "receipt-2"}
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
async def service() -> AsyncIterator[tuple[FakeService, str]]:
    fake = FakeService([])
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield fake, f"http://127.0.0.1:{port}/acct"
    finally:
        await runner.cleanup()


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rest, "RETRY_DELAYS", (0.0, 0.0, 0.0, 0.0))


async def _queue(
    service: tuple[FakeService, str], replies: list[tuple[int, bytes] | str]
) -> tuple[FakeService, rest.RestQueueOps, rest.RestClient]:
    fake, url = service
    fake.replies = replies
    client = rest.RestClient(rest.SharedKeyAuth("acct", KEY))
    return fake, rest.RestQueueOps(client, f"{url}/work"), client


async def test_transient_statuses_are_retried(service: tuple[FakeService, str]) -> None:
    fake, queue, client = await _queue(service, [(503, b""), (500, b""), (201, b"")])
    await queue.send("{}", 0)
    await client.close()
    assert len(fake.seen) == 3
    assert {r.path for r in fake.seen} == {"/acct/work/messages"}


async def test_a_persistent_failure_is_an_error_after_the_retries(
    service: tuple[FakeService, str],
) -> None:
    fake, queue, client = await _queue(service, [(503, b"")] * 10)
    with pytest.raises(StorageError) as info:
        await queue.send("{}", 0)
    await client.close()
    assert info.value.status == 503
    assert "send to work" in str(info.value)
    assert len(fake.seen) == 1 + len(rest.RETRY_DELAYS)


async def test_a_dropped_connection_is_retried_at_once(
    service: tuple[FakeService, str],
) -> None:
    fake, queue, client = await _queue(service, ["drop", (204, b"")])
    await queue.delete("m1", "r1")
    await client.close()
    assert len(fake.seen) == 2


async def test_an_unreachable_service_is_a_storage_error() -> None:
    client = rest.RestClient(rest.SharedKeyAuth("acct", KEY))
    # Port 9 on loopback: nothing listens (connection refused), for every retry.
    queue = rest.RestQueueOps(client, "http://127.0.0.1:9/acct/work")
    with pytest.raises(StorageError) as info:
        await queue.receive(1, 30)
    await client.close()
    assert "receive from work" in str(info.value)
    assert "Connect" in str(info.value)


async def test_a_client_error_is_not_retried(service: tuple[FakeService, str]) -> None:
    body = b"<?xml version='1.0'?><Error><Code>QueueNotFound</Code><Message>no</Message></Error>"
    fake, queue, client = await _queue(service, [(404, body)])
    with pytest.raises(NotFoundError) as info:
        await queue.receive(1, 30)
    await client.close()
    assert info.value.code == "QueueNotFound"
    assert not isinstance(info.value, MessageGoneError)
    assert len(fake.seen) == 1


async def test_a_message_delete_or_update_of_a_gone_message(
    service: tuple[FakeService, str],
) -> None:
    gone = b"<Error><Code>MessageNotFound</Code><Message>gone</Message></Error>"
    stale = b"<Error><Code>PopReceiptMismatch</Code><Message>stale</Message></Error>"
    fake, queue, client = await _queue(service, [(404, gone), (400, stale), (204, b"")])
    with pytest.raises(MessageGoneError):
        await queue.delete("m1", "r1")
    with pytest.raises(MessageGoneError):
        await queue.update_visibility("m1", "r1", 5)
    assert await queue.update_visibility("m1", "r1", 5) == "receipt-2"
    await client.close()
    update = fake.seen[-1]
    assert update.method == "PUT"
    assert update.query["popreceipt"] == "r1"
    assert update.query["visibilitytimeout"] == "5"


async def test_requests_carry_their_signature_and_version(
    service: tuple[FakeService, str],
) -> None:
    fake, queue, client = await _queue(service, [(201, b"")])
    await queue.send("<a & b>", 7)
    await client.close()
    sent = fake.seen[0]
    assert sent.headers["Authorization"].startswith("SharedKey acct:")
    assert sent.headers["x-ms-version"] == rest.QUEUE_API_VERSION
    assert sent.headers["x-ms-date"].endswith("GMT")
    assert sent.query["messagettl"] == "-1"
    assert sent.query["visibilitytimeout"] == "7"


# --- answers read ------------------------------------------------------------------------


def test_messages_are_read_from_the_xml_answer() -> None:
    body = (
        b"<?xml version='1.0' encoding='utf-8'?><QueueMessagesList>"
        b"<QueueMessage><MessageId>id-1</MessageId>"
        b"<InsertionTime>Wed, 25 Nov 2026 10:00:00 GMT</InsertionTime>"
        b"<ExpirationTime>Fri, 31 Dec 9999 23:59:59 GMT</ExpirationTime>"
        b"<PopReceipt>pr-1</PopReceipt>"
        b"<TimeNextVisible>Wed, 25 Nov 2026 10:00:30 GMT</TimeNextVisible>"
        b"<DequeueCount>3</DequeueCount>"
        b"<MessageText>{&quot;a&quot;: &lt;1&gt; &amp;}</MessageText></QueueMessage>"
        b"</QueueMessagesList>"
    )
    (message,) = rest.parse_messages(body)
    assert message.id == "id-1"
    assert message.pop_receipt == "pr-1"
    assert message.content == '{"a": <1> &}'
    assert message.dequeue_count == 3
    assert message.inserted_on == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert message.next_visible_on == datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC)
    assert rest.parse_messages(b"<QueueMessagesList />") == []


def test_an_entity_is_read_with_its_annotated_types() -> None:
    guid = uuid.uuid4()
    entity = rest.entity_from_json(
        {
            "odata.etag": "W/\"datetime'1'\"",
            "PartitionKey": "p",
            "RowKey": "r",
            "Timestamp": "2026-11-25T10:00:00.1234567Z",
            "Timestamp@odata.type": "Edm.DateTime",
            "When": "2026-11-25T10:00:00.1234567Z",
            "When@odata.type": "Edm.DateTime",
            "Big": "9007199254740993",
            "Big@odata.type": "Edm.Int64",
            "Ratio": "NaN",
            "Ratio@odata.type": "Edm.Double",
            "Blob": base64.b64encode(b"\x00\x01").decode(),
            "Blob@odata.type": "Edm.Binary",
            "Id": str(guid),
            "Id@odata.type": "Edm.Guid",
            "Small": 5,
            "Text": "t",
            "Flag": True,
        }
    )
    props = entity.properties
    assert entity.etag == "W/\"datetime'1'\""
    assert "Timestamp" not in props  # the table's own column, as with the SDK
    assert props["When"] == datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)
    assert props["Big"] == 9007199254740993
    assert props["Ratio"] != props["Ratio"]  # NaN
    assert props["Blob"] == b"\x00\x01"
    assert props["Id"] == guid
    assert (props["Small"], props["Text"], props["Flag"]) == (5, "t", True)


def test_errors_are_classified_by_status_and_code() -> None:
    assert isinstance(rest.error_for("x", 404, "ResourceNotFound"), NotFoundError)
    assert isinstance(rest.error_for("x", 409, "EntityAlreadyExists"), AlreadyExistsError)
    assert isinstance(rest.error_for("x", 412, "UpdateConditionNotSatisfied"), ConditionFailedError)
    gone = rest.error_for("x", 404, "MessageNotFound", message_op=True)
    assert isinstance(gone, MessageGoneError)
    queue_gone = rest.error_for("x", 404, "QueueNotFound", message_op=True)
    assert not isinstance(queue_gone, MessageGoneError)
    assert isinstance(queue_gone, NotFoundError)
    other = rest.error_for("get p/r from T", 400, None, "bad request body")
    assert type(other) is StorageError
    assert str(other) == "get p/r from T: HTTP 400: bad request body"


# --- credentials -------------------------------------------------------------------------


@dataclass
class _Token:
    token: str
    expires_on: int


class _Credential:
    """A token credential (sync or async ``get_token``) counting its calls."""

    def __init__(self, lifetime: float, *, is_async: bool) -> None:
        self.calls: list[tuple[str, ...]] = []
        self._lifetime = lifetime
        self.get_token: Callable[..., Any] = self._async if is_async else self._sync

    def _sync(self, *scopes: str) -> _Token:
        self.calls.append(scopes)
        return _Token(f"t{len(self.calls)}", int(time.time() + self._lifetime))

    async def _async(self, *scopes: str) -> _Token:
        return self._sync(*scopes)


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_bearer_token_is_cached_until_near_its_expiry(is_async: bool) -> None:
    credential = _Credential(3600, is_async=is_async)
    auth = rest.TokenAuth(credential)
    requests = [rest.Request("GET", "queue", "/acct/q/messages") for _ in range(3)]
    await asyncio.gather(*(auth.authorize(r) for r in requests))
    assert credential.calls == [(rest.STORAGE_SCOPE,)]
    assert {r.headers["Authorization"] for r in requests} == {"Bearer t1"}

    short = _Credential(rest.TOKEN_REFRESH_MARGIN - 1, is_async=is_async)
    auth = rest.TokenAuth(short)
    for _ in range(2):
        await auth.authorize(rest.Request("GET", "table", "/acct/T()"))
    assert len(short.calls) == 2  # within the margin: fetched again


async def test_a_sas_is_appended_to_the_query(service: tuple[FakeService, str]) -> None:
    fake, url = service
    fake.replies = [(200, b'{"value": []}')]
    client = rest.RestClient(rest.SasAuth("?sv=2021&sig=a%2Bb"))
    table = rest.RestTableOps(client, url, "Tab")
    entities, following = await table.query("PartitionKey eq 'x'", None, 10, None)
    await client.close()
    assert (entities, following) == ([], None)
    sent = fake.seen[0]
    assert sent.query["sig"] == "a+b"
    assert sent.query["$filter"] == "PartitionKey eq 'x'"
    assert sent.query["$top"] == "10"
    assert "Authorization" not in sent.headers


async def test_a_credential_that_fails_is_a_storage_error_naming_it() -> None:
    class Broken:
        async def get_token(self, *scopes: str) -> _Token:
            raise RuntimeError("no identity endpoint")

    with pytest.raises(StorageError, match="from Broken: RuntimeError: no identity endpoint"):
        await rest.TokenAuth(Broken()).authorize(rest.Request("GET", "queue", "/a/q"))
