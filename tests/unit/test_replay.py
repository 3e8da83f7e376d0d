"""The replay engine against fabricated histories.

Expected ids, uuids and timestamps come from the recordings of azure-functions-durable
1.7.0 in ``shared/reference/sdk-experiment/results`` (the SDK's own behaviour), or from the
DTFx rules in ``shared/reference/python-sdk-and-http-api.md`` where the SDK checks nothing
(non-determinism).
"""

from __future__ import annotations

import json
import random
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from durable_azure.engine.actions import CompleteOrchestration, CreateTimer, ScheduleTask
from durable_azure.engine.context import OrchestrationContext
from durable_azure.engine.history import (
    ExecutionCompleted,
    ExecutionStarted,
    FailureDetails,
    OrchestrationStatus,
    OrchestratorCompleted,
    OrchestratorStarted,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
)
from durable_azure.engine.replay import EpisodeResult, run_episode
from durable_azure.engine.tasks import Task
from durable_azure.errors import TaskFailedError
from durable_azure.testing.histories import HistoryBuilder

Orch = Generator[Any, Any, Any]

RESULTS = Path(__file__).resolve().parents[2].parent / "shared/reference/sdk-experiment/results"


def recording(name: str) -> dict[str, Any]:
    """A recorded SDK experiment (input history and output)."""
    data: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return data


def at(second: int, minute: int = 0) -> datetime:
    """2024-05-01T10:MM:SSZ, the clock of the recorded experiments."""
    return datetime(2024, 5, 1, 10, minute, second, tzinfo=UTC)


def recorded_builder(instance_id: str = "inst-0002") -> HistoryBuilder:
    """A builder whose clock matches the recordings: first event at 10:00:01, 1 s apart."""
    return HistoryBuilder(instance_id, start=at(1))


def run_new(orchestrator: Any, input_: Any = None, instance_id: str = "inst") -> EpisodeResult:
    """The first episode of a new orchestration."""
    return (
        HistoryBuilder(instance_id)
        .started(getattr(orchestrator, "__name__", "o"), input_)
        .run(orchestrator)
    )


# --- chaining --------------------------------------------------------------------------------


def chain(ctx: OrchestrationContext) -> Orch:
    value = ctx.get_input()
    for _ in range(5):
        value = yield ctx.call_activity("add_one", value)
    return value


def test_chain_of_five_runs_episode_by_episode() -> None:
    builder = HistoryBuilder("chain-1").started("chain", 10)
    for step in range(5):
        result = builder.run(chain)
        # Each episode schedules exactly the next activity, with the previous result.
        assert result.status is OrchestrationStatus.Running
        assert result.actions == [ScheduleTask(id=step, name="add_one", input=str(10 + step))]
        scheduled = [e for e in result.new_events if isinstance(e, TaskScheduled)]
        assert [(e.event_id, e.name, e.input) for e in scheduled] == [
            (step, "add_one", str(10 + step))
        ]
        assert isinstance(result.new_events[0], OrchestratorStarted)
        assert isinstance(result.new_events[-1], OrchestratorCompleted)
        builder.commit(result).episode().completed(step, 10 + step + 1)

    final = builder.run(chain)
    assert final.status is OrchestrationStatus.Completed
    assert final.output == "15"
    assert final.failure is None
    # The completion takes the next sequence number after the five activities.
    assert final.actions == [
        CompleteOrchestration(id=5, status=OrchestrationStatus.Completed, result="15")
    ]
    completed = final.new_events[-2]
    assert isinstance(completed, ExecutionCompleted)
    assert completed.orchestration_status is OrchestrationStatus.Completed
    assert completed.result == "15"
    assert completed.event_id == 5


def test_first_episode_records_started_events_then_action() -> None:
    result = HistoryBuilder("chain-2").started("chain", 0).run(chain)
    kinds = [type(e).__name__ for e in result.new_events]
    assert kinds == [
        "OrchestratorStarted",
        "ExecutionStarted",
        "TaskScheduled",
        "OrchestratorCompleted",
    ]
    # Action events are stamped with the episode's time (its OrchestratorStarted).
    assert result.new_events[2].timestamp == result.new_events[0].timestamp


# --- fan-out / fan-in ------------------------------------------------------------------------


def fan_out(ctx: OrchestrationContext) -> Orch:
    tasks = [ctx.call_activity("square", i) for i in range(100)]
    results = yield ctx.task_all(tasks)
    return results


def test_fan_out_schedules_one_hundred_activities_in_order() -> None:
    result = run_new(fan_out)
    assert result.actions == [
        ScheduleTask(id=i, name="square", input=json.dumps(i)) for i in range(100)
    ]


def test_fan_in_results_in_order_despite_shuffled_completions_over_episodes() -> None:
    builder = HistoryBuilder("fan-1").started("fan_out")
    builder.commit(builder.run(fan_out))
    order = list(range(100))
    random.Random(20240501).shuffle(order)
    assert order != sorted(order)
    batches = [order[i : i + 25] for i in range(0, 100, 25)]

    for number, batch in enumerate(batches):
        builder.episode()
        for task_id in batch:
            builder.completed(task_id, task_id * task_id)
        result = builder.run(fan_out)
        if number < len(batches) - 1:
            # A partial fan-in: no progress visible, nothing new to do.
            assert result.status is OrchestrationStatus.Running
            assert result.actions == []
            assert len(result.new_events) == 1 + len(batch) + 1
            builder.commit(result)

    assert result.status is OrchestrationStatus.Completed
    assert json.loads(result.output or "") == [i * i for i in range(100)]


def test_fan_in_fails_with_the_first_failure() -> None:
    builder = HistoryBuilder("fan-2").started("fan_out")
    for i in range(100):
        builder.scheduled(i, "square", i)
    builder.end_episode().episode().completed(3, 9).failed(7, "ValueError", "seven").failed(
        5, "KeyError", "five"
    )
    result = builder.run(fan_out)
    assert result.status is OrchestrationStatus.Failed
    assert result.failure is not None
    assert result.failure.inner_failure == FailureDetails("ValueError", "seven", "")


def test_task_all_of_nothing_completes_at_once() -> None:
    def empty_fan(ctx: OrchestrationContext) -> Orch:
        results = yield ctx.task_all([])
        return {"results": results}

    result = run_new(empty_fan)
    assert result.status is OrchestrationStatus.Completed
    assert json.loads(result.output or "") == {"results": []}


def test_awaiting_tasks_completed_earlier_continues_without_new_events() -> None:
    def gather(ctx: OrchestrationContext) -> Orch:
        first = ctx.call_activity("a")
        second = ctx.call_activity("b")
        x = yield first
        y = yield second
        both = yield ctx.task_all([first, second])
        return [x, y, both]

    builder = (
        HistoryBuilder("gather")
        .started("gather")
        .scheduled(0, "a")
        .scheduled(1, "b")
        .end_episode()
        .episode()
        .completed(1, "B")
        .completed(0, "A")
    )
    result = builder.run(gather)
    assert result.status is OrchestrationStatus.Completed
    assert json.loads(result.output or "") == ["A", "B", ["A", "B"]]


# --- task_any --------------------------------------------------------------------------------


def make_race(log: list[str]) -> Any:
    def race(ctx: OrchestrationContext) -> Orch:
        slow = ctx.call_activity("slow", 1)
        fast = ctx.call_activity("fast", 2)
        winner = yield ctx.task_any([slow, fast])
        if not ctx.is_replaying:
            log.append(f"resumed by {winner.result}")
        after = yield ctx.call_activity("after", winner.result)
        return {"winner_is_fast": winner is fast, "winner": winner.result, "after": after}

    return race


def test_task_any_resumes_with_the_first_completed_task_only_once() -> None:
    log: list[str] = []
    race = make_race(log)
    builder = HistoryBuilder("race").started("race")
    builder.commit(builder.run(race))

    builder.episode().completed(1, "FAST")
    first = builder.run(race)
    assert first.actions == [ScheduleTask(id=2, name="after", input='"FAST"')]
    assert log == ["resumed by FAST"]
    builder.commit(first)

    # The loser completes later: accepted into history, but it resumes nothing.
    builder.episode().completed(0, "SLOW")
    late = builder.run(race)
    assert late.status is OrchestrationStatus.Running
    assert late.actions == []
    assert late.dropped == []
    assert any(isinstance(e, TaskCompleted) and e.task_scheduled_id == 0 for e in late.new_events)
    assert log == ["resumed by FAST"]
    builder.commit(late)

    builder.episode().completed(2, "done")
    final = builder.run(race)
    assert final.status is OrchestrationStatus.Completed
    assert json.loads(final.output or "") == {
        "winner_is_fast": True,
        "winner": "FAST",
        "after": "done",
    }
    assert log == ["resumed by FAST"]


def test_task_any_winner_is_first_in_event_order_within_one_episode() -> None:
    log: list[str] = []
    builder = (
        HistoryBuilder("race-2")
        .started("race")
        .scheduled(0, "slow", 1)
        .scheduled(1, "fast", 2)
        .end_episode()
        .episode()
        .completed(0, "SLOW")
        .completed(1, "FAST")
    )
    result = builder.run(make_race(log))
    assert result.actions == [ScheduleTask(id=2, name="after", input='"SLOW"')]
    assert log == ["resumed by SLOW"]


def test_task_any_winner_can_be_a_failed_task() -> None:
    def race(ctx: OrchestrationContext) -> Orch:
        a = ctx.call_activity("a")
        b = ctx.call_activity("b")
        winner = yield ctx.task_any([a, b])
        assert isinstance(winner.exception, TaskFailedError)
        return [winner is b, winner.is_faulted, winner.exception.error_type]

    builder = (
        HistoryBuilder("race-3")
        .started("race")
        .scheduled(0, "a")
        .scheduled(1, "b")
        .end_episode()
        .episode()
        .failed(1, "TimeoutError", "too slow")
    )
    result = builder.run(race)
    assert result.status is OrchestrationStatus.Completed
    assert json.loads(result.output or "") == [True, True, "TimeoutError"]


# --- activity failures -----------------------------------------------------------------------


def caught(ctx: OrchestrationContext) -> Orch:
    try:
        yield ctx.call_activity("Boom")
    except TaskFailedError as err:
        return {
            "type": err.error_type,
            "message": err.error_message,
            "stack": err.stack_trace,
            "task": err.task_name,
            "id": err.task_id,
            "text": str(err),
        }
    return "not failed"


def boom_history() -> HistoryBuilder:
    # exp2_activity_failed_*: Boom scheduled as task 0 with no input, failed next episode.
    return recorded_builder().started("Orch", "seed").scheduled(0, "Boom").end_episode().episode()


def test_activity_failure_caught_carries_type_message_stack_and_name() -> None:
    stack = 'Traceback (most recent call last):\n  File "boom.py", line 3\nValueError: bad\n'
    result = boom_history().failed(0, "ValueError", "bad", stack).run(caught)
    assert result.status is OrchestrationStatus.Completed
    assert json.loads(result.output or "") == {
        "type": "ValueError",
        "message": "bad",
        "stack": stack,
        "task": "Boom",
        "id": 0,
        "text": "activity 'Boom' failed: ValueError: bad",
    }


def test_activity_failure_without_failure_details_uses_reason_and_details() -> None:
    # The event exactly as the Functions host records it (exp2_activity_failed_caught).
    recorded = recording("exp2_activity_failed_caught")["input"]["history"][-1]
    assert recorded["EventType"] == 6
    event = TaskFailed(
        timestamp=at(6),
        task_scheduled_id=recorded["TaskScheduledId"],
        reason=recorded["Reason"],
        details=recorded["Details"],
    )
    result = boom_history().add(event).run(caught)
    output = json.loads(result.output or "")
    assert output["message"] == "Activity function 'Boom' failed: ValueError: bad"
    assert output["stack"] == "Traceback ..."
    assert output["type"] == "Exception"
    assert output["task"] == "Boom"


def uncaught(ctx: OrchestrationContext) -> Orch:
    value = yield ctx.call_activity("Boom")
    return value


def test_uncaught_activity_failure_fails_the_orchestration() -> None:
    stack = 'Traceback (most recent call last):\n  File "boom.py", line 3\nValueError: bad\n'
    result = boom_history().failed(0, "ValueError", "bad", stack).run(uncaught)
    assert result.status is OrchestrationStatus.Failed
    assert result.output is None
    failure = result.failure
    assert failure is not None
    assert failure.error_type == "TaskFailedError"
    assert "ValueError" in failure.error_message
    assert "bad" in failure.error_message
    assert "Boom" in failure.error_message
    # The traceback goes through the orchestrator's own frame.
    assert "in uncaught" in failure.stack_trace
    assert "TaskFailedError" in failure.stack_trace
    assert failure.inner_failure == FailureDetails("ValueError", "bad", stack)

    assert result.actions == [
        CompleteOrchestration(id=1, status=OrchestrationStatus.Failed, failure=failure)
    ]
    completed = result.new_events[-2]
    assert isinstance(completed, ExecutionCompleted)
    assert completed.orchestration_status is OrchestrationStatus.Failed
    assert completed.failure_details == failure
    assert completed.result is None


def test_orchestrator_exception_fails_with_its_type_and_message() -> None:
    def broken(ctx: OrchestrationContext) -> Orch:
        yield ctx.call_activity("a")
        raise LookupError("no such order: 42")

    result = (
        HistoryBuilder("broken")
        .started("broken")
        .scheduled(0, "a")
        .end_episode()
        .episode()
        .completed(0)
        .run(broken)
    )
    assert result.status is OrchestrationStatus.Failed
    assert result.failure is not None
    assert result.failure.error_type == "LookupError"
    assert result.failure.error_message == "no such order: 42"
    assert result.failure.inner_failure is None
    assert 'raise LookupError("no such order: 42")' in result.failure.stack_trace


# --- replay emits only new actions ----------------------------------------------------------


def three(ctx: OrchestrationContext) -> Orch:
    results = yield ctx.task_all([ctx.call_activity("step", i) for i in range(3)])
    extra = yield ctx.call_activity("extra", sum(results))
    return extra


def three_scheduled() -> HistoryBuilder:
    builder = HistoryBuilder("three").started("three")
    for i in range(3):
        builder.scheduled(i, "step", i)
    return builder.end_episode()


def test_replay_of_scheduled_tasks_emits_only_new_actions() -> None:
    builder = three_scheduled().episode().completed(0, 1).completed(1, 2).completed(2, 3)
    result = builder.run(three)
    assert result.actions == [ScheduleTask(id=3, name="extra", input="6")]
    assert [e.event_id for e in result.new_events if isinstance(e, TaskScheduled)] == [3]


def test_partial_completion_emits_no_actions() -> None:
    result = three_scheduled().episode().completed(1, 2).run(three)
    assert result.status is OrchestrationStatus.Running
    assert result.actions == []


def test_episode_without_new_events_emits_no_actions() -> None:
    result = three_scheduled().episode().run(three)
    assert result.status is OrchestrationStatus.Running
    assert result.actions == []
    assert [type(e) for e in result.new_events] == [OrchestratorStarted, OrchestratorCompleted]
    assert result.dropped == []


# --- duplicate and unexpected completions ---------------------------------------------------


def test_duplicate_and_unexpected_completions_are_dropped() -> None:
    builder = three_scheduled().episode().completed(0, 1).end_episode()
    builder.episode().completed(0, 100).completed(7, "stray").completed(1, 2).completed(1, 200)
    result = builder.run(three)
    accepted = [e for e in result.new_events if isinstance(e, TaskCompleted)]
    assert [(e.task_scheduled_id, e.result) for e in accepted] == [(1, "2")]
    assert result.dropped == [
        "duplicate TaskCompleted for task #0",
        "unexpected TaskCompleted for task #7",
        "duplicate TaskCompleted for task #1",
    ]
    assert result.actions == []

    # The first results win: completing task 2 sums 1 + 2 + 3.
    builder.commit(result).episode().completed(2, 3)
    assert builder.run(three).actions == [ScheduleTask(id=3, name="extra", input="6")]


def test_stray_completion_keeps_the_instance_waiting() -> None:
    # exp2_stray_completion: TaskCompleted for id 7 that nobody scheduled.
    recorded = recording("exp2_stray_completion")
    assert recorded["input"]["history"][-1]["TaskScheduledId"] == 7
    assert recorded["output"]["isDone"] is False

    def hello(ctx: OrchestrationContext) -> Orch:
        value = yield ctx.call_activity("Hello", "x")
        return value

    builder = recorded_builder().started("Orch", "seed").scheduled(0, "Hello", "x").end_episode()
    result = builder.episode().completed(7, "stray").run(hello)
    assert result.status is OrchestrationStatus.Running
    assert result.actions == []
    assert result.dropped == ["unexpected TaskCompleted for task #7"]
    assert not any(isinstance(e, TaskCompleted) for e in result.new_events)


def test_timer_fired_for_an_activity_id_is_dropped() -> None:
    def hello(ctx: OrchestrationContext) -> Orch:
        value = yield ctx.call_activity("Hello", "x")
        return value

    builder = HistoryBuilder("mixup").started("Orch").scheduled(0, "Hello", "x").end_episode()
    result = builder.episode().timer_fired(0, at(0, 5)).run(hello)
    assert result.status is OrchestrationStatus.Running
    assert result.dropped == ["unexpected TimerFired for task #0"]


# --- new_uuid --------------------------------------------------------------------------------


def make_uuid_orchestrator(values: list[str]) -> Any:
    """The shape of the exp2_ids experiment: three ids before the activity, one after.

    The recording called new_uuid, new_guid, new_uuid, which share one counter; we call
    new_uuid three times, so values 0, 2 and 3 are comparable with the recording.
    """

    def ids(ctx: OrchestrationContext) -> Orch:
        values.extend([ctx.new_uuid(), ctx.new_uuid(), ctx.new_uuid()])
        yield ctx.call_activity("Hello", "x")
        values.append(ctx.new_uuid())
        return values

    return ids


def ids_history() -> HistoryBuilder:
    # exp2_ids_run1: OS 10:00:01, ES, TaskScheduled Hello #0, OC, OS 10:00:05, TaskCompleted.
    return (
        recorded_builder("inst-0002")
        .started("Orch", "seed")
        .scheduled(0, "Hello", "x")
        .end_episode()
        .episode()
        .completed(0, "Hello x")
    )


def test_new_uuid_matches_azure_functions_durable() -> None:
    recorded = recording("exp2_ids_run1")
    assert recorded["input"]["instanceId"] == "inst-0002"
    sdk = recorded["output"]["output"]
    values: list[str] = []
    result = ids_history().run(make_uuid_orchestrator(values))
    assert result.status is OrchestrationStatus.Completed
    assert [values[0], values[2], values[3]] == [sdk[0], sdk[2], sdk[3]]
    assert json.loads(result.output or "") == values
    # The formula report agrees with the SDK output.
    formula = recording("exp2_ids_formula")
    assert formula["sdk"] == sdk
    assert formula["formula"] == sdk


def test_new_uuid_after_resume_matches_the_event_raised_recording() -> None:
    # exp1_v2_e7: instance inst-0001, the code resumed in the episode that started at
    # 10:00:26 and called new_uuid for the first time there.
    recorded = recording("exp1_v2_e7_event_raised_done")["output"]["output"]

    def late_uuid(ctx: OrchestrationContext) -> Orch:
        yield ctx.call_activity("wait")
        return {"now": ctx.current_utc_datetime.isoformat(), "uuid": ctx.new_uuid()}

    builder = (
        recorded_builder("inst-0001")
        .started("MainOrch", "seed")
        .scheduled(0, "wait")
        .end_episode()
        .episode(at=at(26))
        .completed(0)
    )
    assert json.loads(builder.run(late_uuid).output or "") == {
        "now": recorded["now"],
        "uuid": recorded["uuid"],
    }


def test_new_uuid_is_stable_across_replays_and_advances_with_the_counter() -> None:
    first: list[str] = []
    second: list[str] = []
    ids_history().run(make_uuid_orchestrator(first))
    ids_history().run(make_uuid_orchestrator(second))
    assert first == second
    assert len(set(first)) == 4


def test_new_uuid_computed_in_an_earlier_episode_is_reproduced_by_replay() -> None:
    def carry(ctx: OrchestrationContext) -> Orch:
        token = ctx.new_uuid()
        yield ctx.call_activity("use", token)
        return token

    builder = HistoryBuilder("carry").started("carry")
    first = builder.run(carry)
    (action,) = first.actions
    assert isinstance(action, ScheduleTask)
    builder.commit(first).episode().completed(0)
    assert builder.run(carry).output == action.input


# --- current_utc_datetime --------------------------------------------------------------------


def make_clock_orchestrator(seen: list[datetime]) -> Any:
    def clock(ctx: OrchestrationContext) -> Orch:
        seen.append(ctx.current_utc_datetime)
        yield ctx.call_activity("a")
        seen.append(ctx.current_utc_datetime)
        yield ctx.call_activity("b")
        seen.append(ctx.current_utc_datetime)
        return None

    return clock


def test_current_utc_datetime_follows_orchestrator_started() -> None:
    # exp2 ids_formula: t0 = 10:00:01 before the first yield, t1 = 10:00:05 after it.
    formula = recording("exp2_ids_formula")
    t0 = datetime.fromisoformat(formula["t0"])
    t1 = datetime.fromisoformat(formula["t1"])
    seen: list[datetime] = []
    builder = (
        recorded_builder()
        .started("clock")
        .scheduled(0, "a")
        .end_episode()
        .episode()
        .completed(0)
        .scheduled(1, "b")
        .end_episode()
        .episode(at=at(30, 2))
        .completed(1)
    )
    assert builder.events[0].timestamp == t0
    assert builder.events[4].timestamp == t1
    builder.run(make_clock_orchestrator(seen))
    assert seen == [t0, t1, at(30, 2)]


def test_current_utc_datetime_never_moves_backward() -> None:
    seen: list[datetime] = []
    builder = (
        recorded_builder()
        .started("clock")
        .scheduled(0, "a")
        .end_episode()
        .episode(at=at(0, 10))
        .completed(0)
        .scheduled(1, "b")
        .end_episode()
        .episode(at=at(0, 5))  # a skewed clock on another worker
        .completed(1)
    )
    builder.run(make_clock_orchestrator(seen))
    assert seen == [at(1), at(0, 10), at(0, 10)]


def test_current_utc_datetime_is_utc_aware_for_naive_history_timestamps() -> None:
    seen: list[datetime] = []
    naive = datetime(2024, 5, 1, 12, 0, 0)
    builder = HistoryBuilder("naive").add(OrchestratorStarted(timestamp=naive))
    builder.add(
        ExecutionStarted(timestamp=naive, name="clock", instance_id="naive", execution_id="e")
    )
    builder.run(make_clock_orchestrator(seen))
    assert seen == [naive.replace(tzinfo=UTC)]


# --- is_replaying ----------------------------------------------------------------------------


def make_logging_orchestrator(log: list[tuple[str, bool]]) -> Any:
    def logged(ctx: OrchestrationContext) -> Orch:
        log.append(("start", ctx.is_replaying))
        yield ctx.call_activity("a")
        log.append(("after-a", ctx.is_replaying))
        yield ctx.call_activity("b")
        log.append(("end", ctx.is_replaying))
        return None

    return logged


def test_is_replaying_true_for_history_false_for_new_events() -> None:
    # exp1_v2_e7 replay_log: [start, True], [after-a, True], [end, False].
    expected = [
        (label, flag) for label, flag in recording("exp1_v2_e7_event_raised_done")["replay_log"]
    ]
    log: list[tuple[str, bool]] = []
    builder = (
        HistoryBuilder("replaying")
        .started("logged")
        .scheduled(0, "a")
        .end_episode()
        .episode()
        .completed(0)
        .scheduled(1, "b")
        .end_episode()
        .episode()
        .completed(1)
    )
    builder.run(make_logging_orchestrator(log))
    assert log == expected


def test_is_replaying_false_on_the_first_episode() -> None:
    log: list[tuple[str, bool]] = []
    run_new(make_logging_orchestrator(log))
    assert log == [("start", False)]


# --- non-determinism -------------------------------------------------------------------------


def hello(ctx: OrchestrationContext) -> Orch:
    value = yield ctx.call_activity("Hello", "x")
    return value


def assert_non_deterministic(result: EpisodeResult, *fragments: str) -> None:
    assert result.status is OrchestrationStatus.Failed
    assert result.failure is not None
    assert result.failure.error_type == "NonDeterministicOrchestrationError"
    for fragment in fragments:
        assert fragment in result.failure.error_message
    assert isinstance(result.new_events[-2], ExecutionCompleted)
    assert isinstance(result.new_events[-1], OrchestratorCompleted)
    assert [type(a) for a in result.actions] == [CompleteOrchestration]


def test_non_determinism_activity_name_changed() -> None:
    # exp2_nondet_name_changed: history scheduled "Other" as #0, the code now calls "Hello".
    # The 1.x SDK accepts this silently; DTFx (and we) fail the orchestration.
    history = recording("exp2_nondet_name_changed")["input"]["history"]
    assert history[2]["Name"] == "Other"
    builder = (
        recorded_builder()
        .started("Orch", "seed")
        .scheduled(0, "Other", "x")
        .end_episode()
        .episode()
        .completed(0, "from Other")
    )
    result = builder.run(hello)
    assert_non_deterministic(result, "'Other'", "TaskScheduled #0", "'Hello'", "task #0")


def test_non_determinism_timer_in_history_activity_in_code() -> None:
    # exp2_nondet_type_changed: history has TimerCreated #0, the code calls an activity.
    history = recording("exp2_nondet_type_changed")["input"]["history"]
    assert history[2]["EventType"] == 10
    builder = (
        recorded_builder()
        .started("Orch", "seed")
        .timer_created(0, at(0, 5))
        .end_episode()
        .episode()
        .timer_fired(0)
    )
    result = builder.run(hello)
    assert_non_deterministic(result, "TimerCreated #0", "'Hello'", "task #0")


def test_non_determinism_activity_replaced_by_timer() -> None:
    def sleepy(ctx: OrchestrationContext) -> Orch:
        yield ctx.create_timer(ctx.current_utc_datetime + timedelta(minutes=5))
        return "slept"

    builder = (
        recorded_builder()
        .started("Orch", "seed")
        .scheduled(0, "Hello", "x")
        .end_episode()
        .episode()
        .completed(0, "Hello x")
    )
    result = builder.run(sleepy)
    assert_non_deterministic(result, "'Hello'", "TaskScheduled #0", "a timer", "task #0")


def test_non_determinism_action_missing() -> None:
    def only_one(ctx: OrchestrationContext) -> Orch:
        results = yield ctx.task_all([ctx.call_activity("step", 0)])
        return results

    result = three_scheduled().episode().completed(0, 1).run(only_one)
    assert_non_deterministic(result, "'step'", "TaskScheduled #1", "nothing", "task #1")


def test_non_determinism_detected_in_history_drops_new_events() -> None:
    builder = (
        recorded_builder()
        .started("Orch", "seed")
        .scheduled(0, "Other", "x")
        .end_episode()
        .episode()
        .completed(0, "from Other")
    )
    result = builder.run(hello)
    assert isinstance(result.new_events[0], OrchestratorStarted)
    assert not any(isinstance(e, TaskCompleted) for e in result.new_events)


def test_activity_names_match_case_insensitively() -> None:
    builder = (
        recorded_builder()
        .started("Orch", "seed")
        .scheduled(0, "hello", "x")
        .end_episode()
        .episode()
        .completed(0, "ok")
    )
    result = builder.run(hello)
    assert result.status is OrchestrationStatus.Completed
    assert result.output == '"ok"'


# --- orchestrator shapes and errors ----------------------------------------------------------


def test_plain_function_orchestrator_completes_at_once() -> None:
    # exp2_plain_function_output: {"isDone": true, "actions": [[]], "output": {"plain": true}}.
    recorded = recording("exp2_plain_function_output")["output"]

    def plain(ctx: OrchestrationContext) -> Any:
        return {"plain": True}

    result = HistoryBuilder("plain").started("Orch", "seed").run(plain)
    assert recorded["isDone"] is True
    assert result.status is OrchestrationStatus.Completed
    assert json.loads(result.output or "") == recorded["output"]
    assert result.actions == [
        CompleteOrchestration(
            id=0,
            status=OrchestrationStatus.Completed,
            result=json.dumps(recorded["output"], separators=(",", ":")),
        )
    ]


def test_plain_function_reads_its_input() -> None:
    def echo(ctx: OrchestrationContext) -> Any:
        return {"got": ctx.get_input()}

    result = run_new(echo, {"city": "Tokyo"})
    assert json.loads(result.output or "") == {"got": {"city": "Tokyo"}}


def test_yielding_a_non_task_fails_clearly() -> None:
    def bad(ctx: OrchestrationContext) -> Orch:
        yield 42

    result = run_new(bad)
    assert result.status is OrchestrationStatus.Failed
    assert result.failure is not None
    assert result.failure.error_type == "TypeError"
    assert "must yield durable tasks" in result.failure.error_message
    assert "int" in result.failure.error_message


def test_unserializable_output_fails_clearly() -> None:
    class Point:
        pass

    def bad(ctx: OrchestrationContext) -> Orch:
        yield ctx.task_all([])
        return Point()

    result = run_new(bad)
    assert result.status is OrchestrationStatus.Failed
    assert result.output is None
    assert result.failure is not None
    assert result.failure.error_type == "PayloadError"
    assert "Point" in result.failure.error_message
    assert "not JSON serializable" in result.failure.error_message


def test_unserializable_activity_input_fails_the_orchestration() -> None:
    def bad(ctx: OrchestrationContext) -> Orch:
        yield ctx.call_activity("a", {1, 2})

    result = run_new(bad)
    assert result.status is OrchestrationStatus.Failed
    assert result.failure is not None
    assert "set" in result.failure.error_message


def test_call_activity_accepts_function_objects() -> None:
    def say_hello(name: str) -> str:
        return f"Hello {name}"

    def renamed(name: str) -> str:
        return name

    renamed.__durable_name__ = "RegisteredName"  # type: ignore[attr-defined]

    def orch(ctx: OrchestrationContext) -> Orch:
        results = yield ctx.task_all(
            [ctx.call_activity(say_hello, "a"), ctx.call_activity(renamed, "b")]
        )
        return results

    result = run_new(orch)
    assert result.actions == [
        ScheduleTask(id=0, name="say_hello", input='"a"'),
        ScheduleTask(id=1, name="RegisteredName", input='"b"'),
    ]


def test_timer_resumes_the_orchestrator_at_fire_time() -> None:
    def sleepy(ctx: OrchestrationContext) -> Orch:
        fire_at = ctx.current_utc_datetime + timedelta(minutes=5)
        result = yield ctx.create_timer(fire_at)
        return [result, ctx.current_utc_datetime.isoformat()]

    builder = HistoryBuilder("sleepy", start=at(1)).started("sleepy")
    first = builder.run(sleepy)
    assert first.actions == [CreateTimer(id=0, fire_at=at(1, 5))]
    timer = first.new_events[2]
    assert isinstance(timer, TimerCreated)
    assert timer.fire_at == at(1, 5)
    builder.commit(first).episode(at=at(2, 5)).timer_fired(0)
    final = builder.run(sleepy)
    assert json.loads(final.output or "") == [None, at(2, 5).isoformat()]


def test_custom_status_is_reported() -> None:
    def status(ctx: OrchestrationContext) -> Orch:
        ctx.set_custom_status({"stage": "timer"})
        yield ctx.call_activity("a")

    result = run_new(status)
    assert json.loads(result.custom_status or "") == {"stage": "timer"}


def test_new_events_must_start_with_orchestrator_started() -> None:
    with pytest.raises(ValueError, match="OrchestratorStarted"):
        run_episode(hello, instance_id="x", history=[], new_events=[])


def test_task_all_rejects_non_tasks() -> None:
    assert isinstance(OrchestrationContext("x").task_all([]), Task)
    with pytest.raises(TypeError, match="durable tasks"):
        OrchestrationContext("x").task_all([42])  # type: ignore[list-item]
