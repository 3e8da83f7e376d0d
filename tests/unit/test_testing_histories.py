"""``durable_azure.testing.histories``: the history builder and the in-memory simulator."""

from __future__ import annotations

import json
import math
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from durable_azure.engine.context import OrchestrationContext
from durable_azure.engine.history import (
    EventType,
    ExecutionCompleted,
    ExecutionStarted,
    FailureDetails,
    OrchestrationStatus,
    OrchestratorCompleted,
    OrchestratorStarted,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerFired,
    type_of,
)
from durable_azure.engine.tasks import Task
from durable_azure.errors import TaskFailedError
from durable_azure.testing.histories import (
    DEFAULT_START,
    ActivityCall,
    HistoryBuilder,
    SimulationError,
    run_to_completion,
)

Orch = Generator[Any, Any, Any]

RESULTS = Path(__file__).resolve().parents[2].parent / "shared/reference/sdk-experiment/results"


# --- HistoryBuilder --------------------------------------------------------------------------


def test_builder_reproduces_the_recorded_timeline() -> None:
    # exp2_ids_run1's history, event by event: types, ids and timestamps.
    recorded = json.loads((RESULTS / "exp2_ids_run1.json").read_text())["input"]["history"]
    built = (
        HistoryBuilder("inst-0002", start=datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC))
        .started("Orch", "seed")
        .scheduled(0, "Hello", "x")
        .end_episode()
        .episode()
        .completed(0, "Hello x")
        .build()
    )
    assert [int(type_of(e)) for e in built] == [e["EventType"] for e in recorded]
    assert [e.event_id for e in built] == [e["EventId"] for e in recorded]
    assert [e.timestamp for e in built] == [
        datetime.fromisoformat(e["Timestamp"].replace(".0000000Z", "+00:00")) for e in recorded
    ]
    started, scheduled, completed = built[1], built[2], built[5]
    assert isinstance(started, ExecutionStarted)
    assert (started.name, started.input, started.instance_id) == ("Orch", '"seed"', "inst-0002")
    assert started.execution_id == recorded[1]["OrchestrationInstance"]["ExecutionId"]
    assert isinstance(scheduled, TaskScheduled)
    assert (scheduled.name, scheduled.input) == ("Hello", recorded[2]["Input"])
    assert isinstance(completed, TaskCompleted)
    assert completed.task_scheduled_id == 0
    assert completed.result == recorded[5]["Result"]


def test_started_opens_the_first_episode_only_on_an_empty_builder() -> None:
    assert [type(e) for e in HistoryBuilder().started("o").build()] == [
        OrchestratorStarted,
        ExecutionStarted,
    ]
    builder = HistoryBuilder().episode().started("o")
    assert [type(e) for e in builder.build()] == [OrchestratorStarted, ExecutionStarted]


def test_clock_moves_by_step_and_can_be_set() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    builder = HistoryBuilder(start=start, step=timedelta(minutes=1)).started("o")
    assert builder.now == start + timedelta(minutes=2)
    builder.advance(timedelta(hours=1)).end_episode()
    builder.episode(at=datetime(2030, 1, 2))  # naive means UTC
    stamps = [e.timestamp for e in builder.build()]
    assert stamps == [
        start,
        start + timedelta(minutes=1),
        start + timedelta(hours=1, minutes=2),
        datetime(2030, 1, 2, tzinfo=UTC),
    ]


def test_failed_records_reason_details_and_failure_details() -> None:
    (event,) = HistoryBuilder().failed(3, "ValueError", "bad", "Traceback ...").build()
    assert isinstance(event, TaskFailed)
    assert event.task_scheduled_id == 3
    assert event.failure_details == FailureDetails("ValueError", "bad", "Traceback ...")
    assert event.reason == "ValueError: bad"
    assert event.details == "Traceback ..."


def test_timer_fired_takes_fire_at_from_timer_created() -> None:
    fire_at = datetime(2024, 5, 1, 11, tzinfo=UTC)
    events = HistoryBuilder().timer_created(4, fire_at).timer_fired(4).build()
    fired = events[1]
    assert isinstance(fired, TimerFired)
    assert (fired.timer_id, fired.fire_at) == (4, fire_at)
    with pytest.raises(ValueError, match="TimerCreated #5"):
        HistoryBuilder().timer_fired(5)


def test_json_keywords_store_payloads_verbatim() -> None:
    events = (
        HistoryBuilder()
        .started("o", input_json="not json")
        .scheduled(0, "a", input_json='{"raw":1}')
        .completed(0, result_json="")
        .build()
    )
    started, scheduled, completed = events[1:]
    assert isinstance(started, ExecutionStarted)
    assert isinstance(scheduled, TaskScheduled)
    assert isinstance(completed, TaskCompleted)
    assert (started.input, scheduled.input, completed.result) == ("not json", '{"raw":1}', "")


def test_execution_completed_records_status() -> None:
    done, failed = (
        HistoryBuilder()
        .execution_completed({"ok": True})
        .execution_completed(failure=FailureDetails("E", "m"))
        .build()
    )
    assert isinstance(done, ExecutionCompleted)
    assert isinstance(failed, ExecutionCompleted)
    assert (done.orchestration_status, done.result) == (
        OrchestrationStatus.Completed,
        '{"ok":true}',
    )
    assert (failed.orchestration_status, failed.result) == (OrchestrationStatus.Failed, None)
    assert failed.failure_details == FailureDetails("E", "m")


def test_split_separates_the_open_episode() -> None:
    builder = HistoryBuilder().started("o").scheduled(0, "a").end_episode().episode().completed(0)
    history, new_events = builder.split()
    assert [e.event_type for e in history] == [
        EventType.OrchestratorStarted,
        EventType.ExecutionStarted,
        EventType.TaskScheduled,
        EventType.OrchestratorCompleted,
    ]
    assert [e.event_type for e in new_events] == [
        EventType.OrchestratorStarted,
        EventType.TaskCompleted,
    ]


def test_split_needs_an_open_episode() -> None:
    with pytest.raises(ValueError, match="no OrchestratorStarted"):
        HistoryBuilder().split()
    with pytest.raises(ValueError, match="already ended"):
        HistoryBuilder().started("o").end_episode().split()


def test_commit_replaces_the_open_episode_with_the_result() -> None:
    def one(ctx: OrchestrationContext) -> Orch:
        value = yield ctx.call_activity("a", 1)
        return value

    builder = HistoryBuilder("commit").started("one")
    result = builder.run(one)
    builder.commit(result)
    assert builder.build() == result.new_events
    assert isinstance(builder.build()[-1], OrchestratorCompleted)
    with pytest.raises(ValueError, match="already ended"):
        builder.commit(result)


# --- run_to_completion -----------------------------------------------------------------------


def chain(ctx: OrchestrationContext) -> Orch:
    value = ctx.get_input()
    for _ in range(5):
        value = yield ctx.call_activity("add_one", value)
    return value


def test_simulates_a_chain() -> None:
    sim = run_to_completion(chain, 10, {"add_one": lambda x: x + 1}, instance_id="sim-chain")
    assert sim.status is OrchestrationStatus.Completed
    assert sim.output == 15
    assert sim.failure is None
    assert sim.activity_calls == [ActivityCall(i, "add_one", 10 + i) for i in range(5)]
    # One episode to start, one per activity result.
    assert len(sim.episodes) == 6
    last = sim.history[-2]
    assert isinstance(last, ExecutionCompleted)
    assert last.result == "15"
    started = sim.history[1]
    assert isinstance(started, ExecutionStarted)
    assert (started.name, started.instance_id, started.input) == ("chain", "sim-chain", "10")


def test_simulated_history_replays_to_the_same_result() -> None:
    sim = run_to_completion(chain, 0, {"add_one": lambda x: x + 1})
    # Every episode's events, replayed from scratch, were accepted in order.
    assert [type(e) for e in sim.history].count(OrchestratorStarted) == len(sim.episodes)
    assert all(result.dropped == [] for result in sim.episodes)


def fan_out(ctx: OrchestrationContext) -> Orch:
    results = yield ctx.task_all([ctx.call_activity("square", i) for i in range(100)])
    return results


@pytest.mark.parametrize("batch", [None, 7])
def test_simulates_a_fan_out(batch: int | None) -> None:
    sim = run_to_completion(
        fan_out, activities={"square": lambda x: x * x}, max_completions_per_episode=batch
    )
    assert sim.output == [i * i for i in range(100)]
    deliveries = 1 if batch is None else math.ceil(100 / batch)
    assert len(sim.episodes) == 1 + deliveries
    assert all(result.actions == [] for result in sim.episodes[1:-1])


def test_activity_exception_reaches_the_orchestrator() -> None:
    def boom(_: Any) -> None:
        raise ValueError("bad input")

    def careful(ctx: OrchestrationContext) -> Orch:
        try:
            yield ctx.call_activity("boom")
        except TaskFailedError as err:
            return [err.error_type, err.error_message, err.task_name, err.stack_trace]
        return None

    sim = run_to_completion(careful, activities={"boom": boom})
    error_type, message, name, stack = sim.output
    assert (error_type, message, name) == ("ValueError", "bad input", "boom")
    assert 'raise ValueError("bad input")' in stack
    failed = [e for e in sim.history if isinstance(e, TaskFailed)]
    assert len(failed) == 1
    assert failed[0].reason == "ValueError: bad input"


def test_uncaught_activity_exception_fails_the_orchestration() -> None:
    def boom(_: Any) -> None:
        raise KeyError("missing")

    def careless(ctx: OrchestrationContext) -> Orch:
        value = yield ctx.call_activity("boom")
        return value

    sim = run_to_completion(careless, activities={"boom": boom})
    assert sim.status is OrchestrationStatus.Failed
    assert sim.output is None
    assert sim.failure is not None
    assert sim.failure.error_type == "TaskFailedError"
    assert sim.failure.inner_failure is not None
    assert sim.failure.inner_failure.error_type == "KeyError"
    assert sim.failure.inner_failure.error_message == "'missing'"


def test_unknown_activity_fails_the_task_with_a_clear_message() -> None:
    def typo(ctx: OrchestrationContext) -> Orch:
        value = yield ctx.call_activity("add_on", 1)
        return value

    sim = run_to_completion(typo, activities={"add_one": lambda x: x + 1})
    assert sim.status is OrchestrationStatus.Failed
    assert sim.failure is not None
    inner = sim.failure.inner_failure
    assert inner is not None
    assert inner.error_type == "UnknownFunctionError"
    assert "'add_on'" in inner.error_message
    assert "add_one" in inner.error_message
    assert sim.activity_calls == []


def test_activity_names_match_case_insensitively() -> None:
    def shout(ctx: OrchestrationContext) -> Orch:
        value = yield ctx.call_activity("Upper", "abc")
        return value

    assert run_to_completion(shout, activities={"upper": str.upper}).output == "ABC"


def test_unserializable_activity_result_becomes_a_task_failure() -> None:
    def odd(ctx: OrchestrationContext) -> Orch:
        try:
            yield ctx.call_activity("make_set")
        except TaskFailedError as err:
            return err.error_type
        return None

    sim = run_to_completion(odd, activities={"make_set": lambda _: {1, 2}})
    assert sim.output == "PayloadError"


def test_timers_fire_in_simulated_time() -> None:
    def sleepy(ctx: OrchestrationContext) -> Orch:
        yield ctx.create_timer(ctx.current_utc_datetime + timedelta(hours=1))
        return ctx.current_utc_datetime.isoformat()

    sim = run_to_completion(sleepy)
    assert sim.output == (DEFAULT_START + timedelta(hours=1)).isoformat()


def test_an_activity_beats_a_later_timer() -> None:
    def race(ctx: OrchestrationContext) -> Orch:
        timeout = ctx.create_timer(ctx.current_utc_datetime + timedelta(minutes=5))
        work = ctx.call_activity("work")
        winner = yield ctx.task_any([timeout, work])
        return "work" if winner is work else "timeout"

    sim = run_to_completion(race, activities={"work": lambda _: 1})
    assert sim.output == "work"
    # The timer still fires later, but the orchestration had already finished.
    assert sim.status is OrchestrationStatus.Completed


def test_fire_and_forget_activities_still_run() -> None:
    def notify(ctx: OrchestrationContext) -> str:
        ctx.call_activity("send_mail", "bob")
        return "sent"

    mails: list[str] = []
    sim = run_to_completion(notify, activities={"send_mail": mails.append})
    assert sim.output == "sent"
    assert mails == ["bob"]


def test_custom_status_is_returned() -> None:
    def status(ctx: OrchestrationContext) -> Orch:
        ctx.set_custom_status({"stage": 1})
        yield ctx.call_activity("a")
        ctx.set_custom_status({"stage": 2})
        return None

    assert run_to_completion(status, activities={"a": lambda _: None}).custom_status == {"stage": 2}


def test_waiting_for_nothing_raises() -> None:
    def stuck(ctx: OrchestrationContext) -> Orch:
        yield Task()

    with pytest.raises(SimulationError, match="waiting"):
        run_to_completion(stuck)


def test_endless_orchestration_stops_at_max_episodes() -> None:
    def endless(ctx: OrchestrationContext) -> Orch:
        while True:
            yield ctx.call_activity("tick")

    with pytest.raises(SimulationError, match="within 20 episodes"):
        run_to_completion(endless, activities={"tick": lambda _: None}, max_episodes=20)


def test_max_completions_per_episode_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_to_completion(chain, max_completions_per_episode=0)
