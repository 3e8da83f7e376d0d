"""A web dashboard for one task hub, served by ``durable-azure serve`` at ``/dashboard``.

Server-rendered HTML (no script, nothing loaded from elsewhere): the instance list with
filters, counts and paging; an instance's input, output, failure, history and timeline;
actions on one instance or on every instance matching a filter; the task hub's queues,
partitions and poison messages. See ``docs/dashboard.md``.

::

    from durable_azure.dashboard import create_dashboard_app

    asgi = create_dashboard_app(client, key="...", read_only=True)  # mount it anywhere
"""

from durable_azure.dashboard.app import (
    DEFAULT_DASHBOARD_PATH,
    create_dashboard_app,
    dashboard_routes,
)

__all__ = ["DEFAULT_DASHBOARD_PATH", "create_dashboard_app", "dashboard_routes"]
