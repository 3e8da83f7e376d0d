"""The episode runner's message triage, each rule checked by its effect on storage.

The real provider, runner and storage code run on the in-memory account (see ``harness``);
messages are injected with the provider's own ``send`` where a test needs a duplicate, a
stale or an early message.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from datetime import timedelta
from typing import Any

import pytest
from harness import VISIBILITY, Harness

from durable_azure.engine import serialization
from durable_azure.engine.context import OrchestrationContext
from durable_azure.engine.history import (
    ExecutionCompleted,
    ExecutionStarted,
    HistoryEvent,
    OrchestrationStatus,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from durable_azure.errors import InstanceAlreadyExistsError, TaskFailedError
from durable_azure.runner import MAX_ORPHAN_DEQUEUES, EpisodeRunner
from durable_azure.storage.messages import TaskMessage
from durable_azure.storage.names import (
    MAX_INLINE_MESSAGE_BYTES,
    MAX_INLINE_PROPERTY_BYTES,
    MAX_VISIBILITY_TIMEOUT,
    SENTINEL_ROW_KEY,
    escape_key,
)
from durable_azure.storage.provider import Outbound
from durable_azure.storage.queues import ReceivedMessage, abandon_delay

Orch = Generator[Any, Any, Any]


def chain(ctx: OrchestrationContext) -> Orch:
    value = ctx.get_input()
    for _ in range(3):
        value = yield ctx.call_activity("add_one", value)
    return value


def quick(ctx: OrchestrationContext) -> Any:
    return "again"


def calls_missing(ctx: OrchestrationContext) -> Orch:
    try:
        yield ctx.call_activity("missing", 1)
    except TaskFailedError as exc:
        return {"type": exc.error_type, "message": exc.error_message}
    return "not reached"


def sleeper(ctx: OrchestrationContext) -> Orch:
    yield ctx.create_timer(ctx.current_utc_datetime + timedelta(hours=1))
    return "woke"


def long_sleeper(ctx: OrchestrationContext) -> Orch:
    # Beyond the queue's 7-day visibility limit.
    yield ctx.create_timer(ctx.current_utc_datetime + timedelta(days=10))
    return "woke after 10 days"


def event_or_timer(ctx: OrchestrationContext) -> Orch:
    timer = ctx.create_timer(ctx.current_utc_datetime + timedelta(hours=1))
    event = ctx.wait_for_external_event("answer")
    winner = yield ctx.task_any([event, timer])
    if winner is event:
        timer.cancel()
        return event.result
    return "timed out"


def waiter(ctx: OrchestrationContext) -> Orch:
    return (yield ctx.wait_for_external_event("go"))


def parent_of_waiter(ctx: OrchestrationContext) -> Orch:
    answer = yield ctx.call_sub_orchestrator("waiter", None, instance_id="kid")
    return f"child said {answer}"


def echo_big(ctx: OrchestrationContext) -> Orch:
    result = yield ctx.call_activity("exclaim", ctx.get_input())
    return result


ORCHESTRATORS = {
    "long_sleeper": long_sleeper,
    "event_or_timer": event_or_timer,
    "chain": chain,
    "quick": quick,
    "calls_missing": calls_missing,
    "sleeper": sleeper,
    "echo_big": echo_big,
    "waiter": waiter,
    "parent_of_waiter": parent_of_waiter,
}
ACTIVITIES = {"add_one": lambda x: x + 1, "exclaim": lambda s: s + "!"}


@pytest.fixture
def h() -> Harness:
    return Harness(ORCHESTRATORS, ACTIVITIES)


async def execution_of(h: Harness, instance_id: str) -> str:
    execution_id = (await h.provider.load_history(instance_id)).execution_id
    assert execution_id is not None
    return execution_id


async def inject(h: Harness, event: HistoryEvent, instance_id: str, execution_id: str) -> None:
    """Send ``event`` to the instance's control queue, as another process would."""
    await h.provider.send(Outbound(TaskMessage(event, instance_id, execution_id)))


def completion(h: Harness, task_id: int, value: Any) -> TaskCompleted:
    return TaskCompleted(
        timestamp=h.clock.now, task_scheduled_id=task_id, result=serialization.dumps(value)
    )


async def control_count(h: Harness, instance_id: str) -> int:
    return await h.provider.control_queue_of(instance_id).queue.approximate_count()


async def visible_in_control(h: Harness, instance_id: str) -> int:
    return len(await h.provider.control_queue_of(instance_id).queue.peek(32))


def completions_of(events: list[HistoryEvent], task_id: int) -> list[TaskCompleted]:
    return [e for e in events if isinstance(e, TaskCompleted) and e.task_scheduled_id == task_id]


# --- duplicates and stale messages ---------------------------------------------------------


async def test_duplicate_completion_after_commit_is_deleted_not_appended(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    await h.run_episodes()  # episode 1: schedules task 0
    await h.run_activities()  # task 0 -> TaskCompleted(11)
    await h.run_episodes()  # episode 2: applies it, schedules task 1
    history = await h.history("inst")
    await inject(h, completion(h, 0, 999), "inst", await execution_of(h, "inst"))

    await h.run_episodes()

    assert await h.history("inst") == history  # nothing appended, not even an episode
    assert await control_count(h, "inst") == 0  # the duplicate was deleted
    await h.drain()
    await h.assert_completed("inst", 13)
    assert [e.result for e in completions_of(await h.history("inst"), 0)] == ["11"]


async def test_duplicate_completion_in_the_same_batch_is_applied_once(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    await h.run_episodes()
    await h.run_activities()
    await inject(h, completion(h, 0, 999), "inst", await execution_of(h, "inst"))
    assert await control_count(h, "inst") == 2

    await h.run_episodes()  # both copies in one batch

    assert await control_count(h, "inst") == 0
    assert [e.result for e in completions_of(await h.history("inst"), 0)] == ["11"]
    await h.drain()
    await h.assert_completed("inst", 13)


async def test_completion_for_an_older_execution_is_deleted(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    await h.run_episodes()
    history = await h.history("inst")
    await inject(h, completion(h, 0, 999), "inst", "0ld0000000000000000000000000000e")

    await h.run_episodes()

    assert await h.history("inst") == history
    assert await control_count(h, "inst") == 0
    await h.drain()
    await h.assert_completed("inst", 13)


async def test_response_before_its_task_scheduled_is_deferred(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    await h.run_episodes()  # task 0 scheduled; task 1 not yet
    history = await h.history("inst")
    # Task 1's response, arriving before the checkpoint that schedules task 1.
    await inject(h, completion(h, 1, 12), "inst", await execution_of(h, "inst"))

    await h.run_episodes()

    assert await h.history("inst") == history  # not applied
    assert await control_count(h, "inst") == 1  # not deleted
    assert await visible_in_control(h, "inst") == 0  # hidden for a backoff
    h.clock.advance(abandon_delay(1))
    visible = await h.provider.control_queue_of("inst").queue.peek(32)
    assert [m.dequeue_count for m in visible] == [1]

    await h.drain()
    await h.assert_completed("inst", 13)
    assert len(completions_of(await h.history("inst"), 1)) == 1


async def test_message_for_missing_instance_is_deferred_then_deleted(h: Harness) -> None:
    await h.client._ensure_hub()
    await inject(h, completion(h, 0, 1), "ghost", "e0000000000000000000000000000001")
    queue = h.provider.control_queue_of("ghost").queue
    deliveries = 0
    for _ in range(50):
        if not await queue.approximate_count():
            break
        deliveries += await h.run_episodes()
        when = h.account.next_visible_time()
        if when is not None:
            h.clock.now = max(h.clock.now, when)
    assert await queue.approximate_count() == 0, "the orphan message is still cycling"
    assert deliveries == MAX_ORPHAN_DEQUEUES + 1
    assert await h.history("ghost") == []
    assert await h.provider.read_instance("ghost") is None


async def test_duplicate_execution_started_is_deleted(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    await h.run_episodes()
    history = await h.history("inst")
    started = next(e for e in history if isinstance(e, ExecutionStarted))
    row_before = await h.provider.read_instance("inst")

    await inject(h, started, "inst", started.execution_id)
    await h.run_episodes()

    assert await h.history("inst") == history
    assert await control_count(h, "inst") == 0
    row = await h.provider.read_instance("inst")
    assert row is not None
    assert row_before is not None
    assert row.etag == row_before.etag  # nothing rewritten
    await h.drain()
    await h.assert_completed("inst", 13)


async def test_start_of_other_execution_while_row_running_is_discarded(h: Harness) -> None:
    # The row was written by a start that won a race; this start's message lost it.
    await h.client._ensure_hub()
    await h.provider.instances.create(
        "inst",
        {"Name": "chain", "RuntimeStatus": "Running", "ExecutionId": "a" * 32},
        replace_etag=None,
    )
    loser = ExecutionStarted(
        timestamp=h.clock.now, name="chain", instance_id="inst", execution_id="b" * 32, input="1"
    )
    await inject(h, loser, "inst", loser.execution_id)

    await h.run_episodes()

    assert await control_count(h, "inst") == 0
    assert await h.history("inst") == []
    row = await h.provider.read_instance("inst")
    assert row is not None
    assert row.execution_id == "a" * 32
    assert row.runtime_status is OrchestrationStatus.Running


async def test_start_of_other_execution_while_history_running_is_discarded(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    await h.run_episodes()
    history = await h.history("inst")
    execution_id = await execution_of(h, "inst")
    other = ExecutionStarted(
        timestamp=h.clock.now, name="quick", instance_id="inst", execution_id="b" * 32
    )
    await inject(h, other, "inst", other.execution_id)

    await h.run_episodes()

    assert await h.history("inst") == history
    assert await control_count(h, "inst") == 0
    await h.drain()
    await h.assert_completed("inst", 13)
    assert await execution_of(h, "inst") == execution_id


# --- starting and restarting -------------------------------------------------------------


async def test_restarting_a_completed_instance_runs_a_new_execution(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    await h.drain()
    await h.assert_completed("inst", 13)
    old_execution = await execution_of(h, "inst")
    old_rows = len(await h.history("inst"))

    await h.start("quick", "inst")
    await h.drain()

    await h.assert_completed("inst", "again")
    loaded = await h.provider.load_history("inst")
    assert loaded.execution_id != old_execution
    assert len(loaded.events) == 4  # OrchestratorStarted, ExecutionStarted, completion, end
    started = next(e for e in loaded.events if isinstance(e, ExecutionStarted))
    assert started.name == "quick"
    # The old execution's longer tail was deleted along with the new execution's first
    # write: only the current execution's rows remain.
    rows, _ = await h.provider.history.table.query(partition_key=escape_key("inst"))
    positions = [r for r in rows if r.row_key != SENTINEL_ROW_KEY]
    assert old_rows > len(loaded.events)
    assert len(positions) == len(loaded.events)
    assert old_execution not in {r.get("ExecutionId") for r in positions}
    row = await h.provider.read_instance("inst")
    assert row is not None
    assert row.name == "quick"
    assert row.generation == 1


@pytest.mark.parametrize("episodes_before", [0, 1], ids=["pending", "running"])
async def test_start_new_on_active_id_raises_and_sends_nothing(
    h: Harness, episodes_before: int
) -> None:
    await h.start("chain", "inst", 10)
    for _ in range(episodes_before):
        await h.run_episodes()
    row_before = await h.provider.read_instance("inst")
    queued_before = await h.queued()
    sends_before = h.account.stats.counts["queue_send"]

    with pytest.raises(InstanceAlreadyExistsError):
        await h.start("chain", "inst", 99)

    assert h.account.stats.counts["queue_send"] == sends_before
    assert await h.queued() == queued_before
    assert await h.provider.read_instance("inst") == row_before
    await h.drain()
    await h.assert_completed("inst", 13)


# --- unknown functions ---------------------------------------------------------------------


async def test_unknown_orchestrator_fails_the_instance(h: Harness) -> None:
    await h.start("nope", "inst", 1)
    await h.drain()

    row = await h.provider.read_instance("inst")
    assert row is not None
    assert row.runtime_status is OrchestrationStatus.Failed
    output = await h.output("inst")
    assert output.startswith("UnknownFunctionError: no orchestrator named 'nope'")
    status = await h.client.get_status("inst")
    assert status.failure_details is not None
    assert status.failure_details.error_type == "UnknownFunctionError"
    completed = [e for e in await h.history("inst") if isinstance(e, ExecutionCompleted)]
    assert [e.orchestration_status for e in completed] == [OrchestrationStatus.Failed]
    assert await h.queued() == 0


async def test_unknown_activity_fails_the_task_catchably(h: Harness) -> None:
    await h.start("calls_missing", "inst")
    await h.drain()

    result = await h.output("inst")
    assert result["type"] == "UnknownFunctionError"
    assert "no activity named 'missing'" in result["message"]
    await h.assert_completed("inst", result)


# --- timers --------------------------------------------------------------------------------


async def test_timer_beyond_seven_days_is_parked_in_steps_then_fires(h: Harness) -> None:
    await h.start("long_sleeper", "inst")
    await h.run_episodes()
    history = await h.history("inst")
    due = next(e for e in history if isinstance(e, TimerCreated)).fire_at
    assert await control_count(h, "inst") == 1
    first_surface = h.account.next_visible_time()
    assert first_surface is not None
    assert first_surface - h.clock.now <= MAX_VISIBILITY_TIMEOUT  # the queue's limit

    # The message surfaces 3 days early: it is parked again, not applied.
    h.clock.now = first_surface
    [early] = await h.provider.control_queue_of("inst").queue.peek(1)
    await h.run_episodes()
    assert await h.history("inst") == history
    assert await control_count(h, "inst") == 1
    assert await visible_in_control(h, "inst") == 0
    second_surface = h.account.next_visible_time()
    assert second_surface == due  # hidden exactly until the timer is due

    h.clock.now = due
    [resent] = await h.provider.control_queue_of("inst").queue.peek(1)
    assert resent.id != early.id  # a new message; the early one was deleted
    await h.run_episodes()
    await h.assert_completed("inst", "woke after 10 days")
    fired = [e for e in await h.history("inst") if isinstance(e, TimerFired)]
    assert len(fired) == 1


async def test_cancelled_timer_that_fires_after_completion_is_dropped_quietly(
    h: Harness,
) -> None:
    await h.start("event_or_timer", "inst")
    await h.run_episodes()
    await h.client.raise_event("inst", "answer", "yes")
    await h.run_episodes()
    status = await h.client.get_status("inst")
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == "yes"
    history = await h.history("inst")
    assert await control_count(h, "inst") == 1  # the losing timer's message is still there

    h.clock.advance(timedelta(hours=1, seconds=1).total_seconds())
    await h.run_episodes()
    assert await control_count(h, "inst") == 0  # deleted ...
    assert await h.history("inst") == history  # ... without touching the history
    await h.assert_completed("inst", "yes")


# --- large payloads ------------------------------------------------------------------------


async def test_large_input_and_output_round_trip_through_blobs(h: Harness) -> None:
    big = "x" * 200_000
    await h.start("echo_big", "inst", big)
    await h.drain()

    await h.assert_completed("inst", big + "!")
    status = await h.client.get_status("inst")
    assert status.input_ == big
    assert status.output == big + "!"
    events = await h.history("inst")
    started = next(e for e in events if isinstance(e, ExecutionStarted))
    assert started.input == serialization.dumps(big)
    [scheduled] = [e for e in events if isinstance(e, TaskScheduled)]
    assert scheduled.input == serialization.dumps(big)
    # Nothing over the limits ever reached a queue or a table (the memory account would also
    # have refused it: 64 KiB per message, 64 KiB per property).
    assert h.account.largest_queue_body <= MAX_INLINE_MESSAGE_BYTES
    assert h.account.largest_table_property <= MAX_INLINE_PROPERTY_BYTES
    blobs = await h.provider.payloads.container.list_names("inst/")
    assert any("/message-" in b and b.endswith("-ExecutionStarted.json.gz") for b in blobs)
    assert any("/message-" in b and b.endswith("-TaskScheduled.json.gz") for b in blobs)
    assert any("/message-" in b and b.endswith("-TaskCompleted.json.gz") for b in blobs)
    assert any("/history-" in b and b.endswith("-Result.json.gz") for b in blobs)
    assert any("/history-" in b and b.endswith("-Input.json.gz") for b in blobs)
    row = await h.provider.read_instance("inst")
    assert row is not None
    assert row.input is not None
    assert row.input.startswith("http")
    assert row.output is not None
    assert row.output.startswith("http")


async def test_stale_message_after_restart_does_not_overwrite_new_row(h: Harness) -> None:
    # A late copy of an old execution's message is received, then the client restarts the
    # id (the row now names the new, Pending execution), then the stale message is judged.
    await h.start("chain", "inst", 10)
    await h.drain()
    old_execution = await execution_of(h, "inst")
    await inject(h, completion(h, 2, 999), "inst", old_execution)
    batch, _ = await h.provider.control_queue_of("inst").receive(32)
    await h.start("quick", "inst")
    row_before = await h.provider.read_instance("inst")
    assert row_before is not None
    assert row_before.runtime_status is OrchestrationStatus.Pending

    await h.episodes.process("inst", batch)

    row = await h.provider.read_instance("inst")
    assert row is not None
    assert row.execution_id == row_before.execution_id
    assert row.runtime_status is OrchestrationStatus.Pending, (
        "the repair rewrote the new execution's row from the old execution's history"
    )
    await h.drain()
    await h.assert_completed("inst", "again")


async def test_unsupported_dtfx_event_does_not_wedge_the_instance(h: Harness) -> None:
    # A DTFx client sent an event type this version does not model (HistoryState, with
    # an object-valued member). The episode that receives it must still commit.
    await h.start("chain", "inst", 10)
    await h.run_episodes()
    body = {
        "$type": "DurableTask.AzureStorage.MessageData, DurableTask.AzureStorage",
        "ActivityId": "5dc4e0f2-8f3e-4b8a-9f79-0a41e1f5c3d2",
        "TaskMessage": {
            "$type": "DurableTask.Core.TaskMessage, DurableTask.Core",
            "Event": {
                "$type": "DurableTask.Core.History.HistoryStateEvent, DurableTask.Core",
                "Reason": "rewind it",
                "ParentTraceContext": {
                    "$type": "DurableTask.Core.Tracing.DistributedTraceContext, DurableTask.Core",
                    "TraceParent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                },
                "EventType": 18,
                "EventId": -1,
                "IsPlayed": False,
                "Timestamp": "2024-05-01T10:00:09.0000000Z",
            },
            "SequenceNumber": 0,
            "OrchestrationInstance": {
                "$type": "DurableTask.Core.OrchestrationInstance, DurableTask.Core",
                "InstanceId": "inst",
                "ExecutionId": await execution_of(h, "inst"),
            },
        },
        "SequenceNumber": 1,
        "Sender": {"InstanceId": "", "ExecutionId": ""},
    }
    await h.provider.control_queue_of("inst").queue.send(json.dumps(body))

    await h.run_episodes()  # must not raise out of the runner

    assert await control_count(h, "inst") == 0
    await h.drain()
    await h.assert_completed("inst", 13)


# --- a history cached by a worker that lost the partition meanwhile --------------------------


async def run_episodes_with(h: Harness, runner: EpisodeRunner) -> None:
    """One poll of every control queue, processed by ``runner`` (another worker)."""
    for queue in h.provider.control_queues:
        received, _ = await queue.receive(32, VISIBILITY)
        by_instance: dict[str, list[ReceivedMessage]] = {}
        for message in received:
            by_instance.setdefault(message.message.instance_id, []).append(message)
        for instance_id, batch in by_instance.items():
            await runner.process(instance_id, batch)


def other_worker(h: Harness) -> EpisodeRunner:
    return EpisodeRunner(h.provider, h.orchestrators.get, clock=h.clock)


async def test_a_stale_cached_history_does_not_defer_a_response(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    await h.run_episodes()  # worker A: schedules task 0 and caches that history
    await h.run_activities()
    await run_episodes_with(h, other_worker(h))  # worker B: applies it, schedules task 1
    await h.run_activities()  # task 1's response

    await h.run_episodes()  # back at A, whose cached history has no task 1

    events = await h.history("inst")
    assert len(completions_of(events, 1)) == 1  # applied now, not deferred with backoff
    assert any(isinstance(e, TaskScheduled) and e.event_id == 2 for e in events)
    await h.drain()
    await h.assert_completed("inst", 13)


async def test_a_stale_cached_history_does_not_delete_a_newer_executions_message(
    h: Harness,
) -> None:
    await h.start("chain", "inst", 10)
    await h.run_episodes()  # worker A caches execution 1 while it runs
    b = other_worker(h)
    for _ in range(3):  # worker B finishes execution 1
        await h.run_activities()
        await run_episodes_with(h, b)
    await h.assert_completed("inst", 13)
    await h.start("chain", "inst", 20)  # a restart: execution 2
    await run_episodes_with(h, b)  # B starts it and schedules its task 0
    second = await execution_of(h, "inst")
    await h.run_activities()  # task 0's response, for execution 2

    await h.run_episodes()  # at A, whose cache still says execution 1 is current

    events = await h.history("inst")
    assert (await execution_of(h, "inst")) == second
    assert [e.result for e in completions_of(events, 0)] == ["21"]  # applied, not deleted
    await h.drain()
    await h.assert_completed("inst", 23)


# --- suspension ------------------------------------------------------------------------------


async def test_suspending_a_sub_orchestration_does_not_end_it_for_its_parent(
    h: Harness,
) -> None:
    await h.start("parent_of_waiter", "mom")
    await h.drain()  # the parent waits for "kid", which waits for "go"
    await h.client.suspend("kid", reason="pause")
    await h.drain()

    kid = await h.provider.read_instance("kid")
    assert kid is not None
    assert kid.runtime_status is OrchestrationStatus.Suspended
    assert kid.completed_time is None
    ended = (SubOrchestrationInstanceCompleted, SubOrchestrationInstanceFailed)
    assert not any(isinstance(e, ended) for e in await h.history("mom"))
    assert (await h.provider.read_instance("mom")).runtime_status is OrchestrationStatus.Running

    await h.client.raise_event("kid", "go", "yes")  # kept while suspended
    await h.client.resume("kid")
    await h.drain()
    await h.assert_completed("kid", "yes")
    await h.assert_completed("mom", "child said yes")
