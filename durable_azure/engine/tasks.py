"""Durable tasks: what orchestrator code yields, and how they complete during replay.

A task completes only when the replay engine feeds it a history event, so the same
history always completes the same tasks in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any


class Task:
    """A unit of durable work an orchestrator can ``yield``.

    Attributes mirror ``azure-functions-durable``'s tasks: ``result`` (the value once
    completed), ``is_completed`` and ``is_faulted``.
    """

    __slots__ = ("_done", "_exception", "_parents", "_result")

    def __init__(self) -> None:
        self._done = False
        self._result: Any = None
        self._exception: BaseException | None = None
        # Tasks to tell when this one completes (composites, retry chains).
        self._parents: list[Task] = []

    @property
    def is_completed(self) -> bool:
        """True once the task has a result or an exception."""
        return self._done

    @property
    def is_faulted(self) -> bool:
        """True if the task completed with an exception."""
        return self._exception is not None

    @property
    def result(self) -> Any:
        """The task's value (``None`` until it completes successfully)."""
        return self._result

    @property
    def exception(self) -> BaseException | None:
        """The exception the task failed with, if it failed."""
        return self._exception

    def _complete(self, result: Any) -> None:
        if self._done:
            return
        self._done = True
        self._result = result
        for parent in self._parents:
            parent._on_child_done(self)

    def _fail(self, exc: BaseException) -> None:
        if self._done:
            return
        self._done = True
        self._exception = exc
        for parent in self._parents:
            parent._on_child_done(self)

    def _on_child_done(self, child: Task) -> None:
        """Called when a task this one waits on completes (tasks that wait override it)."""


class ActivityTask(Task):
    """The pending result of ``ctx.call_activity``."""

    __slots__ = ("id", "name")

    def __init__(self, task_id: int, name: str) -> None:
        super().__init__()
        self.id = task_id
        self.name = name


class TimerTask(Task):
    """A durable timer created by ``ctx.create_timer``.

    ``cancel()`` abandons it: it never completes, and when its message arrives it is
    dropped. Cancel the losing timer of a ``task_any`` so nothing waits on it.
    """

    __slots__ = ("fire_at", "id", "is_cancelled")

    def __init__(self, task_id: int, fire_at: datetime) -> None:
        super().__init__()
        self.id = task_id
        self.fire_at = fire_at
        self.is_cancelled = False

    def cancel(self) -> None:
        """Cancel the timer (no effect once it has fired)."""
        if not self.is_completed:
            self.is_cancelled = True


class ExternalEventTask(Task):
    """The next event of one name raised to the instance (``ctx.wait_for_external_event``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class SubOrchestrationTask(Task):
    """The result of ``ctx.call_sub_orchestrator``."""

    __slots__ = ("id", "instance_id", "name")

    def __init__(self, task_id: int, name: str, instance_id: str) -> None:
        super().__init__()
        self.id = task_id
        self.name = name
        self.instance_id = instance_id


class CompositeTask(Task):
    """A task over other tasks (``task_all`` / ``task_any``)."""

    __slots__ = ("children",)

    def __init__(self, children: Sequence[Task]) -> None:
        super().__init__()
        self.children = list(children)
        for child in self.children:
            if not isinstance(child, Task):
                raise TypeError(f"task_all/task_any take durable tasks, got {type(child).__name__}")
            child._parents.append(self)
        for child in self.children:
            if child.is_completed:
                self._on_child_done(child)


class WhenAllTask(CompositeTask):
    """Completes with the list of results when every child has; fails on the first failure."""

    __slots__ = ("_remaining",)

    def __init__(self, children: Sequence[Task]) -> None:
        # A countdown, not a scan of all children per completion: a fan-in of 10,000
        # tasks must stay linear.
        self._remaining = len(children)
        super().__init__(children)
        if not self.children:
            self._complete([])

    def _on_child_done(self, child: Task) -> None:
        if self.is_completed:
            return
        if child.is_faulted:
            assert child.exception is not None
            self._fail(child.exception)
            return
        self._remaining -= 1
        if self._remaining == 0:
            self._complete([c.result for c in self.children])


class WhenAnyTask(CompositeTask):
    """Completes with the first child task to complete (the task object, as in
    ``azure-functions-durable``), whether it succeeded or failed."""

    __slots__ = ()

    def __init__(self, children: Sequence[Task]) -> None:
        if not children:
            raise ValueError("task_any needs at least one task")
        super().__init__(children)

    def _on_child_done(self, child: Task) -> None:
        if not self.is_completed:
            self._complete(child)
