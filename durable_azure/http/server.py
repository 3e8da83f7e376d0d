"""Serving the HTTP API with uvicorn inside an existing asyncio loop.

:class:`EmbeddedServer` is a ``uvicorn.Server`` that leaves signal handling to its owner
(uvicorn's own handlers would re-raise SIGTERM after shutdown). :func:`serve` runs the
API, and optionally a :class:`~durable_azure.worker.Worker`, until SIGINT/SIGTERM, then
stops both: the server stops taking requests first, then the worker finishes its work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.routing import BaseRoute

from durable_azure.app import DurableApp
from durable_azure.client import DurableClient
from durable_azure.errors import ConfigurationError
from durable_azure.http.api import DEFAULT_BASE_PATH, create_management_app
from durable_azure.http.security import is_loopback_host

if TYPE_CHECKING:
    from durable_azure.functions import FunctionAppAdapter

__all__ = ["EmbeddedServer", "bound_port", "serve"]

logger = logging.getLogger(__name__)


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that installs no signal handlers (its owner stops it by setting
    ``should_exit``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def server_config(app: Any, host: str, port: int) -> uvicorn.Config:
    """A uvicorn config for embedding: no lifespan, no websockets, our logging."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        ws="none",
        http="h11",
        log_config=None,
        access_log=False,
        server_header=False,
    )


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (as uvicorn would open it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful with port 0)."""
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("the server is not listening")


def check_bind(host: str, key: str | None, insecure_no_key: bool) -> None:
    """Refuse a non-loopback address without a key (unless explicitly allowed)."""
    if key is None and not insecure_no_key and not is_loopback_host(host):
        raise ConfigurationError(
            f"refusing to serve the HTTP API on {host!r} without a key: anyone who can "
            "reach it could start, terminate and purge instances. Give --key (or set "
            "DURABLE_HTTP_KEY), bind to 127.0.0.1, or pass --insecure-no-key."
        )


async def serve(
    app: DurableApp | FunctionAppAdapter,
    *,
    host: str = "127.0.0.1",
    port: int = 7071,
    key: str | None = None,
    run_worker: bool = True,
    insecure_no_key: bool = False,
    base_path: str = DEFAULT_BASE_PATH,
    dashboard: bool = True,
    dashboard_read_only: bool = False,
    **settings: Any,
) -> None:
    """Serve ``app``'s task hub over HTTP (and run its worker) until SIGINT/SIGTERM.

    ``app`` is a :class:`DurableApp`, or a function app loaded with
    :func:`durable_azure.functions.load_function_app`: then its HTTP-triggered functions
    are served at ``/api/<route>`` too (with ``key`` required unless anonymous), and their
    durable clients talk to this server's ``/durabletask/`` RPC base.
    With ``dashboard`` (the default) the web dashboard is served at ``/dashboard`` (and
    ``/`` redirects there), behind the same key; ``dashboard_read_only`` hides its actions.
    ``settings`` override the app's storage settings (``connection_string``,
    ``task_hub``, ``partition_count``).
    """
    from durable_azure.functions import ClientBinding, FunctionAppAdapter
    from durable_azure.functions.http_triggers import default_binding_factory
    from durable_azure.worker import Worker

    check_bind(host, key, insecure_no_key)
    overrides = {k: v for k, v in settings.items() if v is not None}
    adapter = app if isinstance(app, FunctionAppAdapter) else None
    durable_app = app.durable_app if isinstance(app, FunctionAppAdapter) else app
    client = DurableClient.from_app(durable_app, **overrides)
    worker = Worker(durable_app, **overrides) if run_worker else None
    rpc_base_url = [""]  # known once the port is bound

    def binding(origin: str, client_binding: ClientBinding, task_hub: str) -> str:
        return default_binding_factory(rpc_base_url[0])(origin, client_binding, task_hub)

    routes = (
        adapter.http_routes("", binding, task_hub=client.provider.names.hub, function_key=key)
        if adapter is not None
        else []
    )
    extra_routes: list[BaseRoute] = list(routes)
    if dashboard:
        from durable_azure.dashboard import dashboard_routes

        extra_routes += dashboard_routes(client, key=key, read_only=dashboard_read_only)
    asgi = create_management_app(
        client,
        base_path=base_path,
        key=key,
        extra_routes=extra_routes,
        orchestrator_names=lambda: set(durable_app.orchestrators),
        # A function app's own DurableOrchestrationClient cannot send the key; it reaches
        # the RPC base over loopback, which is allowed without it.
        rpc_requires_key=adapter is None,
    )
    server = EmbeddedServer(server_config(asgi, host, port))
    loop = asyncio.get_running_loop()

    def request_stop() -> None:
        server.should_exit = True

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, request_stop)
            installed.append(sig)
    try:
        if worker is not None:
            await worker.start()
        # Bind first, so the port - and the RPC URL that function apps' clients use - is
        # known before the first request can arrive (port 0 picks a free one).
        sock = _bind(host, port)
        local = host if is_loopback_host(host) else "127.0.0.1"
        rpc_base_url[0] = (
            f"http://{'[' + local + ']' if ':' in local else local}:"
            f"{sock.getsockname()[1]}/durabletask/"
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="http server")
        while not server.started and not serving.done():  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.05)
        if server.started:
            shown = f"[{host}]" if ":" in host else host
            logger.info(
                "HTTP API on http://%s:%d%s (task hub %s, key %s)",
                shown,
                bound_port(server),
                base_path,
                client.provider.names.hub,
                "required" if key else "not required",
            )
            if dashboard:
                logger.info(
                    "dashboard on http://%s:%d/dashboard/%s",
                    shown,
                    bound_port(server),
                    " (read-only)" if dashboard_read_only else "",
                )
        await serving
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        try:
            if worker is not None:
                await worker.stop()
        finally:
            await client.close()
            if adapter is not None:
                await adapter.aclose()
