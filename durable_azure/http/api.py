"""The Durable Functions HTTP API (reference §4) as a Starlette app.

:func:`create_management_app` serves routes #1-#10 of the host's webhook API under
``base_path`` (``/runtime/webhooks/durabletask``) and the same handlers under
``/durabletask/``, the local RPC base that ``azure.durable_functions``'
``DurableOrchestrationClient`` calls (its ``rpcBaseUrl``). Entity routes answer 501.

Bodies on the RPC base are decoded the way the SDK encodes them: ``start_new`` and
``raise_event`` send a JSON *string literal* holding JSON text (``"{\\"a\\": 1}"``), so a
body that parses to a string is parsed once more. On the public base a body is parsed
once, as the host does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from durable_azure.client import DurableClient, DurableOrchestrationStatus
from durable_azure.engine.history import OrchestrationStatus
from durable_azure.engine.serialization import PayloadError
from durable_azure.errors import (
    ConfigurationError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    InvalidInstanceIdError,
)
from durable_azure.http import payloads
from durable_azure.http.security import (
    BodyLimitMiddleware,
    BodyTooLargeError,
    is_loopback_host,
    key_matches,
)

__all__ = ["DEFAULT_BASE_PATH", "RPC_BASE_PATH", "create_management_app"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_PATH = "/runtime/webhooks/durabletask"
#: The Functions v1 base, which the Durable Functions overview's curl session uses.
LEGACY_BASE_PATH = "/admin/extensions/DurableTaskExtension"
RPC_BASE_PATH = "/durabletask"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
CONTINUATION_HEADER = "x-ms-continuation-token"

_RUNNING = frozenset(
    {
        OrchestrationStatus.Running,
        OrchestrationStatus.Pending,
        OrchestrationStatus.ContinuedAsNew,
        OrchestrationStatus.Suspended,
    }
)
_STATUS_NAMES = {s.name.lower(): s for s in OrchestrationStatus}

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


class _HttpError(Exception):
    def __init__(self, status: int, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail or message


def _error(status: int, message: str, detail: str | None = None) -> JSONResponse:
    """An ASP.NET ``HttpError``-shaped body (the SDK reads ``ExceptionMessage``)."""
    return JSONResponse(
        {"Message": message, "ExceptionMessage": detail or message}, status_code=status
    )


def _bad_request(detail: str) -> _HttpError:
    return _HttpError(400, "One or more of the arguments submitted is incorrect", detail)


# --- query parameters ------------------------------------------------------------------------


def _params(request: Request, name: str) -> list[str]:
    """All values of a query parameter, its name matched case-insensitively."""
    wanted = name.lower()
    return [v for k, v in request.query_params.multi_items() if k.lower() == wanted]


def _param(request: Request, name: str) -> str | None:
    values = _params(request, name)
    return values[-1] if values else None


def _flag(request: Request, name: str, default: bool) -> bool:
    """A boolean parameter; ``true``/``True``/``false`` (invalid values: the default,
    as the host's ``bool.TryParse``)."""
    value = _param(request, name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    return default


def _seconds(request: Request, name: str) -> float | None:
    value = _param(request, name)
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise _bad_request(f"'{name}' must be a number of seconds, got {value!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise _bad_request(f"'{name}' must be a non-negative number of seconds")
    return seconds


_FRACTION = re.compile(r"\.(\d{6})\d+")


def parse_time(text: str, name: str = "time") -> datetime:
    """An ISO-8601 time as sent by clients (``Z`` or an offset, up to 7 fractional digits;
    no zone means UTC). A ``+`` turned into a space by query decoding is put back."""
    value = text.strip()
    if "T" in value:
        value = value.replace(" ", "+")
    value = _FRACTION.sub(r".\1", value)
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _bad_request(
            f"'{name}' is not an ISO-8601 time (e.g. 2026-11-24T18:00:00Z): {text!r}"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _time_param(request: Request, name: str) -> datetime | None:
    value = _param(request, name)
    return parse_time(value, name) if value else None


def _statuses(request: Request) -> list[OrchestrationStatus] | None:
    names = [n.strip() for v in _params(request, "runtimeStatus") for n in v.split(",")]
    names = [n for n in names if n]
    if not names:
        return None
    out: list[OrchestrationStatus] = []
    for name in names:
        status = _STATUS_NAMES.get(name.lower())
        if status is None:
            known = ", ".join(s.name for s in OrchestrationStatus)
            raise _bad_request(f"unknown runtimeStatus {name!r} (known: {known})")
        out.append(status)
    return out


def _encode_token(token: str | None) -> str | None:
    if token is None:
        return None
    return base64.urlsafe_b64encode(token.encode("utf-8")).decode("ascii")


def _decode_token(header: str | None) -> str | None:
    if not header:
        return None
    try:
        token = base64.b64decode(header.encode("ascii"), altchars=b"-_", validate=True)
        text = token.decode("utf-8")
    except (ValueError, binascii.Error, UnicodeError):
        text = ""
    if not text:
        raise _bad_request(f"invalid {CONTINUATION_HEADER} header")
    return text


# --- the API -----------------------------------------------------------------------------


class _ManagementApi:
    def __init__(
        self,
        client: DurableClient,
        *,
        base_path: str,
        key: str | None,
        orchestrator_names: Callable[[], Collection[str]] | None,
        connection_name: str,
        rpc_requires_key: bool,
    ) -> None:
        self.client = client
        self.base_path = base_path
        self.key = key
        self.orchestrator_names = orchestrator_names
        self.connection_name = connection_name
        self.rpc_requires_key = rpc_requires_key
        self.task_hub = client.provider.names.hub

    # --- plumbing ------------------------------------------------------------------------

    def route(
        self, path: str, handler: Callable[[Request, bool], Awaitable[Response]], *, rpc: bool
    ) -> Route:
        async def endpoint(request: Request) -> Response:
            return await self._guarded(request, handler, rpc)

        return Route(path, endpoint, methods=_ALL_METHODS)

    def overview_aliases(self) -> tuple[list[BaseRoute], list[BaseRoute]]:
        """Paths the Durable Functions overview's curl session uses: a start at
        ``/orchestrators/{name}`` (the classic HTTP-starter sample's route) and status at
        the Functions v1 base ``/admin/extensions/DurableTaskExtension/{id}``.
        Returns (routes at the root, routes for the v1 mount)."""
        root: list[BaseRoute] = [
            self.route("/orchestrators/{function_name}", self.start, rpc=False),
            self.route("/orchestrators/{function_name}/{instance_id}", self.start, rpc=False),
        ]
        legacy = [*self.routes(rpc=False), self.route("/{instance_id}", self.instance, rpc=False)]
        return root, legacy

    def routes(self, *, rpc: bool) -> list[BaseRoute]:

        paths: list[tuple[str, Callable[[Request, bool], Awaitable[Response]]]] = [
            ("/orchestrators/{function_name}", self.start),
            ("/orchestrators/{function_name}/{instance_id}", self.start),
            ("/instances", self.instances),
            ("/instances/", self.instances),
            ("/instances/{instance_id}", self.instance),
            ("/instances/{instance_id}/raiseEvent/{event_name}", self.raise_event),
            ("/instances/{instance_id}/{operation}", self.operation),
            ("/entities", self.entities),
            ("/entities/{rest:path}", self.entities),
        ]
        # Every method reaches the handler, which answers 404 for the wrong one (the
        # host does; Starlette would say 405).
        return [self.route(path, handler, rpc=rpc) for path, handler in paths]

    async def _guarded(
        self,
        request: Request,
        handler: Callable[[Request, bool], Awaitable[Response]],
        rpc: bool,
    ) -> Response:
        needs_key = self.key is not None and (self.rpc_requires_key or not rpc)
        if rpc and self.key is not None and not self.rpc_requires_key:
            # The keyless RPC base is for the function app's own client, in this
            # process: only loopback callers may use it without the key.
            peer = request.client.host if request.client else ""
            if not is_loopback_host(peer) and not key_matches(request, self.key):
                return _error(
                    403,
                    "Forbidden",
                    "the /durabletask/ RPC base takes keyless requests from this machine "
                    "only; use the public API with its key",
                )
        if needs_key and not key_matches(request, self.key or ""):
            return _error(
                401,
                "Unauthorized",
                "this API needs its key, as the 'code' query parameter or the "
                "'x-functions-key' header",
            )
        try:
            hub = _param(request, "taskHub")
            if hub and hub.lower() != self.task_hub.lower():
                raise _bad_request(
                    f"task hub {hub!r} is not served here (this server serves {self.task_hub!r})"
                )
            return await handler(request, rpc)
        except _HttpError as exc:
            return _error(exc.status, exc.message, exc.detail)
        except (InvalidInstanceIdError, ConfigurationError, PayloadError) as exc:
            return _error(400, "One or more of the arguments submitted is incorrect", str(exc))
        except InstanceNotFoundError as exc:
            return _error(404, str(exc))
        except InstanceAlreadyExistsError as exc:
            return _error(409, str(exc))
        except BodyTooLargeError:
            raise
        except Exception:
            logger.exception("HTTP API %s %s failed", request.method, request.url.path)
            return _error(500, "Something went wrong while processing your request")

    def _base_url(self, request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}{self.base_path}"

    def _code(self) -> str | None:
        return self.key

    def _check_status(
        self, request: Request, instance_id: str, *, fail_500: bool = False
    ) -> JSONResponse:
        body = payloads.check_status_payload(
            self._base_url(request),
            instance_id,
            task_hub=self.task_hub,
            connection=self.connection_name,
            code=self._code(),
            return_internal_server_error_on_failure=fail_500,
        )
        return JSONResponse(
            body,
            status_code=202,
            headers={"Location": body["statusQueryGetUri"], "Retry-After": "10"},
        )

    @staticmethod
    def _method(request: Request, *allowed: str) -> None:
        if request.method not in allowed:
            raise _HttpError(404, "Not Found", f"no route for {request.method} here")

    @staticmethod
    async def _json_body(request: Request, rpc: bool) -> Any:
        raw = await request.body()
        if not raw.strip():
            return None
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _HttpError(
                400, "Invalid JSON content", "the request body is not valid JSON"
            ) from None
        if rpc and isinstance(value, str):
            # azure.durable_functions sends JSON text as a JSON string literal.
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        return value

    async def _wait_or_check_status(
        self, request: Request, instance_id: str, timeout: float | None
    ) -> Response:
        fail_500 = _flag(request, "returnInternalServerErrorOnFailure", False)
        if timeout is None:
            return self._check_status(request, instance_id, fail_500=fail_500)
        interval = _seconds(request, "pollingInterval")
        interval = interval or 1.0
        deadline = time.monotonic() + timeout
        while True:
            status = await self.client.get_status(instance_id)
            if status.runtime_status is OrchestrationStatus.Completed:
                return JSONResponse(status.output, status_code=200)
            if status.is_terminal:
                code = 500 if fail_500 and status.runtime_status.name == "Failed" else 200
                return JSONResponse(payloads.status_payload(status), status_code=code)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._check_status(request, instance_id, fail_500=fail_500)
            await asyncio.sleep(min(interval, remaining))

    # --- routes --------------------------------------------------------------------------

    async def start(self, request: Request, rpc: bool) -> Response:
        """#1 ``POST orchestrators/{functionName}[/{instanceId}]``."""
        self._method(request, "POST")
        name = request.path_params["function_name"]
        instance_id: str | None = request.path_params.get("instance_id")
        if self.orchestrator_names is not None and name not in self.orchestrator_names():
            raise _bad_request(
                f"The function '{name}' doesn't exist, is disabled, or is not an "
                "orchestrator function."
            )
        timeout = _seconds(request, "timeout")
        client_input = await self._json_body(request, rpc)
        instance_id = await self.client.start_new(name, instance_id, client_input)
        return await self._wait_or_check_status(request, instance_id, timeout)

    async def instance(self, request: Request, rpc: bool) -> Response:
        """#2 ``GET instances/{id}`` and #4 ``DELETE instances/{id}``."""
        self._method(request, "GET", "DELETE")
        instance_id = request.path_params["instance_id"]
        if request.method == "DELETE":
            try:
                result = await self.client.purge_instance_history(instance_id)
            except InstanceStateError as exc:
                return _error(409, str(exc))
            if result.instances_deleted == 0:
                return _error(404, f"no instance with id {instance_id!r}")
            return JSONResponse({"instancesDeleted": result.instances_deleted})
        show_input = _flag(request, "showInput", True)
        show_history = _flag(request, "showHistory", False)
        show_output = _flag(request, "showHistoryOutput", False)
        fail_500 = _flag(request, "returnInternalServerErrorOnFailure", False)
        try:
            status = await self.client.get_status(instance_id, show_input=show_input)
        except InstanceNotFoundError:
            return Response(status_code=404)
        history = None
        if show_history and status.runtime_status is not OrchestrationStatus.Pending:
            events = (await self.client.provider.load_history(instance_id)).events
            history = payloads.compact_history(
                events, show_history_output=show_output, show_input=show_input
            )
        body = payloads.status_payload(status, history)
        if status.runtime_status in _RUNNING:
            return JSONResponse(
                body,
                status_code=202,
                headers={"Location": str(request.url), "Retry-After": "5"},
            )
        if status.runtime_status is OrchestrationStatus.Failed and fail_500:
            return JSONResponse(body, status_code=500)
        return JSONResponse(body, status_code=200)

    async def instances(self, request: Request, rpc: bool) -> Response:
        """#3 ``GET instances`` (a page) and #5 ``DELETE instances`` (purge by filter)."""
        self._method(request, "GET", "DELETE")
        created_from = _time_param(request, "createdTimeFrom")
        created_to = _time_param(request, "createdTimeTo")
        statuses = _statuses(request)
        if request.method == "DELETE":
            if created_from is None:
                raise _bad_request("Please provide value for 'createdTimeFrom' parameter.")
            purged = await self.client.purge_instance_history_by(
                created_from, created_to or datetime.now(UTC), statuses
            )
            if purged.deleted == 0:
                return _error(404, "no instances matched the filter")
            return JSONResponse({"instancesDeleted": purged.deleted})
        top_text = _param(request, "top")
        page_size = DEFAULT_PAGE_SIZE
        if top_text:
            try:
                page_size = int(top_text)
            except ValueError:
                raise _bad_request(f"'top' must be a whole number, got {top_text!r}") from None
            if page_size <= 0:
                raise _bad_request("'top' must be at least 1")
        show_input = _flag(request, "showInput", True)
        continuation = _decode_token(request.headers.get(CONTINUATION_HEADER))
        try:
            page, token = await self.client.query_instances(
                created_time_from=created_from,
                created_time_to=created_to,
                runtime_status=statuses,
                instance_id_prefix=_param(request, "instanceIdPrefix") or None,
                page_size=min(page_size, MAX_PAGE_SIZE),
                continuation=continuation,
            )
        except ValueError as exc:
            if continuation is None or isinstance(exc, ConfigurationError):
                raise
            raise _bad_request(f"invalid {CONTINUATION_HEADER} header") from None
        body = [payloads.status_payload(_without_input(s, show_input)) for s in page]
        headers = {}
        encoded = _encode_token(token)
        if encoded is not None:
            headers[CONTINUATION_HEADER] = encoded
        return JSONResponse(body, headers=headers)

    async def raise_event(self, request: Request, rpc: bool) -> Response:
        """#6 ``POST instances/{id}/raiseEvent/{eventName}``."""
        self._method(request, "POST")
        instance_id = request.path_params["instance_id"]
        event_name = request.path_params["event_name"]
        status = await self.client.get_status(instance_id, show_input=False)
        if status.is_terminal:
            return _error(
                410, f"instance {instance_id!r} is {status.runtime_status.name}; it takes no events"
            )
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise _HttpError(400, "Only application/json request content is supported", None)
        data = await self._json_body(request, rpc)
        try:
            await self.client.raise_event(instance_id, event_name, data)
        except InstanceStateError as exc:
            return _error(410, str(exc))
        return Response(status_code=202)

    async def operation(self, request: Request, rpc: bool) -> Response:
        """#7-#10: ``terminate``, ``suspend``, ``resume``, ``rewind``, ``restart``."""
        self._method(request, "POST")
        instance_id = request.path_params["instance_id"]
        operation = request.path_params["operation"]
        reason = _param(request, "reason")
        if operation == "restart":
            timeout = _seconds(request, "timeout")
            try:
                new_id = await self.client.restart(
                    instance_id, _flag(request, "restartWithNewInstanceId", True)
                )
            except InstanceNotFoundError as exc:
                raise _HttpError(
                    400, "InstanceId does not match a valid orchestration instance.", str(exc)
                ) from None
            return await self._wait_or_check_status(request, new_id, timeout)
        actions: dict[str, Callable[[str, Any], Awaitable[None]]] = {
            "terminate": self.client.terminate,
            "suspend": self.client.suspend,
            "resume": self.client.resume,
            "rewind": self.client.rewind,
        }
        action = actions.get(operation)
        if action is None:
            raise _HttpError(404, "Not Found", f"no operation {operation!r}")
        try:
            await action(instance_id, reason)
        except InstanceStateError as exc:
            return _error(410, str(exc))
        return Response(status_code=202)

    async def entities(self, request: Request, rpc: bool) -> Response:
        """#11-#13: not implemented."""
        return JSONResponse(
            {
                "error": "durable entities are not supported yet",
                "Message": "durable entities are not supported yet",
                "ExceptionMessage": "durable entities are not supported yet",
            },
            status_code=501,
        )


def _without_input(
    status: DurableOrchestrationStatus, show_input: bool
) -> DurableOrchestrationStatus:
    return status if show_input else dataclasses.replace(status, input_=None)


def create_management_app(
    client: DurableClient,
    *,
    base_path: str = DEFAULT_BASE_PATH,
    key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    extra_routes: Sequence[BaseRoute] = (),
    orchestrator_names: Callable[[], Collection[str]] | None = None,
    connection_name: str = "Storage",
    rpc_requires_key: bool = True,
) -> Starlette:
    """An ASGI app serving the Durable Functions HTTP API for ``client``'s task hub.

    Args:
        client: the task hub's client (the caller opens and closes it).
        base_path: the public base (the host's ``/runtime/webhooks/durabletask``). The
            same routes are also served under ``/durabletask/``, the SDK's RPC base.
        key: when set, every API request must present it (``?code=`` or the
            ``x-functions-key`` header) or get 401. Check-status URLs carry it as
            ``code``, as the host's do.
        max_body_bytes: larger request bodies get 413 (checked while streaming).
        extra_routes: more routes (e.g. a function app's HTTP triggers), served as they
            are: neither the key check nor the API's error handling applies to them;
            the body limit does.
        orchestrator_names: the known orchestrator names (called per request); a start
            of any other name gets 400. ``None`` accepts any name.
        connection_name: the connection *name* put in management URLs (``connection=``);
            never a connection string.
        rpc_requires_key: when False, the ``/durabletask/`` RPC base takes requests
            without the key from loopback callers (the function app's own
            ``DurableOrchestrationClient``, which cannot send one, like the host's local
            RPC listener); other callers still need the key (403 otherwise).
    """
    base_path = "/" + base_path.strip("/")
    if base_path == RPC_BASE_PATH:
        raise ConfigurationError(f"base_path must differ from the RPC base {RPC_BASE_PATH!r}")
    if key is not None and not key:
        raise ConfigurationError("the HTTP API key must not be empty")
    api = _ManagementApi(
        client,
        base_path=base_path,
        key=key,
        orchestrator_names=orchestrator_names,
        connection_name=connection_name,
        rpc_requires_key=rpc_requires_key,
    )
    root_aliases, legacy = api.overview_aliases()
    routes: list[BaseRoute] = [
        Mount(base_path, routes=api.routes(rpc=False)),
        Mount(RPC_BASE_PATH, routes=api.routes(rpc=True)),
        Mount(LEGACY_BASE_PATH, routes=legacy),
        *extra_routes,
        *root_aliases,  # after the app's own routes, which win on a clash
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)],
    )
