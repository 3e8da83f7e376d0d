"""durable_azure: durable orchestrations in pure Python on Azure Storage.

The public API is what ``__all__`` lists; everything else is internal and may change.
"""

from durable_azure.app import DurableApp
from durable_azure.client import DurableClient, DurableOrchestrationStatus, WaitTimeoutError
from durable_azure.engine.context import OrchestrationContext
from durable_azure.engine.history import OrchestrationStatus
from durable_azure.engine.retry import RetryOptions
from durable_azure.engine.serialization import PayloadError
from durable_azure.engine.tasks import Task
from durable_azure.errors import (
    ConfigurationError,
    DurableAzureError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    InvalidInstanceIdError,
    NonDeterministicOrchestrationError,
    StorageError,
    TaskFailedError,
    UnknownFunctionError,
)
from durable_azure.settings import StorageSettings
from durable_azure.worker import Worker, WorkerOptions

__version__ = "0.1.0"

__all__ = [
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
]
