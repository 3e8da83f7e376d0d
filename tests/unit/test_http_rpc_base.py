"""The keyless RPC base (for a function app's own client) is for loopback callers only."""

from __future__ import annotations

import httpx
import pytest

from durable_azure import DurableClient
from durable_azure.http import create_management_app
from durable_azure.storage.names import TaskHubNames
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.testing.memory import MemoryStorageAccount

KEY = "the-key"


async def get(peer: str, path: str, *, rpc_requires_key: bool) -> httpx.Response:
    account = MemoryStorageAccount()
    provider = AzureStorageProvider(account, TaskHubNames("rpchub"))
    await provider.create_if_not_exists()
    app = create_management_app(DurableClient(provider), key=KEY, rpc_requires_key=rpc_requires_key)
    transport = httpx.ASGITransport(app=app, client=(peer, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as http:
        return await http.get(path)


@pytest.mark.parametrize(
    ("peer", "path", "rpc_requires_key", "status"),
    [
        ("127.0.0.1", "/durabletask/instances/", False, 200),  # the app's own client
        ("::1", "/durabletask/instances/", False, 200),
        ("10.1.2.3", "/durabletask/instances/", False, 403),  # anyone else: no
        ("10.1.2.3", f"/durabletask/instances/?code={KEY}", False, 200),  # unless keyed
        ("127.0.0.1", "/durabletask/instances/", True, 401),  # a DurableApp server
        ("127.0.0.1", "/runtime/webhooks/durabletask/instances", False, 401),  # public base
    ],
)
async def test_rpc_base_access(peer: str, path: str, rpc_requires_key: bool, status: int) -> None:
    response = await get(peer, path, rpc_requires_key=rpc_requires_key)
    assert response.status_code == status, response.text
