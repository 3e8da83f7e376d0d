"""The dashboard in a real headless Chromium: sign in with the key, the instance list, a
filter, an instance's history and timeline, terminate from the UI and watch the status
change (auto-refresh), and the task hub health page. Each step saves a screenshot."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable_azure.engine.history import OrchestrationStatus
from durable_azure.storage.primitives import QueueMessage
from tests.integration.conftest import Hub

pytestmark = pytest.mark.azurite

#: Playwright's waits (ms): bounds for a slow CI machine, not timing assertions.
WAIT_MS = 60_000


async def test_list_filter_detail_and_terminate_in_a_browser(
    hub: Hub, origin_and_key: tuple[str, str], browser_page: Any, screenshot: Any
) -> None:
    from playwright.async_api import expect

    origin, key = origin_and_key
    page = browser_page
    run = uuid.uuid4().hex[:6]
    done = [await hub.client.start_new("chain5", f"{run}-chain-{i}", i + 1) for i in range(2)]
    failed = await hub.client.start_new("fails_uncaught", f"{run}-failing")
    parent = await hub.client.start_new(
        "parent_of_children", f"{run}-parent", [f"{run}-child-{i}" for i in range(2)]
    )
    waiting = await hub.client.start_new("waits_for_go", f"{run}-waiting")
    for instance_id in [*done, failed, parent]:
        await hub.client.wait_for_completion(instance_id, timeout=60)

    # Sign in: the key in the URL once, then a cookie; the address bar loses the key.
    await page.goto(f"{origin}/?code={key}")
    await expect(page).to_have_url(f"{origin}/dashboard/")
    rows = page.locator("#instances tbody tr")
    await expect(rows.filter(has_text=waiting)).to_have_count(1)
    for instance_id in [*done, failed, parent]:
        await expect(rows.filter(has_text=instance_id)).to_have_count(1)
    await screenshot(page, "01-instance-list")

    # Filter: this run's Completed chain5 instances.
    await page.fill("input[name=prefix]", f"{run}-chain")
    await page.check("input[name=status][value=Completed]")
    await page.click("form.filters button")
    await expect(rows).to_have_count(len(done))
    listed = sorted(await rows.locator("td:first-child").all_inner_texts())
    assert listed == sorted(done)
    assert "status=Completed" in page.url
    await screenshot(page, "02-filtered-list")

    # Open one: its history (every event) and timeline (one bar per activity).
    await page.click(f"#instances a:text-is('{done[0]}')")
    await expect(page.locator("#instance-id")).to_have_text(done[0])
    events = (await hub.client.provider.load_history(done[0])).events
    await expect(page.locator("#history tbody tr")).to_have_count(len(events))
    activities = sum(1 for e in events if type(e).__name__ == "TaskScheduled")
    bars = page.locator("#timeline g.span[data-kind=activity][data-outcome=completed]")
    await expect(bars).to_have_count(activities)
    await screenshot(page, "03-instance-detail-history-timeline")

    # A failed one: the activity's original exception type and traceback.
    await page.goto(f"{origin}/dashboard/instance?id={failed}")
    failure = page.locator("#failure")
    await expect(failure.locator(".error-type", has_text="KeyError")).to_have_count(1)
    await expect(failure.locator("pre", has_text="fail_with")).not_to_have_count(0)
    await expect(page.locator("#timeline g.span[data-outcome=failed]")).to_have_count(1)
    await screenshot(page, "04-failed-instance")

    # The parent: sub-orchestrations on the timeline, links to the children.
    await page.goto(f"{origin}/dashboard/instance?id={parent}")
    await expect(page.locator("#timeline g.span[data-kind=sub-orchestration]")).not_to_have_count(0)
    await page.click(f"#properties a:text-is('{run}-child-1')")
    await expect(page.locator("#instance-id")).to_have_text(f"{run}-child-1")
    await screenshot(page, "05-sub-orchestration-detail")

    # Terminate the waiting one from the UI, confirm, and watch it become Terminated.
    await page.goto(f"{origin}/dashboard/?prefix={run}-waiting")
    await page.click(f"#instances a:text-is('{waiting}')")
    await expect(page.locator("#runtime-status")).to_have_text("Running")
    await page.click("#action-terminate")
    await page.fill("input[name=reason]", "stopped from the browser test")
    await page.click("#confirm")
    await expect(page.locator(".flash")).to_contain_text("terminate")
    await page.goto(f"{page.url}&refresh=1")  # the page reloads itself every second
    await expect(page.locator("#runtime-status")).to_have_text("Terminated", timeout=WAIT_MS)
    await screenshot(page, "06-terminated-from-the-ui")
    status = await hub.client.get_status(waiting)
    assert status.runtime_status is OrchestrationStatus.Terminated
    assert status.output == "stopped from the browser test"


async def test_health_page_in_a_browser(
    hub: Hub, origin_and_key: tuple[str, str], browser_page: Any, screenshot: Any
) -> None:
    from playwright.async_api import expect

    origin, key = origin_and_key
    page = browser_page
    provider = hub.client.provider
    instance_id = await hub.client.start_new("chain5", client_input=1)
    await hub.client.wait_for_completion(instance_id, timeout=60)
    later = datetime.now(UTC) + timedelta(hours=1)
    await hub.client.start_new("chain5", client_input=2, start_at=later)  # a parked message
    message = QueueMessage(
        uuid.uuid4().hex, None, '{"not": "a task message"}', 11, datetime.now(UTC), None
    )
    poison = await provider.poison.set_aside(
        provider.names.work_item_queue, message, reason="unreadable", instance_id=None
    )
    await page.goto(f"{origin}/dashboard/health?code={key}")
    await expect(page).to_have_url(f"{origin}/dashboard/health")
    names = [*provider.names.control_queues, provider.names.work_item_queue]
    queues = page.locator("#queues tr")
    for name in names:
        await expect(queues.filter(has_text=name)).to_have_count(1)
    counts = page.locator("#instance-counts")
    await expect(counts).to_contain_text("Completed")
    await expect(page.locator("#partitions")).to_be_visible()
    await expect(page.locator("#poison tr").filter(has_text=poison.name)).to_have_count(1)
    await screenshot(page, "07-task-hub-health")

    # Drop the poison record from the UI.
    await (
        page.locator("#poison tr").filter(has_text=poison.name).locator("a:text-is('Drop')").click()
    )
    await page.click("#confirm")
    await expect(page.locator(".flash")).to_contain_text(f"dropped {poison.name}")
    await expect(page.locator("#poison")).to_have_text("None.")
    assert await hub.client.list_poison() == []

    await page.click("#instance-counts a:text-is('Completed')")
    await expect(page.locator("#instances tbody tr").filter(has_text=instance_id)).to_have_count(1)
    assert re.search(r"status=Completed", page.url)
