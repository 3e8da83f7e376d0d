"""The ``azure.functions.Context`` passed to functions that declare a ``context`` parameter."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from azure.functions._abc import Context, RetryContext, TraceContext


class _TraceContext(TraceContext):
    def __init__(self, trace_parent: str = "", trace_state: str = "") -> None:
        self._trace_parent = trace_parent
        self._trace_state = trace_state

    @property
    def trace_state(self) -> str:
        return self._trace_state

    @property
    def trace_parent(self) -> str:
        return self._trace_parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class InvocationContext(Context):
    """What the Python worker passes as ``context``: a fresh invocation id per call, the
    function's name and directory, an empty trace and retry context."""

    def __init__(
        self,
        function_name: str,
        function_directory: str,
        *,
        invocation_id: str | None = None,
        trace_parent: str = "",
        trace_state: str = "",
    ) -> None:
        self._invocation_id = invocation_id or str(uuid.uuid4())
        self._function_name = function_name
        self._function_directory = function_directory
        self._thread_local_storage = threading.local()
        self._trace_context = _TraceContext(trace_parent, trace_state)
        self._retry_context = _RetryContext()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._thread_local_storage

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> TraceContext:
        return self._trace_context

    @property
    def retry_context(self) -> RetryContext:
        return self._retry_context
