"""The exception hierarchy of durable_azure.

Every exception the library raises on purpose derives from :class:`DurableAzureError`.
Storage errors are translated once, at the primitive boundary
(``durable_azure.storage.azure_primitives``), into the :class:`StorageError` family, so
no layer above it catches Azure SDK exceptions.

:class:`TaskFailedError` is what an orchestrator sees when an activity or
sub-orchestration it awaited failed. It is an ordinary ``Exception`` on purpose, so
``try/except`` in orchestrator code can catch it. The engine needs no control-flow
exceptions of its own: it drives the orchestrator generator from outside, so nothing of
the engine's passes through (or can be swallowed by) user code.
"""

from __future__ import annotations


class DurableAzureError(Exception):
    """Root of every error raised by durable_azure."""


# --- configuration and input -------------------------------------------------------------


class ConfigurationError(DurableAzureError, ValueError):
    """A setting is missing or invalid (connection string, task hub name, partitions...)."""


class InvalidInstanceIdError(DurableAzureError, ValueError):
    """An instance id is empty, too long, or otherwise unusable."""


class UnknownFunctionError(DurableAzureError, LookupError):
    """An orchestrator or activity name is not registered with the app."""


# --- instance lifecycle ------------------------------------------------------------------


class InstanceNotFoundError(DurableAzureError, LookupError):
    """No instance with the given id exists in the task hub."""


class InstanceAlreadyExistsError(DurableAzureError):
    """``start_new`` named an instance id that is still Pending, Running or Suspended."""

    def __init__(self, instance_id: str, runtime_status: str) -> None:
        super().__init__(
            f"instance {instance_id!r} already exists and is {runtime_status}; "
            "an id can be reused only once its instance is Completed, Failed or Terminated"
        )
        self.instance_id = instance_id
        self.runtime_status = runtime_status


class InstanceStateError(DurableAzureError):
    """The operation does not apply to the instance in its current state (raising an
    event to a finished instance, rewinding one that did not fail, purging one that runs).

    Attributes:
        instance_id: the instance.
        runtime_status: its status when the operation was refused.
    """

    def __init__(self, instance_id: str, runtime_status: str, message: str) -> None:
        super().__init__(message)
        self.instance_id = instance_id
        self.runtime_status = runtime_status


# --- inside orchestrations ---------------------------------------------------------------


class TaskFailedError(DurableAzureError):
    """An activity (or sub-orchestration) awaited by an orchestrator failed.

    Attributes:
        error_type: the original exception's type name, e.g. ``"ValueError"``.
        error_message: the original exception's message.
        stack_trace: the original traceback as text (may be empty).
        task_name: the activity that failed.
        task_id: the task's sequence id in the orchestration's history.
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str,
        error_message: str,
        stack_trace: str = "",
        task_name: str = "",
        task_id: int = -1,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.error_message = error_message
        self.stack_trace = stack_trace
        self.task_name = task_name
        self.task_id = task_id


class NonDeterministicOrchestrationError(DurableAzureError):
    """Replaying an orchestrator produced actions that contradict its recorded history.

    Attributes:
        position: the sequence id (action number) at which replay diverged.
        expected: a description of the history event recorded at that position.
        actual: a description of the action the code produced instead (or ``"nothing"``).
    """

    def __init__(self, position: int, expected: str, actual: str) -> None:
        super().__init__(
            f"non-deterministic orchestration at task #{position}: history has {expected}, "
            f"but the code now produced {actual}"
        )
        self.position = position
        self.expected = expected
        self.actual = actual


# --- storage -----------------------------------------------------------------------------


class StorageError(DurableAzureError):
    """A storage operation failed. Raised by the primitives, never the raw Azure SDK error.

    Attributes:
        status: the HTTP status code if there was one.
        code: the storage error code (``"UpdateConditionNotSatisfied"``...) if known.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class NotFoundError(StorageError):
    """The queue message, table entity, blob, table, queue or container does not exist."""


class MessageGoneError(NotFoundError):
    """A queue message was already deleted, or our pop receipt is no longer valid."""


class AlreadyExistsError(StorageError):
    """An insert conflicted with an existing entity or blob (HTTP 409)."""


class ConditionFailedError(StorageError):
    """An ETag condition (If-Match) did not hold (HTTP 412)."""


class TransactionFailedError(StorageError):
    """A table transaction was rejected; nothing in it was written.

    Attributes:
        index: the position of the failing operation in the batch, when known.
        cause: the translated error for that operation (e.g. :class:`ConditionFailedError`).
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None,
        cause: StorageError,
    ) -> None:
        super().__init__(message, status=cause.status, code=cause.code)
        self.index = index
        self.cause = cause


class SessionAbortedError(DurableAzureError):
    """Another writer changed this instance's history first (sentinel ETag mismatch).

    The episode's work is abandoned; its messages become visible again and the episode is
    replayed from the newer history. This is the split-brain guard of the DTFx layout.
    """
