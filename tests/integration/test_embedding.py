"""Pattern 3 and embedding the HTTP API: in an Azure Functions app (AsgiMiddleware, what
azure.functions.AsgiFunctionApp runs), and with DurableClient's check-status helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import azure.functions as func
import pytest

from durable_azure.http import create_management_app
from tests.integration.conftest import Hub

pytestmark = pytest.mark.azurite

BASE = "http://localhost:7071/runtime/webhooks/durabletask"


async def test_api_mounted_in_an_azure_functions_app(hub: Hub) -> None:
    api = create_management_app(hub.client, key="k")
    middleware = func.AsgiMiddleware(api)  # what func.AsgiFunctionApp(app=api) wraps

    async def call(method: str, url: str, body: bytes = b"") -> func.HttpResponse:
        request = func.HttpRequest(
            method, url, headers={"content-type": "application/json"}, body=body
        )
        return await middleware.handle_async(request)

    started = await call("POST", f"{BASE}/orchestrators/chain5?code=k", b"2")
    assert started.status_code == 202
    instance_id = json.loads(started.get_body())["id"]
    await hub.client.wait_for_completion(instance_id, timeout=60)
    status = await call("GET", f"{BASE}/instances/{instance_id}?code=k")
    assert status.status_code == 200
    assert json.loads(status.get_body())["runtimeStatus"] == "Completed"
    assert (await call("GET", f"{BASE}/instances/{instance_id}")).status_code == 401


async def test_check_status_response_for_your_own_http_layer(hub: Hub) -> None:
    instance_id = await hub.client.start_new("chain5", "my/id", 1)
    response = hub.client.create_check_status_response(instance_id, BASE + "/", key="s3cret")
    assert response.status_code == 202
    assert response.headers["Retry-After"] == "10"
    body = response.body
    assert body["id"] == instance_id
    assert response.headers["Location"] == body["statusQueryGetUri"]
    assert body["statusQueryGetUri"] == (
        f"{BASE}/instances/my%2Fid?taskHub={hub.task_hub}&connection=Storage&code=s3cret"
    )
    for key in ("sendEventPostUri", "terminatePostUri", "rewindPostUri", "purgeHistoryDeleteUri",
                "restartPostUri", "suspendPostUri", "resumePostUri"):  # fmt: skip
        assert body[key].startswith(f"{BASE}/instances/my%2Fid"), key
    assert "AccountKey" not in json.dumps(body)


def test_async_http_api_example_runs_over_http(azurite: Any, task_hub: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.async_http_api",
         "--connection", azurite.connection_string, "--task-hub", task_hub],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "POST start -> 202, Location: http://127.0.0.1:" in done.stdout
    assert "GET status -> 200 Completed" in done.stdout
    assert '"row-3.csv"' in done.stdout
