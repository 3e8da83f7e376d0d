"""The dashboard's pages and actions, driven over HTTP (httpx against the ASGI app, in the
test's loop) with an in-process worker on Azurite: filters, counts, paging, the detail
with history and timeline, large values on demand, actions with confirmation, batch
actions over a filter, read-only mode, the key, escaping, and 4xx for bad input."""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import httpx
import pytest

from durable_azure import DurableClient
from durable_azure.dashboard import dashboard_routes
from durable_azure.dashboard.app import HISTORY_PAGE_SIZE
from durable_azure.engine.history import (
    ExecutionStarted,
    HistoryEvent,
    OrchestrationStatus,
    TaskCompleted,
    TaskScheduled,
)
from durable_azure.http import create_management_app
from durable_azure.storage.primitives import QueueMessage
from tests.integration.apps import app
from tests.integration.conftest import Hub
from tests.integration.test_http_api import _free_port, _spawn_serve

pytestmark = pytest.mark.azurite

DASH = "/dashboard"
MAX_POLLS = 600  # x 0.1 s: a bound, not a timing assertion


@contextlib.asynccontextmanager
async def dashboard(client: DurableClient, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The API app with the dashboard mounted, as ``serve`` builds it."""
    asgi = create_management_app(
        client, key=options.get("key"), extra_routes=dashboard_routes(client, **options)
    )
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def web(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    async with dashboard(hub.client) as http:
        yield http


def listed_ids(page: str) -> list[str]:
    """Instance ids in the list table, in order."""
    table = page.split('id="instances"', 1)[1].split("</table>", 1)[0]
    return [
        parse_qs(urlparse(html.unescape(href)).query)["id"][0]
        for href in re.findall(r'href="([^"]*/instance\?[^"]*)"', table)
    ]


def counts_of(page: str) -> dict[str, int]:
    return {s: int(n) for s, n in re.findall(r'class="count-(\w+)">\w+ (\d+)</a>', page)}


def form_token(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has no form token"
    return match.group(1)


def next_link(page: str) -> str | None:
    match = re.search(r'<a href="([^"]+)" rel="next">', page)
    return html.unescape(match.group(1)) if match else None


def detail_url(instance_id: str, **params: Any) -> str:
    extra = "".join(f"&{k}={quote(str(v), safe='')}" for k, v in params.items())
    return f"{DASH}/instance?id={quote(instance_id, safe='')}{extra}"


async def wait_status(client: DurableClient, instance_id: str, wanted: str) -> None:
    for _ in range(MAX_POLLS):
        status = await client.get_status(instance_id, show_input=False)
        if status.runtime_status.name == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{instance_id} is {status.runtime_status.name}, never {wanted}")


async def wait_running(client: DurableClient, *ids: str) -> None:
    await asyncio.gather(*(wait_status(client, i, "Running") for i in ids))


async def confirm(
    web: httpx.AsyncClient, path: str, params: dict[str, str], **fields: str
) -> httpx.Response:
    """Open a confirmation page, then submit its form with ``fields``."""
    page = await web.get(path, params=params)
    assert page.status_code == 200, page.text
    assert 'name="confirm" value="1"' in page.text
    body = {**params, **fields, "confirm": "1", "csrf": form_token(page.text)}
    return await web.post(path, data=body)


# --- the list ------------------------------------------------------------------------------------


async def test_list_filters_and_counts_per_status(hub: Hub, web: httpx.AsyncClient) -> None:
    run = uuid.uuid4().hex[:6]
    done = [await hub.client.start_new("chain5", f"{run}-done-{i}", 1) for i in range(2)]
    failed = await hub.client.start_new("fails_uncaught", f"{run}-failed")
    waiting = await hub.client.start_new("waits_for_go", f"{run}-waiting")
    for instance_id in [*done, failed]:
        await hub.client.wait_for_completion(instance_id, timeout=60)
    await wait_running(hub.client, waiting)

    every = {*done, failed, waiting}
    everything = await web.get(f"{DASH}/", params={"prefix": run})
    assert everything.status_code == 200
    assert set(listed_ids(everything.text)) == every
    assert counts_of(everything.text) == {"Running": 1, "Completed": 2, "Failed": 1}

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"status": "Completed"}, set(done)),
        ({"status": ["Failed", "Running"]}, {failed, waiting}),
        ({"name": "fails_uncaught"}, {failed}),
        ({"created_from": later}, set()),
        ({"created_to": later}, every),
        ({"updated_from": later}, set()),
        ({"updated_to": "2000-01-01T00:00:00Z"}, set()),
    ]
    for params, expected in cases:
        page = await web.get(f"{DASH}/", params={"prefix": run, **params})
        assert page.status_code == 200, (params, page.text)
        assert set(listed_ids(page.text)) == expected, params
    narrower = await web.get(f"{DASH}/", params={"prefix": f"{run}-done-1"})
    assert listed_ids(narrower.text) == [f"{run}-done-1"]


async def test_list_pages_through_every_match(hub: Hub, web: httpx.AsyncClient) -> None:
    run = uuid.uuid4().hex[:6]
    started = {await hub.client.start_new("waits_for_go", f"{run}-{i}") for i in range(5)}
    url: str | None = f"{DASH}/?prefix={run}&size=2"
    seen: list[str] = []
    pages = []
    while url is not None:
        page = await web.get(url)
        assert page.status_code == 200
        ids = listed_ids(page.text)
        assert len(ids) <= 2
        seen.extend(ids)
        pages.append(page.text)
        url = next_link(page.text)
    assert sorted(seen) == sorted(started)
    assert len(pages) == 3
    previous = re.search(r'<a href="([^"]+)">Previous page</a>', pages[-1])
    assert previous is not None
    back = await web.get(html.unescape(previous.group(1)))
    assert listed_ids(back.text) == listed_ids(pages[-2])
    for instance_id in started:
        await hub.client.terminate(instance_id)


# --- the detail ----------------------------------------------------------------------------------


async def test_detail_shows_failure_history_and_timeline(hub: Hub, web: httpx.AsyncClient) -> None:
    instance_id = await hub.client.start_new("fails_uncaught")
    await hub.client.wait_for_completion(instance_id, timeout=60)
    page = await web.get(detail_url(instance_id))
    assert page.status_code == 200
    text = page.text
    failure = text.split('id="failure"', 1)[1]
    assert "KeyError" in failure  # the activity's original exception type
    assert "fail_with" in html.unescape(failure)  # its traceback names the activity
    events = (await hub.client.provider.load_history(instance_id)).events
    history = text.split('id="history"', 1)[1].split("</table>", 1)[0]
    assert history.count('<tr id="event-') == len(events)
    assert '<svg id="timeline"' in text
    assert re.search(r'data-kind="activity" data-outcome="failed"', text)
    assert 'id="action-rewind"' in text
    assert 'id="action-terminate"' not in text


async def test_detail_links_parent_and_children(hub: Hub, web: httpx.AsyncClient) -> None:
    run = uuid.uuid4().hex[:6]
    children = [f"{run}-child-{i}" for i in range(2)]
    parent = await hub.client.start_new("parent_of_children", f"{run}-parent", children)
    await hub.client.wait_for_completion(parent, timeout=60)
    page = await web.get(detail_url(parent))
    for child in children:
        assert f"{DASH}/instance?id={quote(child)}" in page.text
    assert 'data-kind="sub-orchestration" data-outcome="completed"' in page.text
    child_page = await web.get(detail_url(children[0]))
    props = child_page.text.split('id="properties"', 1)[1].split("</table>", 1)[0]
    assert f"{DASH}/instance?id={quote(parent)}" in props


async def test_large_values_are_cut_and_fetched_on_demand(hub: Hub, web: httpx.AsyncClient) -> None:
    text = "x" * 70_000  # over the 60 KiB table property limit: stored in blobs
    instance_id = await hub.client.start_new("large_payloads", client_input={"text": text})
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    page = await web.get(detail_url(instance_id))
    assert page.status_code == 200
    assert text not in page.text
    assert status.output["reply"] not in page.text
    assert "stored in a blob" in page.text
    links = [html.unescape(h) for h in re.findall(r'href="([^"]*/value\?[^"]*)"', page.text)]
    output_link = next(link for link in links if "column=Output" in link)
    output = await web.get(output_link)
    assert output.status_code == 200
    assert output.headers["content-type"].startswith("text/plain")
    assert status.output["reply"] in output.text
    event_links = [link for link in links if "event=" in link and "column=Input" in link]
    fetched = [(await web.get(link)).text for link in event_links]
    assert any(text in value for value in fetched)  # the activity's input, from its blob


@pytest.mark.slow
async def test_a_history_of_10000_events_renders_page_by_page(task_hub: str, azurite: Any) -> None:
    client = DurableClient.from_app(
        app, connection_string=azurite.connection_string, task_hub=task_hub
    )
    async with client, dashboard(client) as web:
        provider = client.provider
        await provider.create_if_not_exists()
        instance_id = "big-history"
        execution_id = await provider.start_instance("chain5", instance_id, None)
        now = datetime.now(UTC)
        events: list[HistoryEvent] = [
            ExecutionStarted(
                timestamp=now, name="chain5", instance_id=instance_id, execution_id=execution_id
            )
        ]
        for task in range(5_000):  # 10,000 events with the start
            at = now + timedelta(milliseconds=task)
            events.append(TaskScheduled(timestamp=at, event_id=task, name="square", input="2"))
            events.append(TaskCompleted(timestamp=at, task_scheduled_id=task, result="4"))
        await provider.history.append(
            instance_id, execution_id=execution_id, start_position=0, events=events, etag=None
        )
        first = await web.get(detail_url(instance_id))
        assert first.status_code == 200
        assert f"History ({len(events):,} events)" in first.text
        assert first.text.count('<tr id="event-') == HISTORY_PAGE_SIZE
        last_page = -(-len(events) // HISTORY_PAGE_SIZE) - 1
        last = await web.get(detail_url(instance_id, page=last_page))
        assert last.status_code == 200
        assert f'<tr id="event-{len(events) - 1}">' in last.text
        assert '<tr id="event-0">' not in last.text
        assert "spans in all" in last.text  # the timeline follows the page shown


# --- actions -----------------------------------------------------------------------------------


async def test_terminate_and_raise_from_the_dashboard(hub: Hub, web: httpx.AsyncClient) -> None:
    doomed = await hub.client.start_new("waits_for_go")
    waiting = await hub.client.start_new("waits_for_go")
    await wait_running(hub.client, doomed, waiting)

    no_token = await web.post(f"{DASH}/action", data={"op": "terminate", "id": doomed})
    assert no_token.status_code == 403
    page = await web.get(f"{DASH}/action", params={"op": "terminate", "id": doomed})
    unconfirmed = await web.post(
        f"{DASH}/action",
        data={"op": "terminate", "id": doomed, "csrf": form_token(page.text)},
    )
    assert unconfirmed.status_code == 200
    assert 'name="confirm"' in unconfirmed.text
    assert (await hub.client.get_status(doomed)).runtime_status is OrchestrationStatus.Running

    done = await confirm(web, f"{DASH}/action", {"op": "terminate", "id": doomed}, reason="test")
    assert done.status_code == 303
    assert done.headers["location"].startswith(f"{DASH}/instance?id={doomed}")
    status = await hub.client.wait_for_completion(doomed, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Terminated

    for value in ("1", '{"a": [1, 2]}'):
        sent = await confirm(
            web, f"{DASH}/action", {"op": "raise", "id": waiting}, event="go", data=value
        )
        assert sent.status_code == 303
    status = await hub.client.wait_for_completion(waiting, timeout=60)
    assert status.output == [1, {"a": [1, 2]}]
    finished = await confirm(web, f"{DASH}/action", {"op": "terminate", "id": waiting})
    assert finished.status_code == 409


async def test_batch_terminate_over_a_filter(hub: Hub, web: httpx.AsyncClient) -> None:
    run = uuid.uuid4().hex[:6]
    targets = [await hub.client.start_new("waits_for_go", f"{run}-x-{i}") for i in range(3)]
    bystander = await hub.client.start_new("waits_for_go", f"{run}-y")
    await wait_running(hub.client, *targets, bystander)

    params = {"op": "terminate", "prefix": f"{run}-x-", "status": "Running"}
    review = await web.get(f"{DASH}/batch", params=params)
    assert re.search(rf'id="batch-count">{len(targets)}<', review.text)
    result = await confirm(web, f"{DASH}/batch", params, reason="batch")
    assert result.status_code == 200
    assert re.search(rf'id="succeeded">{len(targets)}<', result.text)
    assert 'id="failed">0<' in result.text
    for instance_id in targets:
        status = await hub.client.wait_for_completion(instance_id, timeout=60)
        assert status.runtime_status is OrchestrationStatus.Terminated
    assert (await hub.client.get_status(bystander)).runtime_status is OrchestrationStatus.Running

    again = await confirm(web, f"{DASH}/batch", {"op": "terminate", "prefix": f"{run}-x-"})
    assert 'id="succeeded">0<' in again.text
    assert re.search(rf'id="failed">{len(targets)}<', again.text)  # already Terminated
    await hub.client.terminate(bystander)


# --- health --------------------------------------------------------------------------------------


async def test_health_shows_queues_and_handles_poison(hub: Hub, web: httpx.AsyncClient) -> None:
    provider = hub.client.provider
    queue = provider.names.control_queues[0]
    raw = QueueMessage("m-1", None, '{"not": "a task message"}', 11, datetime.now(UTC), None)
    record = await provider.poison.set_aside(
        queue, raw, reason="<b>kept failing</b>", instance_id=None
    )
    page = await web.get(f"{DASH}/health")
    assert page.status_code == 200
    for name in [*provider.names.control_queues, provider.names.work_item_queue]:
        assert f"<td>{name}</td>" in page.text
    assert record.name in page.text
    assert "&lt;b&gt;kept failing&lt;/b&gt;" in page.text
    dropped = await confirm(web, f"{DASH}/action", {"op": "drop-poison", "name": record.name})
    assert dropped.status_code == 303
    assert await hub.client.list_poison() == []


# --- access, escaping, bad input -----------------------------------------------------------------


async def test_read_only_shows_no_actions_and_refuses_them(hub: Hub) -> None:
    instance_id = await hub.client.start_new("waits_for_go")
    await wait_running(hub.client, instance_id)
    async with dashboard(hub.client, read_only=True) as web:
        listing = await web.get(f"{DASH}/")
        assert listing.status_code == 200
        assert 'id="batch"' not in listing.text
        detail = await web.get(detail_url(instance_id))
        assert detail.status_code == 200
        assert 'id="actions"' not in detail.text
        refused = [
            await web.get(f"{DASH}/action", params={"op": "terminate", "id": instance_id}),
            await web.post(
                f"{DASH}/action", data={"op": "terminate", "id": instance_id, "confirm": "1"}
            ),
            await web.get(f"{DASH}/batch", params={"op": "terminate"}),
            await web.post(f"{DASH}/batch", data={"op": "terminate", "confirm": "1"}),
        ]
        assert [r.status_code for r in refused] == [403] * len(refused)
    assert (await hub.client.get_status(instance_id)).runtime_status is OrchestrationStatus.Running
    await hub.client.terminate(instance_id)


async def test_the_key_is_needed_and_kept_in_a_cookie(hub: Hub) -> None:
    key = uuid.uuid4().hex
    async with dashboard(hub.client, key=key) as web:
        anonymous = await web.get(f"{DASH}/")
        assert anonymous.status_code == 401
        assert 'name="code"' in anonymous.text
        assert (await web.get(f"{DASH}/?code=wrong")).status_code == 401
        signed = await web.get(f"{DASH}/health?code={key}")
        assert signed.status_code == 303
        assert signed.headers["location"] == f"{DASH}/health"
        cookie = signed.headers["set-cookie"]
        assert "httponly" in cookie.lower()
        assert key not in cookie
        assert (await web.get(f"{DASH}/health")).status_code == 200  # the cookie
        web.cookies.clear()
        assert (await web.get(f"{DASH}/health")).status_code == 401
        header = await web.get(f"{DASH}/health", headers={"x-functions-key": key})
        assert header.status_code == 200
        redirect = await web.get("/")
        assert redirect.status_code == 307
        assert redirect.headers["location"] == f"{DASH}/"


async def test_hostile_ids_and_values_are_escaped(hub: Hub, web: httpx.AsyncClient) -> None:
    marker = uuid.uuid4().hex[:6]
    hostile_id = f'<script>alert("{marker}")</script>&\'"'
    hostile_input = {"html": f"<img src=x onerror=alert('{marker}')>"}
    await hub.client.start_new("waits_for_go", hostile_id, hostile_input)
    await wait_running(hub.client, hostile_id)
    await hub.client.raise_event(hostile_id, "go", f"<b>{marker}</b>")
    bad_name = await hub.client.start_new(f"<i>{marker}</i>", f"{marker}-unknown")
    await hub.client.wait_for_completion(bad_name, timeout=60)
    pages = [
        await web.get(f"{DASH}/"),
        await web.get(detail_url(hostile_id)),
        await web.get(detail_url(bad_name)),
    ]
    for page in pages:
        assert page.status_code == 200
        assert "<script>" not in page.text
        assert "<img src=x" not in page.text
        assert f"<b>{marker}" not in page.text
        assert f"<i>{marker}" not in page.text
    assert html.escape(hostile_id, quote=True) in pages[1].text
    assert "&lt;img src=x onerror=" in pages[1].text
    assert "script-src" not in pages[1].headers["content-security-policy"]  # none allowed
    await hub.client.terminate(hostile_id)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"{DASH}/instance?id=no-such-instance", 404),
        (f"{DASH}/instance", 400),
        (f"{DASH}/instance?id=%40entity", 400),
        (f"{DASH}/instance?id=no-such-instance&page=x", 400),
        (f"{DASH}/?status=Bogus", 400),
        (f"{DASH}/?created_from=yesterday", 400),
        (f"{DASH}/?created_from=2026-02-01T00:00:00Z&created_to=2026-01-01T00:00:00Z", 400),
        (f"{DASH}/?updated_from=2026-02-01&updated_to=2026-01-01", 400),
        (f"{DASH}/?pages=%%%", 400),
        (f"{DASH}/?pages=bm90IGEgdG9rZW4", 400),
        (f"{DASH}/?size=0", 400),
        (f"{DASH}/?refresh=-1", 400),
        (f"{DASH}/value?id=x&column=Secret", 400),
        (f"{DASH}/value?id=no-such-instance&column=Input", 404),
        (f"{DASH}/value?id=no-such-instance&event=3&column=Result", 404),
        (f"{DASH}/action?op=explode&id=x", 400),
        (f"{DASH}/action?op=terminate&id=no-such-instance", 404),
        (f"{DASH}/batch?op=explode", 400),
        (f"{DASH}/batch?op=terminate&status=Nope", 400),
    ],
)
async def test_bad_input_gets_a_clear_4xx_page(
    web: httpx.AsyncClient, path: str, status: int
) -> None:
    response = await web.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert 'class="error"' in response.text
    assert "Traceback" not in response.text


# --- durable-azure serve ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "dashboard_status"), [("--dashboard-read-only", 200), ("--no-dashboard", 404)]
)
async def test_serve_flags_mount_the_dashboard_read_only_or_not_at_all(
    azurite: Any, task_hub: str, flag: str, dashboard_status: int
) -> None:
    key = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "DURABLE_HTTP_KEY"}
    port = _free_port()
    process = _spawn_serve(
        "--connection", azurite.connection_string, "--task-hub", task_hub,
        "serve", "tests.integration.http_apps:app", "--port", str(port), "--key", key, flag,
        env=env,
    )  # fmt: skip
    try:
        headers = {"x-functions-key": key}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for _ in range(MAX_POLLS):
                assert process.poll() is None, process.communicate()
                try:
                    await http.get("/runtime/webhooks/durabletask/instances", headers=headers)
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
                    continue
                break
            page = await http.get(f"{DASH}/", headers=headers)
            assert page.status_code == dashboard_status
            if dashboard_status == 200:
                assert (await http.get(f"{DASH}/")).status_code == 401
                assert "read-only" in page.text
                refused = await http.post(
                    f"{DASH}/batch", headers=headers, data={"op": "terminate", "confirm": "1"}
                )
                assert refused.status_code == 403
        process.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(process.communicate, timeout=60)
        assert process.returncode == 0, err
        assert (f"127.0.0.1:{port}/dashboard/" in err) == (dashboard_status == 200)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
