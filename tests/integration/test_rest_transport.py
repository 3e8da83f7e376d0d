"""The lean transport against Azurite: a SAS connection string, a wrong key, and which
requests take which path.

Every test of ``test_primitives.py`` already runs on the lean transport (account key)
and on the SDK; these add the credentials and choices those do not cover.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from durable_azure.errors import ConfigurationError, StorageError
from durable_azure.settings import StorageSettings
from durable_azure.storage import rest
from durable_azure.storage.azure_primitives import AzureStorageAccount
from durable_azure.storage.primitives import OpKind, TableOp, TableOpKind, UpdateMode

pytestmark = pytest.mark.azurite

_WRONG_KEY = "d3Jvbmcga2V5IGZvciB0aGUgdGVzdHMgb25seQ=="


def _parts(connection_string: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)


def _sas_connection_string(connection_string: str) -> str:
    parts = _parts(connection_string)
    sas = generate_account_sas(
        parts["AccountName"],
        parts["AccountKey"],
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(
            read=True,
            write=True,
            delete=True,
            list=True,
            add=True,
            create=True,
            update=True,
            process=True,
        ),
        expiry=datetime.now(UTC) + timedelta(hours=1),
        services="bqt",
    )
    return ";".join(
        [
            f"BlobEndpoint={parts['BlobEndpoint']}",
            f"QueueEndpoint={parts['QueueEndpoint']}",
            f"TableEndpoint={parts['TableEndpoint']}",
            f"SharedAccessSignature={sas}",
        ]
    )


async def _exercise(account: AzureStorageAccount) -> None:
    """Every hot request once, checked."""
    suffix = uuid.uuid4().hex[:12]
    queue, table = account.queue(f"rest-{suffix}"), account.table(f"Rest{suffix}")
    await queue.create()
    await table.create()
    try:
        await queue.send('{"n": 1}')
        (message,) = await queue.receive(1, 30)
        assert message.content == '{"n": 1}'
        receipt = await queue.update_visibility(message.id, message.pop_receipt or "", 0)
        await queue.delete(message.id, receipt)
        assert await queue.peek(1) == []

        etag = await table.insert({"PartitionKey": "p", "RowKey": "a", "N": 1})
        etag = await table.update(
            {"PartitionKey": "p", "RowKey": "a", "M": 2}, etag=etag, mode=UpdateMode.MERGE
        )
        await table.upsert({"PartitionKey": "p", "RowKey": "b", "N": 3}, UpdateMode.REPLACE)
        await table.transaction(
            [TableOp(TableOpKind.INSERT, {"PartitionKey": "p", "RowKey": "c", "N": 4})]
        )
        got = await table.get("p", "a")
        assert got is not None
        assert (got.get("N"), got.get("M"), got.etag) == (1, 2, etag)
        rows, _ = await table.query(partition_key="p")
        assert [r.row_key for r in rows] == ["a", "b", "c"]
        await table.delete("p", "a", etag=etag)
        assert await table.get("p", "a") is None
    finally:
        await queue.delete_queue()
        await table.delete_table()


async def test_a_sas_connection_string_runs_every_hot_request(azurite: object) -> None:
    connection_string = _sas_connection_string(azurite.connection_string)  # type: ignore[attr-defined]
    account = AzureStorageAccount.from_connection_string(connection_string)
    assert isinstance(account._lean, rest.RestClient)
    assert isinstance(account._lean._auth, rest.SasAuth)
    try:
        await _exercise(account)
    finally:
        await account.close()
    # Every hot request was counted once, whichever transport sent it.
    stats = account.stats.snapshot()
    assert stats[OpKind.QUEUE_SEND.value] == 1
    assert stats[OpKind.TABLE_BATCH.value] == 1


async def test_the_sdk_transport_can_be_chosen(azurite: object) -> None:
    connection_string: str = azurite.connection_string  # type: ignore[attr-defined]
    settings = StorageSettings(connection_string=connection_string, transport="sdk")
    account = settings.open_account()
    assert isinstance(account, AzureStorageAccount)
    assert account._lean is None
    try:
        await _exercise(account)
    finally:
        await account.close()
    with pytest.raises(ConfigurationError, match="unknown storage transport 'fast'"):
        StorageSettings(connection_string=connection_string, transport="fast")


async def test_a_wrong_account_key_is_the_same_clear_error_on_both_transports(
    azurite: object,
) -> None:
    connection_string: str = azurite.connection_string  # type: ignore[attr-defined]
    wrong = re.sub(r"AccountKey=[^;]+", f"AccountKey={_WRONG_KEY}", connection_string)
    seen: dict[bool, list[tuple[str, int | None, str | None]]] = {}
    for lean in (True, False):
        account = AzureStorageAccount.from_connection_string(wrong, lean=lean)
        errors = []
        try:
            with pytest.raises(StorageError) as sent:
                await account.queue("rest-never").send("{}")
            errors.append(sent.value)
            with pytest.raises(StorageError) as read:
                await account.table("RestNever").get("p", "r")
            errors.append(read.value)
        finally:
            await account.close()
        seen[lean] = [(str(e).split(":")[0], e.status, e.code) for e in errors]
    assert seen[True] == seen[False]
    (send_what, send_status, send_code), (get_what, get_status, get_code) = seen[True]
    assert (send_what, send_status) == ("send to rest-never", 403)
    assert (get_what, get_status) == ("get p/r from RestNever", 403)
    # Azurite names the queue's failure AuthenticationFailed, the table's AuthorizationFailure.
    assert {send_code, get_code} <= {"AuthenticationFailed", "AuthorizationFailure"}
