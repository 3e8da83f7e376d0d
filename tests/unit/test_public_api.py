"""The curated public API: what ``durable_azure`` exports is deliberate."""

from __future__ import annotations

import durable_azure

EXPECTED = {
    "ConfigurationError",
    "DurableApp",
    "DurableAzureError",
    "DurableClient",
    "DurableOrchestrationStatus",
    "InstanceAlreadyExistsError",
    "InstanceNotFoundError",
    "InstanceStateError",
    "InvalidInstanceIdError",
    "NonDeterministicOrchestrationError",
    "OrchestrationContext",
    "OrchestrationStatus",
    "PayloadError",
    "RetryOptions",
    "StorageError",
    "StorageSettings",
    "Task",
    "TaskFailedError",
    "UnknownFunctionError",
    "WaitTimeoutError",
    "Worker",
    "WorkerOptions",
    "__version__",
}


def test_exported_names_are_pinned() -> None:
    assert set(durable_azure.__all__) == EXPECTED
    for name in durable_azure.__all__:
        assert hasattr(durable_azure, name), name


def test_every_error_derives_from_the_documented_root() -> None:
    errors = [getattr(durable_azure, n) for n in EXPECTED if n.endswith("Error")]
    for error in errors:
        assert issubclass(error, durable_azure.DurableAzureError), error
    # Orchestrator code catches activity failures with a plain `except Exception`.
    assert issubclass(durable_azure.TaskFailedError, Exception)


def test_public_callables_have_docstrings() -> None:
    for name in durable_azure.__all__:
        obj = getattr(durable_azure, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"
