"""Activities run in-process by the worker that runs their orchestration ("local dispatch").

The real runner, provider and activity code on the in-memory account (see ``harness``):
the test plays the worker's part - it runs the activities an episode hands back and feeds
their results to the next episode, keeping the anchor message between episodes - and
checks what reaches storage, and what a crash re-runs.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from harness import VISIBILITY, Harness

from durable_azure.engine.context import OrchestrationContext
from durable_azure.engine.history import OrchestrationStatus, OrchestratorStarted, TaskScheduled
from durable_azure.errors import StorageError
from durable_azure.runner import (
    EpisodeOutcome,
    EpisodeRunner,
    LocalResult,
    LocalTask,
    is_local,
)
from durable_azure.storage.primitives import OpKind
from durable_azure.storage.queues import ReceivedMessage

Orch = Generator[Any, Any, Any]


def chain(ctx: OrchestrationContext) -> Orch:
    value = ctx.get_input()
    for _ in range(3):
        value = yield ctx.call_activity("add_one", value)
    return value


def with_status(ctx: OrchestrationContext) -> Orch:
    first = yield ctx.call_activity("add_one", ctx.get_input())
    second = yield ctx.call_activity("add_one", first)
    ctx.set_custom_status({"second": second})
    third = yield ctx.call_activity("add_one", second)
    return third


def fan_out(ctx: OrchestrationContext) -> Orch:
    results = yield ctx.task_all([ctx.call_activity("add_one", i) for i in range(4)])
    return sum(results)


ORCHESTRATORS = {"chain": chain, "with_status": with_status, "fan_out": fan_out}
ACTIVITIES = {"add_one": lambda x: x + 1}


@pytest.fixture
def h() -> Harness:
    return Harness(ORCHESTRATORS, ACTIVITIES)


def take_all(name: str) -> bool:
    return True


async def receive(h: Harness, instance_id: str) -> list[ReceivedMessage]:
    received, _ = await h.provider.control_queue_of(instance_id).receive(32, VISIBILITY)
    return received


async def run_local(h: Harness, outcome: EpisodeOutcome) -> list[LocalResult]:
    """Run the episode's local activities (counted in ``h.calls``) as the worker would."""
    results = []
    for task in outcome.local:
        event = await h.activities.execute(
            task.scheduled.name, task.scheduled.input, task.scheduled.event_id
        )
        results.append(LocalResult(task.execution_id, event))
    return results


async def run_to_the_end(h: Harness, outcome: EpisodeOutcome) -> None:
    """Go on from ``outcome`` (of instance ``inst``) until nothing local is left."""
    while outcome.local:
        outcome = await h.episodes.process(
            "inst",
            [],
            results=await run_local(h, outcome),
            anchor=outcome.anchor,
            run_locally=take_all,
        )


async def run_session(h: Harness, runner: EpisodeRunner, instance_id: str) -> int:
    """Play the worker until the instance has nothing local left; returns episodes run."""
    outcome = await runner.process(instance_id, await receive(h, instance_id), run_locally=take_all)
    episodes = 1
    while outcome.local:
        results = await run_local(h, outcome)
        outcome = await runner.process(
            instance_id, [], results=results, anchor=outcome.anchor, run_locally=take_all
        )
        episodes += 1
    assert outcome.anchor is None
    return episodes


async def test_a_chain_runs_without_a_single_work_item(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    h.account.stats.reset()

    assert await run_session(h, h.episodes, "inst") == 4

    await h.assert_completed("inst", 13)
    scheduled = [e for e in await h.history("inst") if isinstance(e, TaskScheduled)]
    assert len(scheduled) == 3
    assert all(is_local(e) for e in scheduled)
    ops = h.account.stats.snapshot()
    assert ops.get("queue_send", 0) == 0  # no work item, no response message
    assert ops["queue_delete"] == 1  # the start message, once the last episode is in
    assert ops["table_batch"] == 4  # one history write per episode
    # Instances: Running at the first episode, Completed at the last; nothing between.
    assert ops["table_write"] == 2


async def test_the_anchor_stays_hidden_while_local_activities_run(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    outcome = await h.episodes.process("inst", await receive(h, "inst"), run_locally=take_all)

    assert outcome.anchor is not None
    assert [t.scheduled.event_id for t in outcome.local] == [0]
    queue = h.provider.control_queue_of("inst").queue
    assert await queue.approximate_count() == 1  # kept, not deleted
    assert await queue.peek(32) == []  # and hidden


async def test_a_crash_while_a_local_activity_runs_reruns_it_from_the_anchor(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    first = await h.episodes.process("inst", await receive(h, "inst"), run_locally=take_all)
    results = await run_local(h, first)
    second = await h.episodes.process(
        "inst", [], results=results, anchor=first.anchor, run_locally=take_all
    )
    assert [t.scheduled.event_id for t in second.local] == [1]
    # Task 1 runs, and the process dies before its result reaches history.
    await run_local(h, second)
    h.restart()
    h.clock.advance(VISIBILITY.total_seconds() + 1)

    redelivered = await receive(h, "inst")
    assert [m.raw.id for m in redelivered] == [first.anchor.raw.id]
    recovered = await h.episodes.process("inst", redelivered, run_locally=take_all)

    # Task 1 runs again in the new process; task 0, already in history, does not.
    assert [t.scheduled.event_id for t in recovered.local] == [1]
    assert recovered.anchor is not None
    results = await run_local(h, recovered)
    outcome = await h.episodes.process(
        "inst", [], results=results, anchor=recovered.anchor, run_locally=take_all
    )
    await run_to_the_end(h, outcome)
    await h.assert_completed("inst", 13)
    assert h.calls["add_one"] == 4  # three tasks, one of them run twice


async def test_results_delivered_in_an_episode_are_not_taken_for_orphans(h: Harness) -> None:
    await h.start("fan_out", "inst")
    first = await h.episodes.process("inst", await receive(h, "inst"), run_locally=take_all)
    assert len(first.local) == 4
    results = await run_local(h, first)

    # Two results come in while the other two still run.
    outcome = await h.episodes.process(
        "inst",
        [],
        results=results[:2],
        anchor=first.anchor,
        running={2, 3},
        run_locally=take_all,
    )

    assert outcome.local == []  # nothing to run again
    assert outcome.anchor is not None  # tasks 2 and 3 still run
    outcome = await h.episodes.process(
        "inst", [], results=results[2:], anchor=outcome.anchor, run_locally=take_all
    )
    assert outcome.anchor is None
    await h.assert_completed("inst", 1 + 2 + 3 + 4)
    assert h.calls["add_one"] == 4


async def test_a_result_for_an_older_execution_is_dropped(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    first = await h.episodes.process("inst", await receive(h, "inst"), run_locally=take_all)
    results = await run_local(h, first)
    stale = [LocalResult("0ld0000000000000000000000000000e", r.event) for r in results]

    outcome = await h.episodes.process(
        "inst", [], results=stale, anchor=first.anchor, running=set(), run_locally=take_all
    )

    # Not applied; task 0 has no result and does not run here: it is run again.
    assert [t.scheduled.event_id for t in outcome.local] == [0]
    assert not any(type(e).__name__ == "TaskCompleted" for e in await h.history("inst"))


async def test_a_custom_status_change_is_written_to_the_instances_row(h: Harness) -> None:
    await h.start("with_status", "inst", 1)
    writes_per_episode = []
    outcome = await h.episodes.process("inst", await receive(h, "inst"), run_locally=take_all)
    while outcome.local:
        before = h.account.stats.snapshot().get(OpKind.TABLE_WRITE.value, 0)
        results = await run_local(h, outcome)
        outcome = await h.episodes.process(
            "inst", [], results=results, anchor=outcome.anchor, run_locally=take_all
        )
        writes_per_episode.append(h.account.stats.snapshot()[OpKind.TABLE_WRITE.value] - before)

    # Episode 2 changes nothing in the row; episode 3 sets the custom status; 4 completes.
    assert writes_per_episode == [0, 1, 1]
    row = await h.provider.read_instance("inst")
    assert row is not None
    assert row.custom_status == '{"second":3}'
    await h.assert_completed("inst", 4)


async def test_without_run_locally_every_activity_goes_to_the_queue(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    outcome = await h.episodes.process("inst", await receive(h, "inst"))
    assert outcome == EpisodeOutcome()
    assert await h.provider.work_items.queue.approximate_count() == 1
    await h.drain()
    await h.assert_completed("inst", 13)
    assert not any(is_local(e) for e in await h.history("inst"))


async def fail_the_second_episode(
    h: Harness, error: Exception
) -> tuple[EpisodeOutcome, list[LocalResult], EpisodeOutcome]:
    """Run ``chain``'s first episode and its first local activity, then the episode that
    records its result, whose history write raises ``error``; returns the three."""
    await h.start("chain", "inst", 10)
    first = await h.episodes.process("inst", await receive(h, "inst"), run_locally=take_all)
    results = await run_local(h, first)
    h.account.fail_next(OpKind.TABLE_BATCH, error)
    failed = await h.episodes.process(
        "inst", [], results=results, anchor=first.anchor, run_locally=take_all
    )
    return first, results, failed


async def test_a_storage_failure_keeps_local_results_for_a_retry(h: Harness) -> None:
    # The history write of the episode that would record task 0's result fails.
    first, results, failed = await fail_the_second_episode(h, StorageError("storage is down"))

    # Nothing is lost: the result and the anchor come back for a retry, the anchor is
    # still hidden (not abandoned), and no new activity was started.
    assert failed.retry == results
    assert failed.anchor is first.anchor
    assert failed.local == []
    queue = h.provider.control_queue_of("inst").queue
    assert await queue.approximate_count() == 1
    assert await queue.peek(32) == []

    outcome = await h.episodes.process(
        "inst", [], results=failed.retry, anchor=failed.anchor, run_locally=take_all
    )
    assert [t.scheduled.event_id for t in outcome.local] == [1]
    await run_to_the_end(h, outcome)
    await h.assert_completed("inst", 13)
    assert h.calls["add_one"] == 3  # no activity ran twice


async def test_a_bug_on_the_results_path_drops_them_and_the_anchor_brings_them_back(
    h: Harness,
) -> None:
    first, _, failed = await fail_the_second_episode(h, RuntimeError("a bug"))

    # Not retried in a loop: the anchor is abandoned, so its dequeue count rises with
    # every failure and a bug that repeats ends in the poison path, never forever.
    assert failed == EpisodeOutcome()
    h.clock.advance(VISIBILITY.total_seconds() + 1)
    redelivered = await receive(h, "inst")
    assert [m.raw.id for m in redelivered] == [first.anchor.raw.id]
    assert redelivered[0].dequeue_count == 2


async def test_a_retry_after_the_history_was_written_repairs_the_instances_row(
    h: Harness,
) -> None:
    await h.start("chain", "inst", 10)
    outcome = await h.episodes.process("inst", await receive(h, "inst"), run_locally=take_all)
    for _ in range(2):
        outcome = await h.episodes.process(
            "inst",
            [],
            results=await run_local(h, outcome),
            anchor=outcome.anchor,
            run_locally=take_all,
        )
    last = await run_local(h, outcome)
    # The last episode writes ExecutionCompleted to history (step 2), then its Instances
    # update (step 3) fails.
    h.account.fail_next(OpKind.TABLE_WRITE, StorageError("Instances is down"))
    failed = await h.episodes.process("inst", [], results=last, anchor=outcome.anchor)
    assert failed.retry == last
    row = await h.provider.read_instance("inst")
    assert row is not None
    assert row.runtime_status is OrchestrationStatus.Running

    # The retry finds its result already in history: it brings the row up to date and
    # lets go of the anchor.
    done = await h.episodes.process("inst", [], results=failed.retry, anchor=failed.anchor)

    assert done == EpisodeOutcome()
    await h.assert_completed("inst", 13)
    assert h.calls["add_one"] == 3


async def test_quick_local_activities_fold_into_one_checkpoint(h: Harness) -> None:
    await h.start("chain", "inst", 10)
    h.account.stats.reset()
    folds: list[list[int]] = []

    async def fold_all(tasks: list[LocalTask]) -> list[LocalResult]:
        folds.append([t.scheduled.event_id for t in tasks])
        return await run_local(h, EpisodeOutcome(local=tasks))

    outcome = await h.episodes.process(
        "inst", await receive(h, "inst"), run_locally=take_all, fold=fold_all
    )

    assert outcome == EpisodeOutcome()  # nothing left running, no anchor kept
    assert folds == [[0], [1], [2]]
    await h.assert_completed("inst", 13)
    events = await h.history("inst")
    assert sum(isinstance(e, OrchestratorStarted) for e in events) == 4  # four passes
    ops = h.account.stats.snapshot()
    assert ops["table_batch"] == 1  # ... checkpointed in one history write
    assert ops["table_write"] == 1  # the row goes from Pending to Completed directly
    assert h.calls["add_one"] == 3


async def test_a_fold_that_finishes_nothing_checkpoints_at_once(h: Harness) -> None:
    await h.start("chain", "inst", 10)

    async def too_slow(tasks: list[LocalTask]) -> list[LocalResult]:
        return []

    outcome = await h.episodes.process(
        "inst", await receive(h, "inst"), run_locally=take_all, fold=too_slow
    )

    assert [t.scheduled.event_id for t in outcome.local] == [0]
    assert outcome.anchor is not None
    await run_to_the_end(h, outcome)
    await h.assert_completed("inst", 13)
