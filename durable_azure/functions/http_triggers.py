"""Serving a function app's HTTP triggers with Starlette, as the Functions host does.

Each ``@app.route`` function is served at ``/<route_prefix>/<route>`` (default prefix
``api``, default route the function name) for the methods its binding lists (all when
none). The Starlette request becomes an ``azure.functions.HttpRequest``; the function's
``azure.functions.HttpResponse`` (or ``str``/``bytes``) becomes the response. A
``durable_client_input`` parameter receives the durable client binding JSON as a keyword
argument (the SDK's client middleware turns it into a ``DurableOrchestrationClient`` that
talks HTTP to ``rpcBaseUrl``).

Route templates: ``{name}``, ``{name?}`` (optional, trailing segments), ``{*rest}``
(catch-all); constraints such as ``{id:int}`` are accepted but not checked, and every route
parameter is a string, as in ``req.route_params``.

Authorization: with ``function_key`` set, routes whose ``authLevel`` is not ``ANONYMOUS``
need that key as the ``code`` query parameter or the ``x-functions-key`` header, else 401.
Without a key nothing is checked, as with Core Tools running locally.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from durable_azure.functions.loader import (
    DURABLE_CLIENT,
    HTTP_TRIGGER,
    ClientBinding,
    FunctionAppError,
    FunctionInfo,
)
from durable_azure.http.payloads import client_binding

if TYPE_CHECKING:
    from durable_azure.functions.adapter import FunctionAppAdapter

#: ``(origin, binding, task_hub) -> client binding JSON``; ``origin`` is the request's
#: ``scheme://host[:port]``.
BindingFactory = Callable[[str, ClientBinding, str], str]

#: Where the Durable Functions HTTP management API lives, relative to the origin.
WEBHOOK_PATH = "/runtime/webhooks/durabletask"

_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]*)?(\?)?\}")
_ALLOWED_BINDINGS = {HTTP_TRIGGER, DURABLE_CLIENT}
_ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def default_binding_factory(rpc_base_url: str) -> BindingFactory:
    """Bindings whose management URLs point at the request's own origin."""

    def factory(origin: str, binding: ClientBinding, task_hub: str) -> str:
        return json.dumps(
            client_binding(
                base_url=origin + WEBHOOK_PATH,
                rpc_base_url=rpc_base_url,
                task_hub=binding.task_hub or task_hub,
                connection=binding.connection_name,
            )
        )

    return factory


def route_paths(template: str, prefix: str = "api") -> list[str]:
    """Starlette paths for a Functions route template: one per omitted trailing optional
    parameter, longest first."""
    segments = [s for s in template.strip("/").split("/") if s]
    converted: list[tuple[str, bool]] = []
    for segment in segments:
        optional = False

        def replace(match: re.Match[str]) -> str:
            nonlocal optional
            star, name, question = match.groups()
            optional = optional or bool(question)
            return f"{{{name}:path}}" if star else f"{{{name}}}"

        converted.append((_PARAM.sub(replace, segment), optional))
    head = "/" + prefix.strip("/") if prefix.strip("/") else ""
    paths = []
    count = len(converted)
    while True:
        paths.append(head + "/" + "/".join(s for s, _ in converted[:count]))
        if count == 0 or not converted[count - 1][1]:
            break
        count -= 1
    return paths


def _methods(info: FunctionInfo) -> list[str]:
    methods = info.trigger.get("methods")
    if not methods:
        return list(_ALL_METHODS)  # no ``methods``: the host accepts any
    return sorted({str(m).upper() for m in methods})


def _check_bindings(info: FunctionInfo) -> None:
    for binding in info.bindings:
        kind = binding.get("type")
        if str(binding.get("direction", "")).upper() == "OUT":
            if kind == "http" and binding.get("name") == "$return":
                continue
        elif kind in _ALLOWED_BINDINGS:
            continue
        raise FunctionAppError(
            f"function {info.function_name!r} uses a {kind!r} binding "
            f"({binding.get('name')!r}), which durable-azure cannot serve"
        )


def to_http_request(request: Request, body: bytes) -> Any:
    """The ``azure.functions.HttpRequest`` for a Starlette request."""
    import azure.functions as func

    return func.HttpRequest(
        method=request.method,
        url=str(request.url),
        headers=dict(request.headers),
        params=dict(request.query_params),
        route_params={k: str(v) for k, v in request.path_params.items()},
        body=body,
    )


def to_response(result: Any) -> Response:
    """A Starlette response for what an HTTP function returned."""
    import azure.functions as func

    if isinstance(result, func.HttpResponse):
        headers = {str(k): str(v) for k, v in result.headers.items()}
        if not any(k.lower() == "content-type" for k in headers):
            mimetype = str(result.mimetype)
            if mimetype.startswith("text/") or mimetype == "application/json":
                mimetype = f"{mimetype}; charset={result.charset}"
            headers["content-type"] = mimetype
        return Response(result.get_body(), status_code=int(result.status_code), headers=headers)
    if result is None:
        return Response(status_code=204)
    if isinstance(result, str):
        return Response(result, media_type="text/plain")
    if isinstance(result, (bytes, bytearray)):
        return Response(bytes(result), media_type="application/octet-stream")
    raise TypeError(
        f"an HTTP function returned a {type(result).__name__}; return an "
        "azure.functions.HttpResponse, str or bytes"
    )


def _authorized(request: Request, key: str) -> bool:
    given = request.query_params.get("code") or request.headers.get("x-functions-key") or ""
    return hmac.compare_digest(given.encode(), key.encode())


def http_routes(
    adapter: FunctionAppAdapter,
    rpc_base_url: str,
    binding_factory: BindingFactory | None = None,
    *,
    task_hub: str,
    route_prefix: str = "api",
    function_key: str | None = None,
) -> list[Route]:
    """Starlette routes for every HTTP-triggered function of ``adapter``'s app."""
    factory = binding_factory or default_binding_factory(rpc_base_url)
    routes: list[Route] = []
    for info in adapter.http_functions.values():
        _check_bindings(info)
        endpoint = _endpoint(adapter, info, factory, task_hub, function_key)
        template = str(info.trigger.get("route") or info.function_name)
        for path in route_paths(template, route_prefix):
            routes.append(Route(path, endpoint, methods=_methods(info), name=None))
    return routes


def _endpoint(
    adapter: FunctionAppAdapter,
    info: FunctionInfo,
    factory: BindingFactory,
    task_hub: str,
    function_key: str | None,
) -> Callable[[Request], Any]:
    user = info.user_function
    anonymous = str(info.trigger.get("authLevel", "FUNCTION")).upper() == "ANONYMOUS"
    wants_context = info.accepts_context()
    is_async = info.is_async

    async def endpoint(request: Request) -> Response:
        if function_key is not None and not anonymous and not _authorized(request, function_key):
            return Response(status_code=401)
        body = await request.body()
        kwargs: dict[str, Any] = {info.trigger_param: to_http_request(request, body)}
        origin = f"{request.url.scheme}://{request.url.netloc}"
        for binding in info.client_bindings:
            # A keyword argument: the SDK's client middleware reads kwargs[name].
            kwargs[binding.name] = factory(origin, binding, task_hub)
        if wants_context:
            kwargs["context"] = adapter.invocation_context(info)
        if is_async:
            result = await user(**kwargs)
        else:
            result = await run_in_threadpool(user, **kwargs)
        return to_response(result)

    return endpoint
