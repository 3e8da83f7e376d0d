"""Run Python function apps written with ``azure-functions-durable`` on durable-azure.

::

    from durable_azure import DurableClient, Worker
    from durable_azure.functions import load_function_app

    adapter = load_function_app("path/to/app")        # or "function_app.py", "pkg.mod:app"
    async with Worker(adapter.durable_app):           # orchestrators + activities
        ...
    routes = adapter.http_routes(rpc_base_url)        # the app's HTTP triggers (Starlette)

Apps use the v2 programming model (``df.DFApp``, ``df.Blueprint``,
``orchestration_trigger``, ``activity_trigger``, ``durable_client_input``, ``route``) and
run unchanged, without the Functions host. Durable entities are refused at load time.
Needs the ``http`` extra (``azure-functions``, ``azure-functions-durable``, Starlette).
"""

from durable_azure.functions.adapter import (
    FunctionAppAdapter,
    decode_activity_input,
    encode_activity_output,
    load_function_app,
)
from durable_azure.functions.context import FunctionsOrchestrationContext
from durable_azure.functions.invocation import InvocationContext
from durable_azure.functions.loader import ClientBinding, FunctionAppError, FunctionInfo

__all__ = [
    "ClientBinding",
    "FunctionAppAdapter",
    "FunctionAppError",
    "FunctionInfo",
    "FunctionsOrchestrationContext",
    "InvocationContext",
    "decode_activity_input",
    "encode_activity_output",
    "load_function_app",
]
