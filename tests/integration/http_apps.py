"""The integration app plus orchestrators used by the HTTP API tests.

Importing this module registers them on ``tests.integration.apps.app`` (the app the
``hub`` fixture's worker runs); ``durable-azure serve tests.integration.http_apps:app``
serves the same app.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from durable_azure import OrchestrationContext
from tests.integration.apps import app

__all__ = ["app"]


@app.orchestrator
def http_echo_input(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
    """Returns its input as it received it (checks how bodies were decoded)."""
    if False:  # a generator with no durable work
        yield
    return {"input": ctx.get_input()}


@app.orchestrator
def http_wait_for_event(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
    """Waits for one ``go`` event and returns its data."""
    data = yield ctx.wait_for_external_event("go")
    return {"got": data}
