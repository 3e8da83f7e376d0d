"""Orchestration API details: Durable Functions' RetryOptions, the replay-safe logger."""

from __future__ import annotations

import logging
from collections.abc import Generator
from datetime import timedelta
from typing import Any

import azure.durable_functions as df
import pytest

from durable_azure import OrchestrationContext, RetryOptions
from durable_azure.testing.histories import run_to_completion


def test_durable_functions_retry_options_are_accepted() -> None:
    options = RetryOptions.coerce(df.RetryOptions(1500, 4))
    assert options.first_retry_interval == timedelta(milliseconds=1500)
    assert options.max_number_of_attempts == 4
    with pytest.raises(TypeError, match="retry options must be"):
        RetryOptions.coerce({"first": 1})


def test_df_retry_options_drive_durable_timers_between_attempts() -> None:
    def orchestrator(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
        return (yield ctx.call_activity_with_retry("flaky", df.RetryOptions(2000, 3), 1))

    calls: list[int] = []

    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise ValueError(f"attempt {len(calls)}")
        return x + 1

    result = run_to_completion(orchestrator, None, {"flaky": flaky})
    assert result.output == 2
    assert len(calls) == 3
    timers = [e for e in result.history if type(e).__name__ == "TimerCreated"]
    assert len(timers) == 2
    # Each wait is 2 s after the episode in which the attempt failed (backoff 1).
    for timer in timers:
        episode_start = max(
            e.timestamp
            for e in result.history
            if type(e).__name__ == "OrchestratorStarted" and e.timestamp <= timer.timestamp
        )
        assert timer.fire_at - episode_start == timedelta(seconds=2)


def test_backoff_max_interval_and_predicate() -> None:
    options = RetryOptions(
        timedelta(seconds=1),
        5,
        backoff_coefficient=2,
        max_retry_interval=timedelta(seconds=3),
        handle=lambda exc: exc.error_type != "PermissionError",
    )
    assert [options.delay(n).total_seconds() for n in (1, 2, 3, 4)] == [1, 2, 3, 3]

    def orchestrator(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
        return (yield ctx.call_activity_with_retry("denied", options, None))

    def denied(_: Any) -> None:
        raise PermissionError("no")

    result = run_to_completion(orchestrator, None, {"denied": denied})
    assert result.status.name == "Failed"
    assert not [e for e in result.history if type(e).__name__ == "TimerCreated"]


def test_replay_safe_logger_logs_each_message_once(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("user.orchestrator")

    def orchestrator(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
        safe = ctx.create_replay_safe_logger(log)
        safe.info("starting")
        a = yield ctx.call_activity("step", 1)
        safe.info("after step %s", a)
        b = yield ctx.call_activity("step", 2)
        safe.info("after step %s", b)
        return a + b

    with caplog.at_level(logging.INFO, logger="user.orchestrator"):
        result = run_to_completion(orchestrator, None, {"step": lambda x: x * 10})
    assert result.output == 30
    assert len(result.episodes) >= 3  # so the code was replayed twice
    messages = [r.getMessage() for r in caplog.records if r.name == "user.orchestrator"]
    assert messages == ["starting", "after step 10", "after step 20"]
    assert all(getattr(r, "instance_id", None) for r in caplog.records)


def test_timer_cancel_after_it_fired_has_no_effect() -> None:
    def orchestrator(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
        timer = ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=1))
        yield timer
        timer.cancel()
        return [timer.is_completed, timer.is_cancelled]

    simulated = run_to_completion(orchestrator, None, {})
    assert simulated.output == [True, False]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ctx: ctx.call_http("GET", "http://127.0.0.1/"), "call_http"),
        (lambda ctx: ctx.call_entity("@counter@k", "add", 1), "entities are not supported"),
        (lambda ctx: ctx.signal_entity("@counter@k", "add", 1), "entities are not supported"),
    ],
)
def test_unsupported_apis_fail_the_orchestration_clearly(call: Any, message: str) -> None:
    def orchestrator(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
        yield call(ctx)

    result = run_to_completion(orchestrator, None, {})
    assert result.status.name == "Failed"
    assert result.failure is not None
    assert result.failure.error_type == "NotImplementedError"
    assert message in result.failure.error_message


def test_df_style_parameters_are_accepted() -> None:
    def orchestrator(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
        value = ctx.get_input(expected_type=dict)
        first = yield ctx.call_activity("echo", value["n"], expected_type=int)
        event = ctx.wait_for_external_event("never", expected_type=str)
        assert not event.is_completed
        assert ctx.will_continue_as_new is False
        assert ctx.function_context == {}
        return first

    result = run_to_completion(orchestrator, {"n": 5}, {"echo": lambda x: x})
    assert result.output == 5
