"""Retries of activities and sub-orchestrations, with durable timers between attempts.

A :class:`RetryTask` owns a chain of attempts. When an attempt fails and the policy allows
another, it creates a durable timer for the delay and, once the timer fires, the next
attempt. Each attempt and each timer takes the next sequence id at the moment the engine
applies the event that caused it, so replaying the same history takes the same ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from durable_azure.engine.tasks import Task, TimerTask
from durable_azure.errors import TaskFailedError

if TYPE_CHECKING:
    from durable_azure.engine.context import OrchestrationContext


@dataclass(frozen=True)
class RetryOptions:
    """When and how often to retry a failed activity or sub-orchestration.

    Args:
        first_retry_interval: the delay before the second attempt.
        max_number_of_attempts: attempts in all, the first one included (>= 1).
        backoff_coefficient: each later delay is the previous one times this (>= 1).
        max_retry_interval: no delay is longer than this.
        retry_timeout: no attempt starts later than this after the first one started.
        handle: called with the :class:`TaskFailedError` of a failed attempt; retry only
            if it returns True (default: retry every failure).
    """

    first_retry_interval: timedelta
    max_number_of_attempts: int
    backoff_coefficient: float = 1.0
    max_retry_interval: timedelta | None = None
    retry_timeout: timedelta | None = None
    handle: Callable[[TaskFailedError], bool] | None = None

    def __post_init__(self) -> None:
        if self.first_retry_interval <= timedelta(0):
            raise ValueError("first_retry_interval must be positive")
        if self.max_number_of_attempts < 1:
            raise ValueError("max_number_of_attempts must be at least 1")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be at least 1")

    @classmethod
    def coerce(cls, options: Any) -> RetryOptions:
        """Accept our options or ``azure.durable_functions.RetryOptions`` (by its attributes:
        ``first_retry_interval_in_milliseconds``, ``max_number_of_attempts``)."""
        if isinstance(options, cls):
            return options
        first_ms = getattr(options, "first_retry_interval_in_milliseconds", None)
        attempts = getattr(options, "max_number_of_attempts", None)
        if isinstance(first_ms, (int, float)) and isinstance(attempts, int):
            return cls(timedelta(milliseconds=first_ms), attempts)
        raise TypeError(
            "retry options must be durable_azure RetryOptions or azure.durable_functions "
            f"RetryOptions, got {type(options).__name__}"
        )

    def delay(self, failed_attempts: int) -> timedelta:
        """The wait after the ``failed_attempts``-th failure."""
        seconds = self.first_retry_interval.total_seconds() * (
            self.backoff_coefficient ** (failed_attempts - 1)
        )
        if self.max_retry_interval is not None:
            seconds = min(seconds, self.max_retry_interval.total_seconds())
        return timedelta(seconds=seconds)


class RetryTask(Task):
    """A task over successive attempts; completes with the first success, or fails with
    the last failure once the policy gives up."""

    __slots__ = ("_ctx", "_first_started", "_start_attempt", "attempts", "current", "options")

    def __init__(
        self,
        ctx: OrchestrationContext,
        options: RetryOptions,
        start_attempt: Callable[[], Task],
    ) -> None:
        super().__init__()
        self._ctx = ctx
        self.options = options
        self._start_attempt = start_attempt
        self._first_started: datetime = ctx.current_utc_datetime
        self.attempts = 0
        self.current: Task = self._attempt()

    def _attempt(self) -> Task:
        self.attempts += 1
        task = self._start_attempt()
        self._watch(task)
        return task

    def _watch(self, task: Task) -> None:
        task._parents.append(self)
        if task.is_completed:
            self._on_child_done(task)

    def _on_child_done(self, child: Task) -> None:
        if self.is_completed or child is not self.current:
            return
        if isinstance(child, TimerTask):
            self.current = self._attempt()
            return
        if not child.is_faulted:
            self._complete(child.result)
            return
        error = child.exception
        assert error is not None
        now = self._ctx.current_utc_datetime
        delay = self.options.delay(self.attempts)
        give_up = self.attempts >= self.options.max_number_of_attempts or (
            self.options.retry_timeout is not None
            and now + delay - self._first_started > self.options.retry_timeout
        )
        if not give_up and self.options.handle is not None and isinstance(error, TaskFailedError):
            try:
                give_up = not self.options.handle(error)
            except Exception as exc:  # the user's predicate failed: fail with its error
                self._fail(exc)
                return
        if give_up:
            self._fail(error)
            return
        timer = self._ctx.create_timer(now + delay)
        self.current = timer
        self._watch(timer)
