"""Function apps written with azure-functions-durable run unchanged on a real Worker.

Each sample under ``tests/function_apps/`` is loaded with ``load_function_app``; its
orchestrators and activities run in a real :class:`Worker` on Azurite. The HTTP tests
serve the app's HTTP triggers next to the management API (``create_management_app``) on a
real uvicorn server: the starters use the SDK's own ``DurableOrchestrationClient``, which
talks HTTP to ``/durabletask/``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from durable_azure import DurableClient, OrchestrationStatus, Worker, WorkerOptions
from durable_azure.functions import FunctionAppAdapter, load_function_app
from durable_azure.http import create_management_app

pytestmark = pytest.mark.azurite

APPS = Path(__file__).resolve().parents[1] / "function_apps"
WAIT = 60.0  # seconds: an upper bound so a broken build fails instead of hanging


@asynccontextmanager
async def running(
    adapter: FunctionAppAdapter, azurite: Any, task_hub: str
) -> AsyncIterator[DurableClient]:
    """A worker for the app's durable functions, and a client, on ``task_hub``."""
    app = adapter.durable_app
    worker = Worker(
        app,
        connection_string=azurite.connection_string,
        task_hub=task_hub,
        options=WorkerOptions(max_poll_interval=0.5),
    )
    await worker.start()
    client = DurableClient.from_app(
        app, connection_string=azurite.connection_string, task_hub=task_hub
    )
    try:
        yield client
    finally:
        await client.close()
        await worker.stop()


async def finish(client: DurableClient, instance_id: str) -> Any:
    status = await client.wait_for_completion(instance_id, timeout=WAIT)
    assert status.runtime_status is OrchestrationStatus.Completed, status.to_json()
    return status


# --- orchestrators and activities through the Worker ---------------------------------------


async def test_function_chaining(azurite: Any, task_hub: str) -> None:
    adapter = load_function_app(str(APPS / "function_chaining"))
    async with running(adapter, azurite, task_hub) as client:
        default = await client.start_new("hello_orchestrator")
        given = await client.start_new("hello_orchestrator", client_input=["Oslo", "Lima", "Rome"])
        assert (await finish(client, default)).output == [
            "Hello Seattle",
            "Hello Tokyo",
            "Hello London",
        ]
        assert (await finish(client, given)).output == ["Hello Oslo", "Hello Lima", "Hello Rome"]


async def test_fan_out_fan_in(azurite: Any, task_hub: str) -> None:
    adapter = load_function_app(str(APPS / "fan_out_fan_in"))
    async with running(adapter, azurite, task_hub) as client:
        instance_id = await client.start_new("fan_out_fan_in", client_input=5)
        status = await finish(client, instance_id)
    assert status.output == {
        "items": 5,
        "outputs": [10, 20, 30, 40, 50],
        "total": 150,
        # GetWorkBatch declares `context`, so it got an azure.functions.Context.
        "sources": ["GetWorkBatch"],
    }


async def test_human_interaction_approved(azurite: Any, task_hub: str) -> None:
    adapter = load_function_app(str(APPS / "human_interaction"))
    async with running(adapter, azurite, task_hub) as client:
        instance_id = await client.start_new(
            "approval_orchestrator", client_input={"item": "laptop", "timeout_seconds": 3600}
        )
        await client.raise_event(instance_id, "ApprovalEvent", {"approved": True})
        status = await finish(client, instance_id)
    assert status.output == "approved"
    assert status.custom_status == {"stage": "decided"}


async def test_human_interaction_times_out(azurite: Any, task_hub: str) -> None:
    adapter = load_function_app(str(APPS / "human_interaction"))
    async with running(adapter, azurite, task_hub) as client:
        instance_id = await client.start_new(
            "approval_orchestrator", client_input={"item": "desk", "timeout_seconds": 1}
        )
        status = await finish(client, instance_id)
    assert status.output == "escalated desk"
    assert status.custom_status == {"stage": "escalated"}


async def test_eternal_counter_continues_as_new(azurite: Any, task_hub: str) -> None:
    adapter = load_function_app(str(APPS / "eternal_counter"))
    async with running(adapter, azurite, task_hub) as client:
        instance_id = await client.start_new(
            "eternal_counter", "counter-1", client_input={"count": 0, "limit": 4}
        )
        status = await finish(client, instance_id)
    assert status.output == {"count": 4, "instance": "counter-1"}
    assert status.custom_status == {"count": 4}
    assert status.input_ == {"count": 3, "limit": 4}  # the last execution's input


async def test_blueprint_app_with_sub_orchestrations(azurite: Any, task_hub: str) -> None:
    adapter = load_function_app(str(APPS / "blueprint_app"))
    async with running(adapter, azurite, task_hub) as client:
        instance_id = await client.start_new("greet_all", "greet", client_input=["ada", "bob"])
        status = await finish(client, instance_id)
        child = await client.get_status("greet-1")
    assert status.output == {"joined": "HELLO ADA! / HELLO BOB!", "parents": ["greet", "greet"]}
    assert child.name == "GreetingOrchestration"
    assert child.output == {"greeting": "HELLO BOB!", "parent": "greet"}


# --- HTTP triggers next to the management API -----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serving(
    adapter: FunctionAppAdapter,
    client: DurableClient,
    task_hub: str,
    *,
    function_key: str | None = None,
) -> AsyncIterator[str]:
    """The management API plus the app's HTTP triggers on a real server; yields its URL."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    routes = adapter.http_routes(
        f"{origin}/durabletask/", task_hub=task_hub, function_key=function_key
    )
    asgi = create_management_app(
        client,
        extra_routes=routes,
        orchestrator_names=lambda: adapter.orchestrators.keys(),
    )
    server = uvicorn.Server(
        uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.02)
        yield origin
    finally:
        server.should_exit = True
        await task
        await adapter.aclose()  # the SDK's shared aiohttp session belongs to this loop


async def poll_until_done(http: httpx.AsyncClient, url: str) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        response = await http.get(url)
        if response.status_code != 202:
            return response
        assert asyncio.get_running_loop().time() < deadline, response.json()
        await asyncio.sleep(0.2)


async def test_http_starter_full_flow(azurite: Any, task_hub: str) -> None:
    adapter = load_function_app(str(APPS / "function_chaining"))
    async with (
        running(adapter, azurite, task_hub) as client,
        serving(adapter, client, task_hub) as origin,
        httpx.AsyncClient(timeout=WAIT) as http,
    ):
        started = await http.post(
            f"{origin}/api/orchestrators/hello_orchestrator", json=["Kyiv", "Baku", "Riga"]
        )
        assert started.status_code == 202, started.text
        body = started.json()
        assert started.headers["location"] == body["statusQueryGetUri"]
        assert body["statusQueryGetUri"].startswith(
            f"{origin}/runtime/webhooks/durabletask/instances/{body['id']}?"
        )
        assert {"sendEventPostUri", "terminatePostUri", "purgeHistoryDeleteUri"} <= body.keys()

        done = await poll_until_done(http, body["statusQueryGetUri"])
        assert done.status_code == 200, done.text
        status = done.json()
        assert status["runtimeStatus"] == "Completed"
        assert status["output"] == ["Hello Kyiv", "Hello Baku", "Hello Riga"]


async def test_http_approval_through_client_raise_event(azurite: Any, task_hub: str) -> None:
    adapter = load_function_app(str(APPS / "human_interaction"))
    async with (
        running(adapter, azurite, task_hub) as client,
        serving(adapter, client, task_hub) as origin,
        httpx.AsyncClient(timeout=WAIT) as http,
    ):
        started = await http.post(
            f"{origin}/api/approvals", json={"item": "chair", "timeout_seconds": 3600}
        )
        assert started.status_code == 202, started.text
        instance_id = started.json()["id"]
        approved = await http.post(
            f"{origin}/api/approvals/{instance_id}/approve", json={"approved": True}
        )
        assert approved.status_code == 202, approved.text
        done = await poll_until_done(http, started.json()["statusQueryGetUri"])
    assert done.json()["runtimeStatus"] == "Completed", done.text
    # raise_event bodies are double-encoded by the SDK; the event must still arrive as
    # the dict the starter sent for process_approval to read it.
    assert done.json()["output"] == "approved"


async def test_http_blueprint_routes_keys_and_optional_params(azurite: Any, task_hub: str) -> None:
    adapter = load_function_app(str(APPS / "blueprint_app"))
    async with (
        running(adapter, azurite, task_hub) as client,
        serving(adapter, client, task_hub, function_key="s3cret") as origin,
        httpx.AsyncClient(timeout=WAIT) as http,
    ):
        assert (await http.get(f"{origin}/api/greetings/ada")).status_code == 401
        plain = await http.get(f"{origin}/api/greetings/ada", params={"code": "s3cret"})
        assert plain.status_code == 200, plain.text
        assert plain.json() == {"name": "ada", "style": "plain", "lang": "en"}
        styled = await http.get(
            f"{origin}/api/greetings/ada/loud",
            params={"lang": "fr"},
            headers={"x-functions-key": "s3cret"},
        )
        assert styled.json() == {"name": "ada", "style": "loud", "lang": "fr"}
        assert (await http.post(f"{origin}/api/greetings/ada?code=s3cret")).status_code == 405

        started = await http.post(
            f"{origin}/api/orchestrators/greet_all/fixed-id?code=s3cret", json=["cy"]
        )
        assert started.status_code == 202, started.text
        assert started.json()["id"] == "fixed-id"
        done = await poll_until_done(http, started.json()["statusQueryGetUri"])
    assert done.json()["output"] == {"joined": "HELLO CY!", "parents": ["fixed-id"]}
