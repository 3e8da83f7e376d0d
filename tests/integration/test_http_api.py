"""The Durable Functions HTTP API, served by a real uvicorn on 127.0.0.1 and called with
a real HTTP client (httpx, and the unmodified ``azure.durable_functions`` client), with an
in-process worker on Azurite."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from durable_azure.http import client_binding, create_management_app
from durable_azure.http.server import EmbeddedServer, bound_port, server_config
from tests.integration import http_apps
from tests.integration.apps import FIXED
from tests.integration.conftest import Hub
from tests.integration.test_orchestrations import expected_chain

pytestmark = pytest.mark.azurite

BASE = "/runtime/webhooks/durabletask"
CHECK_STATUS_KEYS = {
    "id",
    "statusQueryGetUri",
    "sendEventPostUri",
    "terminatePostUri",
    "purgeHistoryDeleteUri",
    "restartPostUri",
    "suspendPostUri",
    "resumePostUri",
}
STATUS_KEYS = {
    "name",
    "instanceId",
    "runtimeStatus",
    "input",
    "customStatus",
    "output",
    "createdTime",
    "lastUpdatedTime",
}
MAX_POLLS = 600  # x 0.1 s: a bound, not a timing assertion


@dataclass
class Api:
    origin: str
    http: httpx.AsyncClient
    hub: Hub

    @property
    def base(self) -> str:
        return self.origin + BASE

    @property
    def rpc(self) -> str:
        return self.origin + "/durabletask/"


@contextlib.asynccontextmanager
async def running_api(hub: Hub, **options: Any) -> AsyncIterator[Api]:
    asgi = create_management_app(
        hub.client, orchestrator_names=lambda: set(http_apps.app.orchestrators), **options
    )
    server = EmbeddedServer(server_config(asgi, "127.0.0.1", 0))
    serving = asyncio.create_task(server.serve())
    for _ in range(MAX_POLLS):
        if server.started or serving.done():
            break
        await asyncio.sleep(0.02)
    if serving.done():
        serving.result()
    origin = f"http://127.0.0.1:{bound_port(server)}"
    try:
        async with httpx.AsyncClient(base_url=origin, timeout=60) as http:
            yield Api(origin, http, hub)
    finally:
        server.should_exit = True
        await serving


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[Api]:
    async with running_api(hub) as running:
        yield running


async def poll(api: Api, url: str, **kwargs: Any) -> httpx.Response:
    """GET ``url`` until it answers something else than 202."""
    for _ in range(MAX_POLLS):
        response = await api.http.get(url, **kwargs)
        if response.status_code != 202:
            return response
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} still 202: {response.text}")


async def poll_status(api: Api, instance_id: str, wanted: str) -> dict[str, Any]:
    for _ in range(MAX_POLLS):
        response = await api.http.get(f"{BASE}/instances/{quote(instance_id, safe='')}")
        body = response.json()
        if body["runtimeStatus"] == wanted:
            return dict(body)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{instance_id} never became {wanted}: {body}")


async def start(api: Api, name: str, data: Any = None, instance_id: str = "") -> str:
    path = f"{BASE}/orchestrators/{name}" + (
        f"/{quote(instance_id, safe='')}" if instance_id else ""
    )
    response = await api.http.post(path, json=data)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def no_instances(api: Api) -> bool:
    counts = await api.hub.client.count_instances()
    return sum(counts.values()) == 0


# --- pattern 3: async HTTP API -----------------------------------------------------------


async def test_pattern3_start_poll_until_completed(api: Api) -> None:
    started = await api.http.post(f"{BASE}/orchestrators/http_wait_for_event", json={"n": 1})
    assert started.status_code == 202
    body = started.json()
    assert set(body) == CHECK_STATUS_KEYS
    assert started.headers["location"] == body["statusQueryGetUri"]
    assert started.headers["retry-after"] == "10"
    instance_id = body["id"]
    query = f"taskHub={api.hub.task_hub}&connection=Storage"
    assert body["statusQueryGetUri"] == f"{api.base}/instances/{instance_id}?{query}"
    assert body["purgeHistoryDeleteUri"] == body["statusQueryGetUri"]
    assert body["sendEventPostUri"] == (
        f"{api.base}/instances/{instance_id}/raiseEvent/{{eventName}}?{query}"
    )
    assert body["terminatePostUri"] == (
        f"{api.base}/instances/{instance_id}/terminate?reason={{text}}&{query}"
    )
    assert body["restartPostUri"] == f"{api.base}/instances/{instance_id}/restart?{query}"
    assert "AccountKey" not in started.text
    assert "DefaultEndpoints" not in started.text

    running = await api.http.get(body["statusQueryGetUri"])
    assert running.status_code == 202
    assert running.headers["retry-after"] == "5"
    assert running.headers["location"] == body["statusQueryGetUri"]
    assert running.json()["runtimeStatus"] in ("Pending", "Running")
    assert running.json()["input"] == {"n": 1}

    raised = await api.http.post(
        body["sendEventPostUri"].replace("{eventName}", "go"), json={"approved": True}
    )
    assert raised.status_code == 202
    done = await poll(api, body["statusQueryGetUri"])
    assert done.status_code == 200
    status = done.json()
    assert set(status) == STATUS_KEYS
    assert status["runtimeStatus"] == "Completed"
    assert status["output"] == {"got": {"approved": True}}
    assert status["name"] == "http_wait_for_event"
    assert status["createdTime"].endswith("Z")
    assert len(status["createdTime"]) == 20


async def test_start_with_id_url_encodes_it_and_chains(api: Api) -> None:
    instance_id = "order 1+x:y"
    response = await api.http.post(f"{BASE}/orchestrators/chain5/{quote(instance_id)}", json=4)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["id"] == instance_id
    assert "/instances/order%201%2Bx%3Ay?" in body["statusQueryGetUri"]
    done = await poll(api, body["statusQueryGetUri"])
    assert done.json()["output"] == expected_chain(4)
    assert done.json()["instanceId"] == instance_id


async def test_start_errors_leave_no_instance(api: Api) -> None:
    unknown = await api.http.post(f"{BASE}/orchestrators/no_such_orchestrator", json=1)
    assert unknown.status_code == 400
    assert "no_such_orchestrator" in unknown.json()["ExceptionMessage"]
    bad_json = await api.http.post(
        f"{BASE}/orchestrators/chain5",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad_json.status_code == 400
    assert bad_json.json()["Message"] == "Invalid JSON content"
    bad_id = await api.http.post(f"{BASE}/orchestrators/chain5/@entity", json=1)
    assert bad_id.status_code == 400
    wrong_method = await api.http.get(f"{BASE}/orchestrators/chain5")
    assert wrong_method.status_code == 404
    bad_timeout = await api.http.post(f"{BASE}/orchestrators/chain5?timeout=soon", json=1)
    assert bad_timeout.status_code == 400
    other_hub = await api.http.post(f"{BASE}/orchestrators/chain5?taskHub=OtherHub", json=1)
    assert other_hub.status_code == 400
    assert await no_instances(api)


async def test_start_of_a_running_id_is_409(api: Api) -> None:
    await start(api, "http_wait_for_event", instance_id="busy")
    again = await api.http.post(f"{BASE}/orchestrators/http_wait_for_event/busy")
    assert again.status_code == 409
    assert "busy" in again.json()["ExceptionMessage"]


async def test_wait_mode_returns_output_status_or_check_status(api: Api) -> None:
    done = await api.http.post(
        f"{BASE}/orchestrators/chain5?timeout=60&pollingInterval=0.2", json=2
    )
    assert done.status_code == 200
    assert done.json() == expected_chain(2)
    failed = await api.http.post(f"{BASE}/orchestrators/fails_uncaught?timeout=60")
    assert failed.status_code == 200
    assert failed.json()["runtimeStatus"] == "Failed"
    assert set(failed.json()) == STATUS_KEYS
    timed_out = await api.http.post(f"{BASE}/orchestrators/http_wait_for_event?timeout=0")
    assert timed_out.status_code == 202
    assert set(timed_out.json()) == CHECK_STATUS_KEYS


# --- status -------------------------------------------------------------------------------


async def test_status_codes_and_flags(api: Api) -> None:
    missing = await api.http.get(f"{BASE}/instances/nobody")
    assert missing.status_code == 404
    assert missing.content == b""

    await start(api, "fails_uncaught", instance_id="failing")
    failed = await poll(api, f"{BASE}/instances/failing")
    assert failed.status_code == 200
    assert failed.json()["runtimeStatus"] == "Failed"
    as_500 = await api.http.get(f"{BASE}/instances/failing?returnInternalServerErrorOnFailure=true")
    assert as_500.status_code == 500

    await start(api, "chain5", 3, instance_id="with-input")
    shown = await poll(api, f"{BASE}/instances/with-input")
    assert shown.json()["input"] == 3
    hidden = await api.http.get(f"{BASE}/instances/with-input?showInput=false")
    assert hidden.json()["input"] is None
    assert "historyEvents" not in hidden.json()


async def test_show_history_gives_the_compacted_history(api: Api) -> None:
    await start(api, "chain5", 1, instance_id="history")
    await poll(api, f"{BASE}/instances/history")
    full = await api.http.get(
        f"{BASE}/instances/history?showHistory=True&showHistoryOutput=True&showInput=True"
    )
    events = full.json()["historyEvents"]
    types = [e["EventType"] for e in events]
    assert types == ["ExecutionStarted", *["TaskCompleted"] * 5, "ExecutionCompleted"]
    started = events[0]
    assert started["FunctionName"] == "chain5"
    for gone in ("Name", "OrchestrationInstance", "ParentInstance", "Version", "Tags", "Input"):
        assert gone not in started
    for event in events:
        assert not {"EventId", "IsPlayed", "TaskScheduledId", "TimerId"} & set(event)
        assert event["Timestamp"].endswith("Z")
    first = events[1]
    assert first["FunctionName"] == "add_step"
    assert first["ScheduledTime"] <= first["Timestamp"]
    assert first["Result"] == {"value": 3, "steps": [1]}
    assert first["Input"] == {"value": 1, "steps": []}
    assert events[-1]["OrchestrationStatus"] == "Completed"
    assert events[-1]["Result"] == expected_chain(1)

    quiet = await api.http.get(f"{BASE}/instances/history?showHistory=true&showInput=false")
    events = quiet.json()["historyEvents"]
    assert len(events) == 7
    assert all("Result" not in e and "Input" not in e for e in events)


async def test_list_filters_and_continuation_paging(api: Api) -> None:
    ids = [f"page-{i}" for i in range(5)]
    for instance_id in ids:
        await start(api, "chain5", 1, instance_id=instance_id)
    await start(api, "http_wait_for_event", instance_id="other-1")
    for instance_id in ids:
        await poll(api, f"{BASE}/instances/{instance_id}")

    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        headers = {"x-ms-continuation-token": token} if token else {}
        page = await api.http.get(
            f"{BASE}/instances/?instanceIdPrefix=page-&top=2", headers=headers
        )
        assert page.status_code == 200
        assert len(page.json()) <= 2
        seen += [s["instanceId"] for s in page.json()]
        pages += 1
        token = page.headers.get("x-ms-continuation-token")
        if token is None:
            break
    assert sorted(seen) == ids
    assert pages >= 3

    completed = await api.http.get(f"{BASE}/instances?runtimeStatus=Completed&top=100")
    assert sorted(s["instanceId"] for s in completed.json()) == ids
    assert all(set(s) == STATUS_KEYS for s in completed.json())
    running = await api.http.get(
        f"{BASE}/instances?runtimeStatus=Running,Pending&runtimeStatus=Suspended"
    )
    assert [s["instanceId"] for s in running.json()] == ["other-1"]
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    empty = await api.http.get(f"{BASE}/instances?createdTimeFrom={future}")
    assert empty.json() == []
    no_input = await api.http.get(f"{BASE}/instances?instanceIdPrefix=page-&showInput=false")
    assert all(s["input"] is None for s in no_input.json())
    assert (await api.http.get(f"{BASE}/instances?runtimeStatus=Sleeping")).status_code == 400
    assert (await api.http.get(f"{BASE}/instances?createdTimeFrom=yesterday")).status_code == 400
    bad_token = await api.http.get(f"{BASE}/instances", headers={"x-ms-continuation-token": "%%%"})
    assert bad_token.status_code == 400


# --- operations --------------------------------------------------------------------------


async def test_raise_event_codes(api: Api) -> None:
    instance_id = await start(api, "http_wait_for_event")
    url = f"{BASE}/instances/{instance_id}/raiseEvent/go"
    wrong_type = await api.http.post(url, content=b"1", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 400
    assert wrong_type.json()["Message"] == "Only application/json request content is supported"
    bad_json = await api.http.post(
        url, content=b"{", headers={"content-type": "application/json; charset=utf-8"}
    )
    assert bad_json.status_code == 400
    missing = await api.http.post(f"{BASE}/instances/nobody/raiseEvent/go", json=1)
    assert missing.status_code == 404
    raised = await api.http.post(url, json=[1, "two"])
    assert raised.status_code == 202
    done = await poll(api, f"{BASE}/instances/{instance_id}")
    assert done.json()["output"] == {"got": [1, "two"]}
    gone = await api.http.post(url, json=1)
    assert gone.status_code == 410


async def test_terminate_suspend_resume(api: Api) -> None:
    instance_id = await start(api, "http_wait_for_event", instance_id="ops")
    await poll_status(api, instance_id, "Running")
    suspended = await api.http.post(f"{BASE}/instances/ops/suspend?reason=pause%20it")
    assert suspended.status_code == 202
    await poll_status(api, instance_id, "Suspended")
    resumed = await api.http.post(f"{BASE}/instances/ops/resume?reason=go")
    assert resumed.status_code == 202
    await poll_status(api, instance_id, "Running")
    terminated = await api.http.post(f"{BASE}/instances/ops/terminate?reason=enough")
    assert terminated.status_code == 202
    status = await poll_status(api, instance_id, "Terminated")
    assert status["output"] == "enough"
    for operation in ("terminate", "suspend", "resume"):
        again = await api.http.post(f"{BASE}/instances/ops/{operation}")
        assert again.status_code == 410, operation
        missing = await api.http.post(f"{BASE}/instances/nobody/{operation}")
        assert missing.status_code == 404, operation
    assert (await api.http.post(f"{BASE}/instances/ops/explode")).status_code == 404
    assert (await api.http.get(f"{BASE}/instances/ops/terminate")).status_code == 404


async def test_rewind_and_restart(api: Api) -> None:
    key = f"http-rewind-{api.hub.task_hub}"
    await start(api, "rewindable", key, instance_id="rw")
    failed = await poll(api, f"{BASE}/instances/rw")
    assert failed.json()["runtimeStatus"] == "Failed"
    FIXED.add(key)
    rewound = await api.http.post(f"{BASE}/instances/rw/rewind?reason=fixed+it")
    assert rewound.status_code == 202
    done = await poll_status(api, "rw", "Completed")
    assert done["output"] == ["3", f"{key} fixed"]
    assert (await api.http.post(f"{BASE}/instances/rw/rewind")).status_code == 410
    assert (await api.http.post(f"{BASE}/instances/nobody/rewind")).status_code == 404

    restarted = await api.http.post(f"{BASE}/instances/rw/restart")
    assert restarted.status_code == 202
    new_id = restarted.json()["id"]
    assert new_id != "rw"
    assert restarted.headers["location"] == restarted.json()["statusQueryGetUri"]
    again = await poll(api, restarted.json()["statusQueryGetUri"])
    assert again.json()["output"] == ["3", f"{key} fixed"]
    same = await api.http.post(
        f"{BASE}/instances/rw/restart?restartWithNewInstanceId=false&timeout=60"
    )
    assert same.status_code == 200
    assert same.json() == ["3", f"{key} fixed"]
    missing = await api.http.post(f"{BASE}/instances/nobody/restart")
    assert missing.status_code == 400


async def test_purge_one_and_by_filter(api: Api) -> None:
    await start(api, "chain5", 1, instance_id="purge-1")
    await start(api, "chain5", 1, instance_id="purge-2")
    await start(api, "chain5", 1, instance_id="purge-3")
    await start(api, "http_wait_for_event", instance_id="purge-running")
    for instance_id in ("purge-1", "purge-2", "purge-3"):
        await poll(api, f"{BASE}/instances/{instance_id}")
    one = await api.http.delete(f"{BASE}/instances/purge-1")
    assert one.status_code == 200
    assert one.json() == {"instancesDeleted": 1}
    assert (await api.http.get(f"{BASE}/instances/purge-1")).status_code == 404
    assert (await api.http.delete(f"{BASE}/instances/purge-1")).status_code == 404
    assert (await api.http.delete(f"{BASE}/instances/purge-running")).status_code == 409

    no_from = await api.http.delete(f"{BASE}/instances/")
    assert no_from.status_code == 400
    assert "createdTimeFrom" in no_from.json()["ExceptionMessage"]
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    by_filter = await api.http.delete(
        f"{BASE}/instances/?createdTimeFrom={since}&runtimeStatus=Completed"
    )
    assert by_filter.status_code == 200
    assert by_filter.json() == {"instancesDeleted": 2}
    nothing = await api.http.delete(f"{BASE}/instances?createdTimeFrom={since}")
    assert nothing.status_code == 404
    assert (await api.http.get(f"{BASE}/instances/purge-running")).status_code == 202


async def test_entity_routes_are_501(api: Api) -> None:
    for method, path in (
        ("GET", "entities/Counter/k1"),
        ("GET", "entities/Counter"),
        ("POST", "entities/Counter/k1?op=add"),
        ("DELETE", "entities/Counter/k1"),
    ):
        response = await api.http.request(method, f"{BASE}/{path}")
        assert response.status_code == 501
        assert response.json()["error"] == "durable entities are not supported yet"


# --- security ----------------------------------------------------------------------------


async def test_key_is_required_when_configured(hub: Hub) -> None:
    async with running_api(hub, key="s3cret-key") as api:
        for url in (f"{BASE}/instances", "/durabletask/instances/"):
            assert (await api.http.get(url)).status_code == 401
            assert (await api.http.get(url, params={"code": "wrong"})).status_code == 401
        denied = await api.http.post(f"{BASE}/orchestrators/chain5", json=1)
        assert denied.status_code == 401
        assert await no_instances(api)

        started = await api.http.post(f"{BASE}/orchestrators/chain5?code=s3cret-key", json=1)
        assert started.status_code == 202
        status_url = started.json()["statusQueryGetUri"]
        assert status_url.endswith("&code=s3cret-key")
        by_header = await poll(
            api,
            f"{BASE}/instances/{started.json()['id']}",
            headers={"x-functions-key": "s3cret-key"},
        )
        assert by_header.status_code == 200
        assert (await poll(api, status_url)).status_code == 200
        listed = await api.http.get(
            "/durabletask/instances/", headers={"x-functions-key": "s3cret-key"}
        )
        assert listed.status_code == 200

    async with running_api(hub, key="s3cret-key", rpc_requires_key=False) as api:
        assert (await api.http.get("/durabletask/instances/")).status_code == 200
        assert (await api.http.get(f"{BASE}/instances/")).status_code == 401


async def test_oversize_and_streamed_bodies_get_413(hub: Hub) -> None:
    async with running_api(hub, max_body_bytes=1000) as api:
        big = {"text": "x" * 2000}
        declared = await api.http.post(f"{BASE}/orchestrators/http_echo_input", json=big)
        assert declared.status_code == 413
        assert "1000 bytes" in declared.json()["Message"]

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"text": "'
            for _ in range(20):
                yield b"y" * 100
            yield b'"}'

        streamed = await api.http.post(
            f"{BASE}/orchestrators/http_echo_input",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert streamed.status_code == 413
        assert await no_instances(api)
        small = await api.http.post(
            f"{BASE}/orchestrators/http_echo_input?timeout=60", json={"text": "ok"}
        )
        assert small.status_code == 200
        assert small.json() == {"input": {"text": "ok"}}


# --- the azure.durable_functions client against our RPC base ----------------------------


async def test_durable_functions_client_drives_the_rpc_base(api: Api) -> None:
    from azure.durable_functions import DurableOrchestrationClient
    from azure.durable_functions.models.OrchestrationRuntimeStatus import (
        OrchestrationRuntimeStatus,
    )
    from azure.durable_functions.models.utils import http_utils

    binding = client_binding(base_url=api.base, rpc_base_url=api.rpc, task_hub=api.hub.task_hub)
    client = DurableOrchestrationClient(json.dumps(binding))

    async def wait_done(instance_id: str) -> Any:
        for _ in range(MAX_POLLS):
            status = await client.get_status(instance_id)
            if status.runtime_status not in (
                None,
                OrchestrationRuntimeStatus.Pending,
                OrchestrationRuntimeStatus.Running,
            ):
                return status
            await asyncio.sleep(0.1)
        raise AssertionError(f"{instance_id} did not finish")

    try:
        echo_id = await client.start_new("http_echo_input", "df-echo", {"city": "Tokyo"})
        assert echo_id == "df-echo"
        chain_id = await client.start_new("chain5", None, 3)
        echo = await wait_done(echo_id)
        assert echo.runtime_status is OrchestrationRuntimeStatus.Completed
        assert echo.output == {"input": {"city": "Tokyo"}}
        assert echo.input_ == {"city": "Tokyo"}
        chain = await wait_done(chain_id)
        assert chain.output == expected_chain(3)
        detailed = await client.get_status(
            chain_id, show_history=True, show_history_output=True, show_input=True
        )
        assert next(e["EventType"] for e in detailed.historyEvents) == "ExecutionStarted"
        with pytest.raises(Exception, match="doesn't exist"):
            await client.start_new("no_such_orchestrator")
        missing = await client.get_status("nobody")
        assert not missing

        waiting = await client.start_new("http_wait_for_event")
        await client.raise_event(waiting, "go", {"ok": True})
        assert (await wait_done(waiting)).output == {"got": {"ok": True}}
        with pytest.raises(Exception, match="gone"):
            await client.raise_event(waiting, "go", 1)

        to_stop = await client.start_new("http_wait_for_event")
        await client.terminate(to_stop, "stop it")
        stopped = await wait_done(to_stop)
        assert stopped.runtime_status is OrchestrationRuntimeStatus.Terminated
        await client.terminate(to_stop, "again")  # 410 is accepted by the SDK

        everything = await client.get_status_all()
        assert {echo_id, chain_id, waiting, to_stop} <= {s.instance_id for s in everything}
        completed = await client.get_status_by(
            created_time_from=datetime.now(UTC) - timedelta(hours=1),
            runtime_status=[OrchestrationRuntimeStatus.Completed],
        )
        assert {s.instance_id for s in completed} == {echo_id, chain_id, waiting}

        purged = await client.purge_instance_history(echo_id)
        assert purged.instances_deleted == 1
        assert (await client.purge_instance_history(echo_id)).instances_deleted == 0
        by_filter = await client.purge_instance_history_by(
            created_time_from=datetime.now(UTC) - timedelta(hours=1),
            runtime_status=[OrchestrationRuntimeStatus.Terminated],
        )
        assert by_filter.instances_deleted == 1

        # The helpers an HTTP starter returns, from a real azure.functions request.
        import azure.functions as func

        request = func.HttpRequest("POST", f"{api.origin}/api/start", body=b"")
        finished = await client.start_new("chain5", None, 2)
        answer = await client.wait_for_completion_or_create_check_status_response(
            request, finished, timeout_in_milliseconds=30000, retry_interval_in_milliseconds=100
        )
        assert answer.status_code == 200
        assert json.loads(answer.get_body()) == expected_chain(2)
        pending = await client.start_new("http_wait_for_event")
        timed_out = await client.wait_for_completion_or_create_check_status_response(
            request, pending, timeout_in_milliseconds=300, retry_interval_in_milliseconds=100
        )
        assert timed_out.status_code == 202
        body = json.loads(timed_out.get_body())
        assert body["id"] == pending
        status_url = body["statusQueryGetUri"]
        assert status_url.startswith(f"{api.origin}{BASE}/instances/{pending}")
        assert (await api.http.get(status_url)).status_code == 202  # the URL works as is
    finally:
        await http_utils._close_session()


# --- durable-azure serve -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve_env() -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env.pop("DURABLE_HTTP_KEY", None)
    return env


SERVE_KEY = "sEcReT-serve-key"


def _spawn_serve(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "durable_azure.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def test_serve_command_runs_api_and_worker_until_sigterm(
    azurite: Any, task_hub: str, serve_env: dict[str, str]
) -> None:
    port = _free_port()
    process = _spawn_serve(
        "--connection", azurite.connection_string, "--task-hub", task_hub,
        "serve", "tests.integration.http_apps:app", "--port", str(port), "--key", SERVE_KEY,
        env=serve_env,
    )  # fmt: skip
    try:
        origin = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=origin, timeout=60) as http:
            for _ in range(MAX_POLLS):
                assert process.poll() is None, process.communicate()
                try:
                    ready = await http.get(f"{BASE}/instances?code={SERVE_KEY}")
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
                    continue
                assert ready.status_code == 200
                break
            assert (await http.get(f"{BASE}/instances")).status_code == 401
            started = await http.post(f"{BASE}/orchestrators/chain5?code={SERVE_KEY}", json=5)
            assert started.status_code == 202
            status_url = started.json()["statusQueryGetUri"]
            for _ in range(MAX_POLLS):
                status = await http.get(status_url)
                if status.status_code != 202:
                    break
                await asyncio.sleep(0.1)
            assert status.status_code == 200
            assert status.json()["output"] == expected_chain(5)
        process.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(process.communicate, timeout=60)
        assert process.returncode == 0, err
        assert f"http://127.0.0.1:{port}{BASE}" in err
        assert SERVE_KEY not in err
        assert "AccountKey" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serve_refuses_a_public_address_without_a_key(
    azurite: Any, task_hub: str, serve_env: dict[str, str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "durable_azure.cli", "--connection", azurite.connection_string,
         "--task-hub", task_hub, "serve", "tests.integration.http_apps:app",
         "--host", "0.0.0.0", "--port", str(_free_port())],
        capture_output=True, text=True, timeout=60, env=serve_env, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "without a key" in done.stderr


def test_serve_names_what_it_got_when_not_a_durable_app(serve_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "durable_azure.cli", "serve", "tests.integration.apps:FIXED"],
        capture_output=True, text=True, timeout=60, env=serve_env, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "builtins.set" in done.stderr
    assert "neither a durable_azure.DurableApp nor an azure.functions app" in done.stderr


async def test_serve_runs_a_function_app_unchanged_over_http(
    azurite: Any, task_hub: str, serve_env: dict[str, str]
) -> None:
    """``durable-azure serve`` a df.DFApp folder, driven only over HTTP: its starter
    answers with the check-status body, the approval event goes through
    sendEventPostUri, the status URL reports the result. A key is configured: the API
    needs it; the app's anonymous routes and its own client (over the RPC base) do not."""
    port = _free_port()
    process = _spawn_serve(
        "--connection", azurite.connection_string, "--task-hub", task_hub,
        "serve", "tests/function_apps/human_interaction", "--port", str(port),
        "--key", SERVE_KEY,
        env=serve_env,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for _ in range(MAX_POLLS):
                assert process.poll() is None, process.communicate()
                try:
                    await http.get("/api/approvals")
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
                    continue
                break
            started = await http.post(
                "/api/approvals", json={"item": "laptop", "timeout_seconds": 300}
            )
            assert started.status_code == 202, started.text
            body = started.json()
            assert started.headers["location"] == body["statusQueryGetUri"]
            assert body["sendEventPostUri"].startswith(f"http://127.0.0.1:{port}{BASE}/")
            assert f"code={SERVE_KEY}" not in body["statusQueryGetUri"]  # the SDK builds it
            status_url = body["statusQueryGetUri"] + f"&code={SERVE_KEY}"
            assert (await http.get(body["statusQueryGetUri"])).status_code == 401
            event_url = body["sendEventPostUri"].replace("{eventName}", "ApprovalEvent")
            raised = await http.post(f"{event_url}&code={SERVE_KEY}", json={"approved": True})
            assert raised.status_code == 202, raised.text
            for _ in range(MAX_POLLS):
                status = await http.get(status_url)
                if status.status_code != 202:
                    break
                await asyncio.sleep(0.1)
            assert status.status_code == 200, status.text
            assert status.json()["output"] == "approved"
            assert status.json()["customStatus"] == {"stage": "decided"}
            assert (await http.get(f"{BASE}/instances")).status_code == 401
        process.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(process.communicate, timeout=60)
        assert process.returncode == 0, err
        assert SERVE_KEY not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


FUNCTION_APP_CASES = [
    # (folder, HTTP path that starts it (None: the management API's start route), input,
    #  expected output)
    (
        "function_chaining",
        "/api/orchestrators/hello_orchestrator",
        ["Oslo", "Lima", "Cairo"],
        ["Hello Oslo", "Hello Lima", "Hello Cairo"],
    ),
    (
        "fan_out_fan_in",
        "/api/orchestrators/fan_out_fan_in",
        3,
        {"items": 3, "outputs": [10, 20, 30], "total": 60, "sources": ["GetWorkBatch"]},
    ),
    ("eternal_counter", None, {"count": 0, "limit": 3}, None),  # checked below
    ("blueprint_app", "/api/orchestrators/greet_all", ["ada", "bo"], None),  # checked below
]


@pytest.mark.parametrize(
    ("folder", "start_path", "payload", "expected"),
    FUNCTION_APP_CASES,
    ids=[case[0] for case in FUNCTION_APP_CASES],
)
async def test_serve_runs_sample_function_apps_over_http(
    azurite: Any,
    task_hub: str,
    serve_env: dict[str, str],
    folder: str,
    start_path: str | None,
    payload: Any,
    expected: Any,
) -> None:
    port = _free_port()
    process = _spawn_serve(
        "--connection", azurite.connection_string, "--task-hub", task_hub,
        "serve", f"tests/function_apps/{folder}", "--port", str(port), "--key", SERVE_KEY,
        env=serve_env,
    )  # fmt: skip
    code = f"code={SERVE_KEY}"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for _ in range(MAX_POLLS):
                assert process.poll() is None, process.communicate()
                try:
                    await http.get(f"{BASE}/instances?{code}")
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
                    continue
                break
            if start_path is None:  # no starter function: the Durable Functions HTTP API
                started = await http.post(f"{BASE}/orchestrators/{folder}?{code}", json=payload)
            else:  # the app's own starter (function-level auth in blueprint_app)
                started = await http.post(f"{start_path}?{code}", json=payload)
            assert started.status_code == 202, started.text
            status_url = started.json()["statusQueryGetUri"]
            status_url += ("&" if "?" in status_url else "?") + code
            for _ in range(MAX_POLLS):
                status = await http.get(status_url)
                if status.status_code != 202:
                    break
                await asyncio.sleep(0.1)
            assert status.status_code == 200, status.text
            output = status.json()["output"]
            instance_id = status.json()["instanceId"]
            if folder == "eternal_counter":
                assert output == {"count": 3, "instance": instance_id}
                assert status.json()["customStatus"] == {"count": 3}
            elif folder == "blueprint_app":
                assert output == {
                    "joined": "HELLO ADA! / HELLO BO!",
                    "parents": [instance_id, instance_id],
                }
                greeting = await http.get(f"/api/greetings/ada/loud?lang=fr&{code}")
                assert greeting.json() == {"name": "ada", "style": "loud", "lang": "fr"}
                assert (await http.get("/api/greetings/ada")).status_code == 401
            else:
                assert output == expected
        process.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(process.communicate, timeout=60)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


async def test_the_overviews_curl_session_works_as_written(api: Api) -> None:
    """Pattern 3 of the Durable Functions overview, with its own paths (host aside): a
    start at /orchestrators/{name} with an empty body, then status at the Functions v1
    URL /admin/extensions/DurableTaskExtension/{id}: 202 + Location while running,
    200 once completed."""
    import shutil

    curl = shutil.which("curl")

    async def request(*args: str) -> tuple[int, dict[str, str], str]:
        if curl is None:  # same requests through httpx
            method = "POST" if "-X" in args else "GET"
            response = await api.http.request(
                method, args[-1], headers={"Content-Length": "0"} if method == "POST" else {}
            )
            return response.status_code, dict(response.headers), response.text
        done = await asyncio.to_thread(
            subprocess.run, [curl, "-s", "-i", *args], capture_output=True, text=True
        )
        head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
        lines = head.splitlines()
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        return int(lines[0].split()[1]), headers, body

    status, headers, body = await request(
        "-X", "POST", "-H", "Content-Length: 0", f"{api.origin}/orchestrators/http_wait_for_event"
    )
    assert status == 202, body
    instance_id = json.loads(body)["id"]
    location = headers["location"]
    legacy = f"{api.origin}/admin/extensions/DurableTaskExtension/{instance_id}"
    for _ in range(MAX_POLLS):
        status, headers, body = await request(legacy)
        if json.loads(body)["runtimeStatus"] == "Running":
            break
        await asyncio.sleep(0.1)
    assert status == 202
    assert headers["location"] == legacy
    assert json.loads(body)["lastUpdatedTime"].endswith("Z")
    await api.hub.client.raise_event(instance_id, "go", "done")
    await api.hub.client.wait_for_completion(instance_id, timeout=60)
    status, headers, body = await request(legacy)
    assert status == 200
    assert json.loads(body)["runtimeStatus"] == "Completed"
    status, _, body = await request(location)  # the start answer's Location works too
    assert status == 200
    assert json.loads(body)["output"] == {"got": "done"}
