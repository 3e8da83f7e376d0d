"""The Durable Functions HTTP API over a task hub (needs the ``http`` extra).

::

    from durable_azure.http import create_management_app

    client = DurableClient.from_app(app)
    asgi_app = create_management_app(client, key="...")  # serve with any ASGI server

See ``docs/http.md`` for the routes.
"""

from durable_azure.http.api import DEFAULT_BASE_PATH, RPC_BASE_PATH, create_management_app
from durable_azure.http.payloads import (
    check_status_payload,
    client_binding,
    compact_history,
    management_payload,
    status_payload,
)

__all__ = [
    "DEFAULT_BASE_PATH",
    "RPC_BASE_PATH",
    "check_status_payload",
    "client_binding",
    "compact_history",
    "create_management_app",
    "management_payload",
    "status_payload",
]
