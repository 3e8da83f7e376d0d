"""Crash at every step of an episode's checkpoint, on the in-memory storage account.

The real provider, runner and storage code run on :class:`MemoryStorageAccount`; a fault
hook kills the "process" at one storage operation of one episode's commit (and fails every
later operation of that process). The harness then starts a new process (fresh history
cache) once the held messages reappear, and runs the hub until it is idle.

Whatever the crash point, the orchestration must complete with the right output, with no
task scheduled or completed twice in its history, an Instances row that converges to
Completed (the "crash between the history write and the Instances update" repair), and no
message left behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import pytest
from harness import HUB, CrashPoint, Harness

from durable_azure.app import DurableApp
from durable_azure.engine.context import OrchestrationContext
from durable_azure.engine.history import (
    ExecutionStarted,
    OrchestrationStatus,
    TaskCompleted,
)
from durable_azure.storage.primitives import OpKind
from durable_azure.worker import Worker, WorkerOptions

Orch = Generator[Any, Any, Any]


def chain(ctx: OrchestrationContext) -> Orch:
    value = ctx.get_input()
    for _ in range(3):
        value = yield ctx.call_activity("add_one", value)
    return value


def fan_out(ctx: OrchestrationContext) -> Orch:
    n = ctx.get_input()
    results = yield ctx.task_all([ctx.call_activity("square", i) for i in range(n)])
    return results


ORCHESTRATORS = {"chain": chain, "fan_out": fan_out}
ACTIVITIES = {"add_one": lambda x: x + 1, "square": lambda x: x * x}


@dataclass(frozen=True)
class Scenario:
    orchestrator: str
    input: Any
    output: Any
    #: Episodes the orchestration takes when nothing fails.
    episodes: int


CHAIN = Scenario("chain", 10, 13, episodes=4)
FAN_OUT = Scenario("fan_out", 5, [0, 1, 4, 9, 16], episodes=2)


# Where, in one episode's commit, the process dies. The memory account runs the hook before
# the operation touches state, so "the n-th op of kind K" means "just before it".
STEPS: dict[str, tuple[OpKind, int]] = {
    "before_any_send": (OpKind.QUEUE_SEND, 1),
    "between_sends": (OpKind.QUEUE_SEND, 3),
    "before_history_write": (OpKind.TABLE_BATCH, 1),
    "after_history_before_instances": (OpKind.TABLE_WRITE, 1),
    "after_instances_before_deletes": (OpKind.QUEUE_DELETE, 1),
    "between_deletes": (OpKind.QUEUE_DELETE, 2),
}

# (scenario, episode, step): every step that exists in that episode's commit. Chain episodes
# send one message and consume one; fan-out episode 1 sends five, episode 2 consumes five
# completions; final episodes send nothing. A middle episode that changes neither the
# status nor the custom status writes no Instances row.
CASES = [
    *[(CHAIN, 1, s) for s in STEPS if "between" not in s],
    *[(CHAIN, 2, s) for s in STEPS if "between" not in s and s != "after_history_before_instances"],
    *[(CHAIN, 4, s) for s in STEPS if "between" not in s and s != "before_any_send"],
    *[(FAN_OUT, 1, s) for s in STEPS if s != "between_deletes"],
    *[(FAN_OUT, 2, s) for s in STEPS if "send" not in s],
]


def _case_id(case: tuple[Scenario, int, str]) -> str:
    scenario, episode, step = case
    return f"{scenario.orchestrator}-episode{episode}-{step}"


def _history_rows(h: Harness) -> int:
    return sum(1 for _ in h.account._state.tables[h.names.history_table])


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
async def test_crash_in_checkpoint_recovers(case: tuple[Scenario, int, str]) -> None:
    scenario, episode, step = case
    kind, nth = STEPS[step]
    h = Harness(ORCHESTRATORS, ACTIVITIES)
    await h.start(scenario.orchestrator, "inst", scenario.input)
    h.crash_at("inst", CrashPoint(kind, nth, episode=episode))

    # Run up to the crash and check it landed where intended.
    while not h.crashes:
        rows_before = _history_rows(h)
        assert await h.step(), "the hub went idle before the crash point"
    rows_after = _history_rows(h)
    if kind in (OpKind.QUEUE_SEND, OpKind.TABLE_BATCH):
        assert rows_after == rows_before, "history written before the crash point"
    else:
        assert rows_after > rows_before, "history not written before the crash point"
    if step == "between_sends":
        # Sends before the crash point landed, the rest died with the process.
        assert await h.provider.work_items.queue.approximate_count() == nth - 1

    await h.drain()

    await h.assert_completed("inst", scenario.output)
    assert h.crashes == 1
    events = await h.history("inst")
    assert sum(isinstance(e, ExecutionStarted) for e in events) == 1


@pytest.mark.parametrize("scenario", [CHAIN, FAN_OUT], ids=["chain", "fan_out"])
async def test_no_crash_baseline(scenario: Scenario) -> None:
    h = Harness(ORCHESTRATORS, ACTIVITIES)
    await h.start(scenario.orchestrator, "inst", scenario.input)
    await h.drain()
    await h.assert_completed("inst", scenario.output)
    assert h.episodes_run["inst"] == scenario.episodes
    assert sum(h.calls.values()) == (3 if scenario is CHAIN else 5)


async def test_crash_after_history_of_final_episode_repairs_instances_row() -> None:
    # The history says Completed, the row still says Running until a redelivered message
    # makes the runner compare them.
    h = Harness(ORCHESTRATORS, ACTIVITIES)
    await h.start("chain", "inst", 1)
    h.crash_at("inst", CrashPoint(OpKind.TABLE_WRITE, 1, episode=4))
    while not h.crashes:
        await h.step()
    row = await h.provider.read_instance("inst")
    assert row is not None
    assert row.runtime_status is OrchestrationStatus.Running
    await h.drain()
    await h.assert_completed("inst", 4)


@pytest.mark.parametrize("scenario", [CHAIN, FAN_OUT], ids=["chain", "fan_out"])
async def test_crash_between_activity_response_and_work_item_delete(scenario: Scenario) -> None:
    h = Harness(ORCHESTRATORS, ACTIVITIES)
    await h.start(scenario.orchestrator, "inst", scenario.input)
    # The first activity sends its response, then dies before deleting its work item.
    h.crash_at("inst", CrashPoint(OpKind.QUEUE_DELETE, on=h.names.work_item_queue))
    await h.drain()

    assert h.crashes == 1
    await h.assert_completed("inst", scenario.output)
    activity = "add_one" if scenario is CHAIN else "square"
    expected_runs = 3 if scenario is CHAIN else 5
    assert h.calls[activity] == expected_runs + 1  # the first one ran twice
    completions = [e for e in await h.history("inst") if isinstance(e, TaskCompleted)]
    assert sorted(e.task_scheduled_id for e in completions) == list(range(expected_runs))


async def test_two_instances_one_crash() -> None:
    # A crash during one instance's episode does not lose the other instance's messages,
    # which the dead process had received in the same poll.
    h = Harness(ORCHESTRATORS, ACTIVITIES, partition_count=1)
    await h.start("chain", "a", 0)
    await h.start("fan_out", "b", 3)
    h.crash_at("a", CrashPoint(OpKind.TABLE_BATCH, 1, episode=2))
    await h.drain()
    assert h.crashes == 1
    await h.assert_completed("a", 3)
    await h.assert_completed("b", [0, 1, 4])


async def test_crash_between_history_batches_of_a_large_checkpoint() -> None:
    # 120 activities: episode 1 writes 123 rows, in two entity-group transactions (99 rows
    # + sentinel, then the rest). A crash between them leaves a committed partial history
    # (no OrchestratorCompleted, tasks 97-119 not recorded); replay re-schedules the rest.
    n = 120
    h = Harness(ORCHESTRATORS, ACTIVITIES)
    await h.start("fan_out", "inst", n)
    h.crash_at("inst", CrashPoint(OpKind.TABLE_BATCH, 2, episode=1))
    await h.step()
    assert h.crashes == 1
    partial = await h.history("inst")
    assert len(partial) == 99

    await h.drain()

    await h.assert_completed("inst", [i * i for i in range(n)])
    assert h.account.stats.counts["table_batch"] >= 2


@pytest.mark.parametrize(
    ("scenario", "episode"), [(CHAIN, 4), (FAN_OUT, 2)], ids=["chain", "fan_out"]
)
async def test_real_worker_recovers_after_crash_before_instances_update(
    scenario: Scenario, episode: int
) -> None:
    # The process dies between the final history write and the Instances update; the
    # restarted process is a real Worker (pollers, batching, its own runners and cache).
    h = Harness(ORCHESTRATORS, ACTIVITIES)
    await h.start(scenario.orchestrator, "inst", scenario.input)
    h.crash_at("inst", CrashPoint(OpKind.TABLE_WRITE, 1, episode=episode))
    while not h.crashes:
        await h.step()
    row = await h.provider.read_instance("inst")
    assert row is not None
    assert row.runtime_status is OrchestrationStatus.Running

    app = DurableApp(task_hub=HUB, partition_count=4)
    for name, fn in ORCHESTRATORS.items():
        app.orchestrator(fn, name=name)
    for name, activity in ACTIVITIES.items():
        app.activity(activity, name=name)
    h.clock.follow_real_time()
    options = WorkerOptions(min_poll_interval=0.01, max_poll_interval=0.05)
    async with Worker(app, account=h.account, options=options):
        status = await h.client.wait_for_completion("inst", timeout=30, poll_interval=0.02)
        for _ in range(500):  # the redelivered messages are deleted after the status flips
            if not await h.queued():
                break
            await asyncio.sleep(0.02)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == scenario.output
    await h.assert_completed("inst", scenario.output)
