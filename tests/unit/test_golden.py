"""Golden histories: the recordings in ``tests/golden`` replay against today's code, and
``durable_azure.testing.golden`` reports the first difference when code changes."""

from __future__ import annotations

import json
from collections.abc import Generator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from durable_azure.engine.context import OrchestrationContext
from durable_azure.engine.history import (
    ExecutionStarted,
    OrchestrationStatus,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
)
from durable_azure.errors import DurableAzureError, TaskFailedError
from durable_azure.storage.messages import MessageFormatError, event_from_json, event_to_json
from durable_azure.testing.golden import (
    FORMAT,
    GoldenHistoryMismatch,
    check_golden,
    history_from_json,
    history_to_json,
    load_history,
    replay_history,
    save_history,
)
from durable_azure.testing.histories import HistoryBuilder, run_to_completion
from tests.golden import apps
from tests.golden.apps import add_step, fail_with, square, summarize

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
RECORDED = sorted(GOLDEN.glob("*.json"))

Orch = Generator[Any, Any, Any]


def golden(stem: str) -> Path:
    return GOLDEN / f"{stem}.json"


# --- the recordings -------------------------------------------------------------------------


def test_every_recording_of_record_py_is_checked_in() -> None:
    assert {p.stem for p in RECORDED} == set(apps.RECORDINGS)


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_recorded_history_replays_against_current_code(path: Path) -> None:
    document = load_history(path)
    orchestrator = apps.app.get_orchestrator(document.orchestrator)
    assert orchestrator is not None, document.orchestrator

    outcome = check_golden(orchestrator, path)

    assert outcome.status is document.expected_status
    assert outcome.output == document.expected_output


def test_recordings_cover_several_episodes_fan_in_batches_and_failures() -> None:
    chain = load_history(golden("chain"))
    assert sum(isinstance(e, TaskScheduled) for e in chain.events) == 5
    assert chain.expected_output["value"] == 63

    fan = load_history(golden("fan_out_fan_in"))
    outcome = check_golden(apps.golden_fan_out, golden("fan_out_fan_in"))
    completions_per_episode = [
        sum(isinstance(e, TaskCompleted) for e in r.new_events) for r in outcome.episodes
    ]
    assert sum(isinstance(e, TaskScheduled) for e in fan.events) == 21
    assert max(completions_per_episode) > 1  # a fan-in batch: several in one episode
    assert fan.expected_output == {"count": 20, "sum": sum(i * i for i in range(20))}

    caught = load_history(golden("caught_failure"))
    assert any(isinstance(e, TaskFailed) for e in caught.events)
    assert caught.expected_status is OrchestrationStatus.Completed

    answered = load_history(golden("approval_answered"))
    assert [type(e).__name__ for e in answered.events].count("EventRaised") == 1
    assert answered.expected_output["outcome"] == "approved"
    timed_out = load_history(golden("approval_timed_out"))
    assert [type(e).__name__ for e in timed_out.events].count("TimerFired") == 1
    assert timed_out.expected_output["outcome"] == "escalated"

    uncaught = load_history(golden("uncaught_failure"))
    assert uncaught.expected_status is OrchestrationStatus.Failed
    assert uncaught.expected_failure is not None
    assert uncaught.expected_failure["errorType"] == "TaskFailedError"
    assert uncaught.expected_failure["innerFailure"]["errorType"] == "KeyError"


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_saving_a_loaded_recording_writes_the_same_file(path: Path, tmp_path: Path) -> None:
    document = load_history(path)
    copy = tmp_path / path.name
    save_history(
        copy,
        document.events,
        orchestrator_name=document.orchestrator,
        instance_id=document.instance_id,
        input=document.input,
        output=document.expected_output,
        status=document.expected_status,
    )
    assert copy.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
    # Defaults come from the history itself.
    save_history(tmp_path / "defaults.json", document.events)
    assert (tmp_path / "defaults.json").read_text(encoding="utf-8") == path.read_text(
        encoding="utf-8"
    )


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_events_round_trip_through_queue_json(path: Path) -> None:
    events = load_history(path).events
    assert history_from_json(json.loads(json.dumps(history_to_json(events)))) == events
    for event in events:
        assert event_from_json(event_to_json(event)) == event


def test_event_json_is_the_dtfx_queue_form() -> None:
    event = load_history(golden("chain")).events[2]
    data = event_to_json(event)
    assert next(iter(data)) == "$type"
    assert data["$type"] == "DurableTask.Core.History.TaskScheduledEvent"
    assert data["EventType"] == 4
    assert data["Name"] == "add_step"
    assert data["Timestamp"].endswith("0Z")


@pytest.mark.parametrize("bad", [{}, {"EventType": 99, "Timestamp": "x"}, {"EventType": "x"}])
def test_event_from_json_rejects_what_is_not_an_event(bad: dict[str, Any]) -> None:
    with pytest.raises(MessageFormatError):
        event_from_json(bad)


def test_load_history_rejects_other_documents(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "something-else/9", "events": []}))
    with pytest.raises(ValueError, match="not a golden history"):
        load_history(wrong)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": FORMAT, "events": [{"EventType": "nope"}]}))
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_history(broken)


# --- changed code against the recordings ------------------------------------------------------


def chain_with_renamed_step(ctx: OrchestrationContext) -> Orch:
    state = {"value": ctx.get_input(), "steps": []}
    for step in range(5):
        state = yield ctx.call_activity("add_step_v2" if step == 2 else "add_step", state)
    return {**state, "id": ctx.new_uuid(), "finished_at": ctx.current_utc_datetime.isoformat()}


def chain_with_extra_step(ctx: OrchestrationContext) -> Orch:
    state = {"value": ctx.get_input(), "steps": []}
    for _ in range(6):
        state = yield ctx.call_activity(add_step, state)
    return {**state, "id": ctx.new_uuid(), "finished_at": ctx.current_utc_datetime.isoformat()}


def chain_with_fewer_steps(ctx: OrchestrationContext) -> Orch:
    state = {"value": ctx.get_input(), "steps": []}
    for _ in range(4):
        state = yield ctx.call_activity(add_step, state)
    return {**state, "id": ctx.new_uuid(), "finished_at": ctx.current_utc_datetime.isoformat()}


def chain_with_other_inputs(ctx: OrchestrationContext) -> Orch:
    state = {"value": ctx.get_input(), "steps": [], "note": "new field"}
    for _ in range(5):
        state = yield ctx.call_activity(add_step, state)
    return {**state, "id": ctx.new_uuid(), "finished_at": ctx.current_utc_datetime.isoformat()}


def chain_with_other_output(ctx: OrchestrationContext) -> Orch:
    state = {"value": ctx.get_input(), "steps": []}
    for _ in range(5):
        state = yield ctx.call_activity(add_step, state)
    return {**state, "id": ctx.new_uuid()}  # no "finished_at" any more


def fan_out_of(size: int) -> Any:
    def fan_out(ctx: OrchestrationContext) -> Orch:
        squares = yield ctx.task_all([ctx.call_activity(square, i) for i in range(size)])
        return (yield ctx.call_activity(summarize, squares))

    return fan_out


def catches_nothing(ctx: OrchestrationContext) -> Orch:
    yield ctx.call_activity(fail_with, "no such key")
    return {"caught": None}


def fails_differently(ctx: OrchestrationContext) -> Orch:
    yield ctx.call_activity(square, 3)
    try:
        yield ctx.call_activity(fail_with, "boom")
    except TaskFailedError as exc:
        raise RuntimeError("wrapped") from exc


def approval_with_timeout(ctx: OrchestrationContext) -> Orch:
    # The recorded code, but the deadline is twice as far.
    timeout = timedelta(seconds=2 * ctx.get_input()["timeout_seconds"])
    yield ctx.call_activity(apps.notify, "please approve")
    timer = ctx.create_timer(ctx.current_utc_datetime + timeout)
    answer = ctx.wait_for_external_event("ApprovalEvent")
    winner = yield ctx.task_any([answer, timer])
    if winner is answer:
        timer.cancel()
        sent = yield ctx.call_activity(apps.notify, f"approved: {answer.result}")
        return {"outcome": "approved", "sent": sent}
    sent = yield ctx.call_activity(apps.notify, "escalated")
    return {"outcome": "escalated", "sent": sent}


def mismatch_of(orchestrator: Any, stem: str, **kwargs: Any) -> GoldenHistoryMismatch:
    with pytest.raises(GoldenHistoryMismatch) as info:
        check_golden(orchestrator, golden(stem), **kwargs)
    return info.value


def test_a_renamed_activity_is_named_in_the_episode_that_scheduled_it() -> None:
    error = mismatch_of(chain_with_renamed_step, "chain")
    assert error.episode == 3
    assert "chain.json: golden history mismatch in episode 3 of 6" in str(error)
    assert error.expected.startswith("a call to activity 'add_step' (TaskScheduled #2)")
    assert error.actual.startswith("a call to activity 'add_step_v2' (TaskScheduled #2)")
    assert "expected (recorded): a call to activity 'add_step'" in str(error)
    assert "actual (code now):   a call to activity 'add_step_v2'" in str(error)


def test_an_extra_step_shows_where_the_recording_finished() -> None:
    error = mismatch_of(chain_with_extra_step, "chain")
    assert error.episode == 6
    assert error.expected.startswith("completion with status Completed and output {")
    assert error.actual.startswith("a call to activity 'add_step' (TaskScheduled #5)")


def test_a_missing_step_shows_the_recorded_call() -> None:
    error = mismatch_of(chain_with_fewer_steps, "chain")
    assert error.episode == 5
    assert error.expected.startswith("a call to activity 'add_step' (TaskScheduled #4)")
    assert error.actual.startswith("completion with status Completed")


@pytest.mark.parametrize(
    ("size", "expected", "actual"),
    [
        (21, "nothing", "a call to activity 'square' (TaskScheduled #20) with input 20"),
        (19, "a call to activity 'square' (TaskScheduled #19) with input 19", "nothing"),
    ],
)
def test_a_different_fan_out_size_is_caught_in_the_first_episode(
    size: int, expected: str, actual: str
) -> None:
    error = mismatch_of(fan_out_of(size), "fan_out_fan_in")
    assert error.episode == 1
    assert (error.expected, error.actual) == (expected, actual)
    assert f"the recording has 20 actions here, the code {size})" in str(error)


@pytest.mark.parametrize("stem", ["approval_answered", "approval_timed_out"])
def test_a_moved_deadline_is_caught_at_the_timer(stem: str) -> None:
    error = mismatch_of(approval_with_timeout, stem)
    assert error.episode == 2
    assert error.expected.startswith("a timer firing at ")
    assert error.expected.endswith("(TimerCreated #1)")
    assert error.actual.startswith("a timer firing at ")
    assert error.expected != error.actual


def test_changed_activity_inputs_fail_unless_inputs_are_left_out() -> None:
    error = mismatch_of(chain_with_other_inputs, "chain")
    assert error.episode == 1
    assert '"note":"new field"' in error.actual
    assert '"note"' not in error.expected

    check_golden(chain_with_other_inputs, golden("chain"), compare_inputs=False)


def test_a_changed_output_is_caught_at_the_completion() -> None:
    error = mismatch_of(chain_with_other_output, "chain")
    assert error.episode == 6
    assert "finished_at" in error.expected
    assert "finished_at" not in error.actual


def test_no_longer_catching_a_failure_is_caught() -> None:
    error = mismatch_of(catches_nothing, "caught_failure")
    assert error.episode == 2
    assert error.expected.startswith("a call to activity 'square' (TaskScheduled #1)")
    assert error.actual == (
        "completion with status Failed: TaskFailedError: activity 'fail_with' failed: "
        "KeyError: 'no such key' (inner: KeyError: 'no such key')"
    )


def test_a_different_failure_is_caught_by_type_and_message_not_traceback() -> None:
    error = mismatch_of(fails_differently, "uncaught_failure")
    assert error.episode == 3
    assert "TaskFailedError: activity 'fail_with' failed" in error.expected
    assert error.actual.startswith("completion with status Failed: RuntimeError: wrapped")


def test_non_determinism_found_by_the_engine_surfaces_with_its_text() -> None:
    calls = {"n": 0}

    def flaky(ctx: OrchestrationContext) -> Orch:
        # Different code on every run: the first run is what the recording shows.
        calls["n"] += 1
        name = "add_step" if calls["n"] == 1 else "add_step_elsewhere"
        state = {"value": ctx.get_input(), "steps": []}
        for _ in range(5):
            state = yield ctx.call_activity(name, state)
        return state

    error = mismatch_of(flaky, "chain")
    assert error.episode == 2
    assert "replaying the earlier episodes failed" in str(error)
    assert error.actual == (
        "NonDeterministicOrchestrationError: non-deterministic orchestration at task #0: "
        "history has a call to activity 'add_step' (TaskScheduled #0), but the code now "
        "produced a call to activity 'add_step_elsewhere' (task #0)"
    )


def test_the_final_outcome_is_compared_with_the_document(tmp_path: Path) -> None:
    document = load_history(golden("chain"))
    edited = tmp_path / "edited.json"
    save_history(edited, document.events, output={"value": 64})
    with pytest.raises(GoldenHistoryMismatch, match="ended differently") as info:
        check_golden(apps.golden_chain, edited)
    assert info.value.expected == 'Completed with output {"value": 64}'
    assert info.value.actual.startswith('Completed with output {"value": 63')


def test_a_mismatch_is_an_assertion_error_and_a_library_error() -> None:
    assert issubclass(GoldenHistoryMismatch, AssertionError)
    assert issubclass(GoldenHistoryMismatch, DurableAzureError)


# --- histories made in memory -----------------------------------------------------------------


def test_replay_follows_the_recorded_batching_of_completions() -> None:
    for batch in (1, 3, 20):
        simulated = run_to_completion(
            apps.golden_fan_out,
            20,
            {"square": lambda n: n * n, "summarize": summarize},
            max_completions_per_episode=batch,
        )
        outcome = replay_history(apps.golden_fan_out, simulated.history)
        assert len(outcome.episodes) == len(simulated.episodes)
        assert outcome.output == simulated.output


def sleeper(delay: float) -> Any:
    def orchestrator(ctx: OrchestrationContext) -> Orch:
        yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=delay))
        return "woke"

    return orchestrator


def test_timers_are_compared_by_fire_time() -> None:
    history = run_to_completion(sleeper(30), None).history
    assert replay_history(sleeper(30), history).output == "woke"
    with pytest.raises(GoldenHistoryMismatch) as info:
        replay_history(sleeper(60), history)
    assert info.value.episode == 1
    assert "(TimerCreated #0)" in info.value.expected
    assert info.value.expected != info.value.actual


def test_a_message_event_the_engine_now_drops_is_reported() -> None:
    def one_call(ctx: OrchestrationContext) -> Orch:
        return (yield ctx.call_activity("work"))

    # As if an older engine had recorded a second completion for the same task.
    history = (
        HistoryBuilder("dropped")
        .started("one_call")
        .scheduled(0, "work")
        .end_episode()
        .episode()
        .completed(0, 1)
        .completed(0, 2)
        .execution_completed(1)
        .end_episode()
        .build()
    )
    history[-2] = history[-2].__class__(
        timestamp=history[-2].timestamp,
        event_id=1,
        orchestration_status=OrchestrationStatus.Completed,
        result="1",
    )
    with pytest.raises(GoldenHistoryMismatch, match="no longer accepts") as info:
        replay_history(one_call, history)
    assert "duplicate TaskCompleted for task #0" in info.value.actual


def test_histories_must_be_made_of_episodes() -> None:
    started = HistoryBuilder("x").started("f").build()[1]
    assert isinstance(started, ExecutionStarted)
    with pytest.raises(ValueError, match="outside any episode"):
        replay_history(sleeper(1), [started])
    with pytest.raises(ValueError, match="no episode"):
        replay_history(sleeper(1), [])
