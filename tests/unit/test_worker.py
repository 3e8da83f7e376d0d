"""Worker behaviour on the in-memory primitives (the real provider, runner and worker)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator
from datetime import timedelta
from typing import Any

import pytest

from durable_azure import DurableApp, DurableClient, OrchestrationStatus, Worker, WorkerOptions
from durable_azure.runner import EpisodeRunner
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.testing.memory import MemoryStorageAccount
from durable_azure.worker import IDLE_POLL_CEILING, POLL_CEILING

HUB = "workerhub"


def make_app(activity_seconds: float, calls: list[str]) -> DurableApp:
    app = DurableApp(task_hub=HUB)
    lock = threading.Lock()

    @app.activity
    def slow(x: int) -> int:
        with lock:
            calls.append(threading.current_thread().name)
        time.sleep(activity_seconds)
        return x + 1

    @app.orchestrator
    def one_slow_step(ctx: Any) -> Generator[Any, Any, int]:
        return (yield ctx.call_activity(slow, ctx.get_input()))

    return app


async def test_long_activity_is_kept_hidden_and_runs_once_with_two_workers() -> None:
    # Visibility 1 s, activity 3.5 s: without renewal the second worker would receive the
    # work item again after 1 s and run it a second time.
    calls: list[str] = []
    app = make_app(3.5, calls)
    account = MemoryStorageAccount()
    options = WorkerOptions(
        visibility_timeout=timedelta(seconds=1), min_poll_interval=0.05, max_poll_interval=0.1
    )
    workers = [Worker(app, account=account, options=options) for _ in range(2)]
    for worker in workers:
        await worker.start()
    try:
        client = DurableClient(AzureStorageProvider(account, app.settings().names))
        instance_id = await client.start_new("one_slow_step", client_input=41)
        status = await client.wait_for_completion(instance_id, timeout=30)
    finally:
        for worker in workers:
            await worker.stop()
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == 42
    assert len(calls) == 1, calls


async def test_unexpected_runner_error_keeps_the_messages_for_a_later_retry() -> None:
    calls: list[str] = []
    app = make_app(0.0, calls)
    account = MemoryStorageAccount()
    provider = AzureStorageProvider(account, app.settings().names)
    await provider.create_if_not_exists()
    client = DurableClient(provider)
    instance_id = await client.start_new("one_slow_step", client_input=1)
    queue = provider.control_queue_of(instance_id)

    def broken_registry(name: str) -> Any:
        raise RuntimeError("registry bug")

    received, _ = await queue.receive(32, timedelta(minutes=5))
    assert len(received) == 1
    await EpisodeRunner(provider, broken_registry).process(instance_id, received)

    # Not deleted, not applied: hidden for a backoff delay, then delivered again.
    assert await queue.queue.approximate_count() == 1
    assert (await provider.load_history(instance_id)).events == []
    await asyncio.sleep(1.1)  # the first backoff is 1 s
    again, _ = await queue.receive(32, timedelta(minutes=5))
    assert [m.raw.id for m in again] == [received[0].raw.id]
    assert again[0].dequeue_count == 2
    await EpisodeRunner(provider, app.get_orchestrator).process(instance_id, again)
    assert (await provider.read_instance(instance_id)).runtime_status.name == "Running"


async def test_history_cache_always_equals_what_storage_holds() -> None:
    """Rewind, continue-as-new and a restart over old rows rewrite history from row 0; the
    worker's cached copy of a live instance must then be exactly what storage holds."""
    app = DurableApp(task_hub=HUB)
    broken = {"on": True}

    @app.activity
    def maybe_fail(x: int) -> int:
        if broken["on"]:
            raise RuntimeError("broken")
        return x

    @app.orchestrator
    def fragile(ctx: Any) -> Generator[Any, Any, int]:
        value = yield ctx.call_activity(maybe_fail, 2)
        yield ctx.wait_for_external_event("finish")  # stays live (and cached) here
        return value

    @app.orchestrator
    def generations(ctx: Any) -> Generator[Any, Any, int]:
        n = ctx.get_input()
        yield ctx.call_activity(maybe_fail, n)
        if n > 0:
            ctx.continue_as_new(n - 1)
            return n
        yield ctx.wait_for_external_event("finish")
        return 0

    account = MemoryStorageAccount()
    worker = Worker(app, account=account, options=WorkerOptions(max_poll_interval=0.05))
    provider = worker.provider

    async def live_and_cached(instance_id: str) -> None:
        for _ in range(200):
            cached = worker.episodes.cache.get(instance_id)
            history = (await provider.load_history(instance_id)).events
            if cached is not None and any(type(e).__name__ == "TaskCompleted" for e in history):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{instance_id} never reached its wait")

    async def assert_cache_matches(instance_id: str) -> None:
        cached = worker.episodes.cache.get(instance_id)
        stored = await provider.load_history(instance_id)
        assert cached is not None
        assert cached.events == stored.events
        assert cached.etag == stored.etag
        assert cached.execution_id == stored.execution_id

    await worker.start()
    try:
        client = DurableClient(AzureStorageProvider(account, app.settings().names))
        await client.start_new("fragile", "f")
        assert (await client.wait_for_completion("f", 10)).runtime_status.name == "Failed"
        broken["on"] = False
        await client.rewind("f")
        await live_and_cached("f")
        await assert_cache_matches("f")  # after a rewind

        await client.start_new("generations", "g", 3)
        await live_and_cached("g")
        await assert_cache_matches("g")  # after continue-as-new
        await client.raise_event("g", "finish")
        await client.wait_for_completion("g", 10)

        await client.start_new("generations", "g", 0)  # a new execution over old rows
        await live_and_cached("g")
        await assert_cache_matches("g")

        for instance_id in ("f", "g"):
            await client.raise_event(instance_id, "finish")
            status = await client.wait_for_completion(instance_id, 10)
            assert status.runtime_status.name == "Completed", status
    finally:
        await worker.stop()


def test_function_names_match_case_insensitively_like_durable_functions() -> None:
    app = DurableApp(task_hub=HUB)

    @app.activity(name="SayHello")
    def say_hello(x: str) -> str:
        return x

    @app.orchestrator
    def Greeter(ctx: Any) -> Any:
        return None

    assert app.get_activity("SayHello") is say_hello
    assert app.get_activity("sayhello") is say_hello
    assert app.get_orchestrator("greeter") is Greeter
    assert app.get_activity("nope") is None


async def test_activity_input_that_is_not_json_is_passed_as_text() -> None:
    from durable_azure.activities import ActivityRunner

    app = DurableApp(task_hub=HUB)

    @app.activity
    def echo(x: Any) -> Any:
        return {"got": x}

    account = MemoryStorageAccount()
    runner = ActivityRunner(
        AzureStorageProvider(account, app.settings().names), app.get_activity, None
    )
    done = await runner.execute("echo", "plain text, not JSON", 0)
    assert type(done).__name__ == "TaskCompleted"
    assert done.result == '{"got":"plain text, not JSON"}'  # type: ignore[attr-defined]


async def test_snapshot_shows_pollers_partitions_and_instances_in_progress() -> None:
    app = DurableApp(task_hub=HUB)
    release = asyncio.Event()

    @app.activity
    async def held(x: int) -> int:
        await release.wait()
        return x

    @app.orchestrator
    def holds(ctx: Any) -> Generator[Any, Any, int]:
        return (yield ctx.call_activity(held, 7))

    account = MemoryStorageAccount()
    worker = Worker(app, account=account, options=WorkerOptions(max_local_activities=1))
    await worker.start()
    try:
        client = DurableClient(AzureStorageProvider(account, app.settings().names))
        instance_id = await client.start_new("holds")
        for _ in range(500):  # until the episode has checkpointed and kept its anchor
            if worker.snapshot()["instances"].get(instance_id, {}).get("anchor"):
                break
            await asyncio.sleep(0.01)
        snap = worker.snapshot()
        names = app.settings().names
        assert set(snap["pollers"]) == {*names.control_queues, names.work_item_queue}
        assert all(p["state"] == "running" for p in snap["pollers"].values())
        assert snap["partitions"]["owned"] == sorted(names.control_queues)
        busy = snap["instances"][instance_id]
        assert busy["local_activities"] == [0]
        assert busy["anchor"] is True
        assert busy["task"]["where"][0].startswith("guarded")
        assert any(frame.startswith("_run_instance") for frame in busy["task"]["where"])
        release.set()
        status = await client.wait_for_completion(instance_id, timeout=10)
        assert status.output == 7
    finally:
        await worker.stop()
    assert all(p["state"] != "running" for p in worker.snapshot()["pollers"].values())


async def test_with_polling_all_but_off_wake_ups_still_move_every_message() -> None:
    # Pollers wait 10 minutes between empty polls, so everything below happens only
    # because something woke them: the client's datagram for the start (another
    # "process": its own provider), this worker's own sends (activity, result), and the
    # due time of the timer it scheduled.
    app = DurableApp(task_hub=HUB)

    @app.activity
    def double(x: int) -> int:
        return 2 * x

    @app.orchestrator
    def nap_then_double(ctx: Any) -> Generator[Any, Any, int]:
        yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=1))
        return (yield ctx.call_activity(double, ctx.get_input()))

    account = MemoryStorageAccount()
    options = WorkerOptions(min_poll_interval=600, max_poll_interval=600)
    worker = Worker(app, account=account, options=options)
    await worker.start()
    client = DurableClient(AzureStorageProvider(account, app.settings().names))
    try:
        await asyncio.sleep(0.2)  # every poller has made its first poll and now waits
        instance_id = await client.start_new("nap_then_double", client_input=21)
        status = await client.wait_for_completion(instance_id, timeout=30)
        assert status.output == 42
        assert worker._wake_listener is not None
        assert worker._wake_listener.stats["delivered"] >= 1  # the client's wake-up
    finally:
        await client.close()
        await worker.stop()


async def test_a_local_activity_that_finishes_during_the_checkpoint_runs_once() -> None:
    # The activity outlives the episode's fold window and finishes while the episode
    # writes its checkpoint: its result waits for the next episode, and the task the
    # episode hands back must not be started a second time.
    app = DurableApp(task_hub=HUB)
    release = threading.Event()
    calls: list[int] = []

    @app.activity
    def held(x: int) -> int:
        calls.append(x)
        release.wait(10)
        return x + 1

    @app.orchestrator
    def one_held_step(ctx: Any) -> Generator[Any, Any, int]:
        return (yield ctx.call_activity(held, ctx.get_input()))

    account = MemoryStorageAccount()
    worker = Worker(app, account=account, options=WorkerOptions(fold_window=0.01))
    commit = worker.provider.commit

    async def commit_after_the_activity_finished(checkpoint: Any) -> Any:
        if not release.is_set():
            release.set()
            # The result lands from the worker's own task: nothing to wait on but the state.
            while not worker._active[checkpoint.instance_id].results:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return await commit(checkpoint)

    worker.provider.commit = commit_after_the_activity_finished  # type: ignore[method-assign]
    await worker.start()
    client = DurableClient(AzureStorageProvider(account, app.settings().names))
    try:
        instance_id = await client.start_new("one_held_step", client_input=1)
        status = await client.wait_for_completion(instance_id, timeout=30)
    finally:
        await client.close()
        await worker.stop()
    assert status.output == 2
    assert calls == [1]


def test_the_idle_poll_ceiling_follows_the_wake_up_setting() -> None:
    # With wake-ups a message sent on this machine is picked up at once, so idle polls
    # back off further (fewer requests an hour); without them polling is all there is.
    assert WorkerOptions().poll_ceiling == IDLE_POLL_CEILING
    assert WorkerOptions(wake_ups=False).poll_ceiling == POLL_CEILING
    assert WorkerOptions(max_poll_interval=7.5).poll_ceiling == 7.5
    assert WorkerOptions(wake_ups=False, max_poll_interval=60).poll_ceiling == 60
    with pytest.raises(ValueError, match="min_poll_interval <= max_poll_interval"):
        WorkerOptions(wake_ups=False, min_poll_interval=6.0)
    WorkerOptions(min_poll_interval=6.0)  # below the 90 s default ceiling: fine
