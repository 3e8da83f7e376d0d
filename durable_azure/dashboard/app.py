"""The dashboard's routes: a small Starlette app, mounted by ``durable-azure serve`` at
``/dashboard`` (and ``/`` redirects there).

Pages (all GET): ``/`` the instance list, ``/instance?id=`` one instance, ``/value`` one
full value as text, ``/health`` the task hub, ``/action`` and ``/batch`` confirmation
pages. Changes are POSTs to ``/action`` and ``/batch`` carrying ``confirm=1`` and the
form token; without ``confirm=1`` the confirmation page is shown again.

**Access.** With a key, a request is let in when it carries the key as ``?code=`` or the
``x-functions-key`` header (as the API), or the dashboard's cookie. A page opened with a
right ``?code=`` sets the cookie (``HttpOnly``, ``SameSite=Strict``, holding an HMAC of
the key, not the key) and redirects to the same URL without ``code``, so the key does not
stay in the address bar, the history or links. Without the key: a 401 page with a key
form. Every form carries a token (an HMAC of the key, or of a per-process secret when
there is no key) that a page on another site cannot read, and POSTs without it get 403.

**Read-only** (``read_only=True``): no action links or forms, and every POST, ``/action``
and ``/batch`` answer 403.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from durable_azure.client import DurableClient
from durable_azure.dashboard import data, timeline, views
from durable_azure.dashboard.views import Ui
from durable_azure.engine.history import ExecutionCompleted, OrchestrationStatus
from durable_azure.errors import (
    ConfigurationError,
    DurableAzureError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    NotFoundError,
)
from durable_azure.http.security import key_matches
from durable_azure.hub import hub_info
from durable_azure.storage.codec import event_fields
from durable_azure.storage.names import validate_instance_id
from durable_azure.storage.tracking import InstanceRecord

__all__ = ["DEFAULT_DASHBOARD_PATH", "create_dashboard_app", "dashboard_routes"]

logger = logging.getLogger(__name__)

DEFAULT_DASHBOARD_PATH = "/dashboard"
COOKIE_NAME = "durable_dashboard"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
HISTORY_PAGE_SIZE = 200
#: Instances changed at the same time by a batch action.
BATCH_CONCURRENCY = 8

_HEADERS = {
    # The pages hold no script at all; values from storage cannot run as one.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_FILTER_FIELDS = ("name", "prefix", "created_from", "created_to", "updated_from", "updated_to")
_SINGLE_OPS = (*views.SINGLE_OPS, "requeue-poison", "drop-poison")
_BATCH_OPS = tuple(views.SINGLE_OPS)


class PageError(Exception):
    """Answer with an error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Params = Sequence[tuple[str, str]]
Handler = Callable[[Request, Ui, Params], Awaitable[Response]]


def _get(params: Params, name: str) -> str:
    """The last value of ``name``, stripped ("" when absent)."""
    values = [v for k, v in params if k == name]
    return values[-1].strip() if values else ""


def _int(params: Params, name: str, default: int, low: int, high: int) -> int:
    text = _get(params, name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise PageError(400, f"'{name}' must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise PageError(400, f"'{name}' must be between {low} and {high}, got {value}")
    return value


def parse_time(text: str, name: str) -> datetime:
    """An ISO-8601 time (``2026-11-24T18:00:00Z``, an offset, or none = UTC)."""
    value = text.strip().replace(" ", "T", 1) if "T" not in text else text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PageError(
            400, f"'{name}' is not an ISO-8601 time (e.g. 2026-11-24T18:00:00Z): {text!r}"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ParsedFilter:
    filter: data.InstanceFilter
    params: list[tuple[str, str]]  # the raw, non-empty values, to keep in links
    form: dict[str, str]


def parse_filter(params: Params) -> ParsedFilter:
    """The instance filter in query parameters or form fields.

    Raises:
        PageError: an unknown status, a bad time, or an inconsistent range (400).
    """
    statuses = [s.strip() for k, v in params if k == "status" for s in v.split(",") if s.strip()]
    known = {name.lower(): name for name in OrchestrationStatus.__members__}
    unknown = [s for s in statuses if s.lower() not in known]
    if unknown:
        raise PageError(400, f"unknown status {unknown[0]!r} (known: {', '.join(known.values())})")
    names = list(dict.fromkeys(known[s.lower()] for s in statuses))
    form = {f: _get(params, f) for f in _FILTER_FIELDS}
    times = {f: parse_time(form[f], f) if form[f] else None for f in _FILTER_FIELDS[2:]}
    try:
        flt = data.InstanceFilter(
            statuses=tuple(OrchestrationStatus[n] for n in names),
            name=form["name"] or None,
            prefix=form["prefix"] or None,
            created_from=times["created_from"],
            created_to=times["created_to"],
            updated_from=times["updated_from"],
            updated_to=times["updated_to"],
        )
    except ConfigurationError as exc:
        raise PageError(400, str(exc)) from None
    raw = [("status", n) for n in names] + [(f, form[f]) for f in _FILTER_FIELDS if form[f]]
    return ParsedFilter(flt, raw, form)


def _encode_token(token: str) -> str:
    return base64.urlsafe_b64encode(token.encode("utf-8")).decode("ascii")


def _decode_token(text: str) -> str:
    try:
        return base64.urlsafe_b64decode(text.encode("ascii")).decode("utf-8")
    except (ValueError, binascii.Error, UnicodeError):
        raise PageError(400, "the page link is not valid (bad 'pages' token)") from None


def _json_or_none(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise PageError(400, "the event data is not valid JSON") from None


class _Dashboard:
    def __init__(self, client: DurableClient, *, key: str | None, read_only: bool) -> None:
        if key is not None and not key:
            raise ConfigurationError("the dashboard key must not be empty")
        self.client = client
        self.provider = client.provider
        self.key = key
        self.read_only = read_only
        secret = key.encode("utf-8") if key else secrets.token_bytes(32)
        self._cookie = _mac(secret, "durable-azure dashboard session")
        self._csrf = _mac(secret, "durable-azure dashboard form")

    # --- plumbing ------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        pages: list[tuple[str, Handler, list[str]]] = [
            ("/", self.instances, ["GET"]),
            ("/instance", self.instance, ["GET"]),
            ("/value", self.value, ["GET"]),
            ("/health", self.health, ["GET"]),
            ("/action", self.action, ["GET", "POST"]),
            ("/batch", self.batch, ["GET", "POST"]),
        ]
        return [self._route(path, handler, methods) for path, handler, methods in pages]

    def _route(self, path: str, handler: Handler, methods: list[str]) -> Route:
        async def endpoint(request: Request) -> Response:
            response = await self._guarded(request, handler)
            response.headers.update(_HEADERS)
            return response

        return Route(path, endpoint, methods=methods)

    def _ui(self, request: Request) -> Ui:
        return Ui(
            prefix=str(request.scope.get("root_path", "")).rstrip("/"),
            hub=self.provider.names.hub,
            read_only=self.read_only,
            csrf=self._csrf,
        )

    def _signed_in(self, request: Request) -> bool:
        cookie = request.cookies.get(COOKIE_NAME, "")
        return hmac.compare_digest(cookie.encode("utf-8", "surrogateescape"), self._cookie.encode())

    async def _guarded(self, request: Request, handler: Handler) -> Response:
        ui = self._ui(request)
        if self.key is not None:
            given = request.query_params.get("code")
            if not (key_matches(request, self.key) or self._signed_in(request)):
                page = views.login_page(ui, request.url.path, wrong=given is not None)
                return HTMLResponse(page, status_code=401)
            if given is not None and request.method == "GET":
                return self._sign_in(request, ui)
        params: Params = list(request.query_params.multi_items())
        if request.method == "POST":
            if self.read_only:
                return _page(ui, 403, "Read-only", "This dashboard is read-only.")
            params = parse_qsl((await request.body()).decode("utf-8", "replace"), True)
            if not hmac.compare_digest(_get(params, "csrf").encode(), self._csrf.encode()):
                return _page(
                    ui, 403, "Forbidden", "The form is missing its token; reload the page."
                )
        try:
            return await handler(request, ui, params)
        except PageError as exc:
            return _page(ui, exc.status, "Cannot do that", exc.message)
        except InstanceNotFoundError as exc:
            return _page(ui, 404, "Not found", str(exc))
        except NotFoundError as exc:
            return _page(ui, 404, "Not found", f"not found: {exc}")
        except (InstanceStateError, InstanceAlreadyExistsError) as exc:
            return _page(ui, 409, "Cannot do that now", str(exc))
        except (ValueError, DurableAzureError) as exc:  # bad ids, JSON, filters
            return _page(ui, 400, "Bad request", str(exc))
        except Exception:
            logger.exception("dashboard %s %s failed", request.method, request.url.path)
            return _page(
                ui, 500, "Error", "Something went wrong; the details are in the server log."
            )

    def _sign_in(self, request: Request, ui: Ui) -> Response:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "code"]
        target = request.url.path + (f"?{urlencode(query)}" if query else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            self._cookie,
            path=ui.prefix or "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def _record(self, instance_id: str) -> InstanceRecord:
        if not instance_id:
            raise PageError(400, "no instance id given ('id')")
        validate_instance_id(instance_id)
        try:
            record = await self.provider.read_instance(instance_id)
        except NotFoundError:
            record = None
        if record is None:
            raise InstanceNotFoundError(f"no instance with id {instance_id!r}")
        return record

    # --- pages ---------------------------------------------------------------------------

    async def instances(self, request: Request, ui: Ui, params: Params) -> Response:
        parsed = parse_filter(params)
        page_size = _int(params, "size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        refresh = _int(params, "refresh", 0, 0, 3600) or None
        trail = [t for t in _get(params, "pages").split(".") if t]
        continuation = _decode_token(trail[-1]) if trail else None
        message = _get(params, "msg") or None
        try:
            counts = await data.count_by_status(self.provider, parsed.filter)
            records, token = await data.list_page(
                self.provider, parsed.filter, page_size=page_size, continuation=continuation
            )
        except NotFoundError:
            counts, records, token = {}, [], None
            message = "The task hub has no Instances table yet (no instance was ever started)."
        except ValueError as exc:
            if continuation is None or isinstance(exc, DurableAzureError):
                raise
            raise PageError(400, "the page link is not valid (bad 'pages' token)") from None
        view = views.ListView(
            filter_params=parsed.params,
            form=parsed.form,
            selected=[n for k, n in parsed.params if k == "status"],
            counts=counts,
            records=records,
            page_size=page_size,
            trail=trail,
            next_token=_encode_token(token) if token else None,
            refresh=refresh,
            message=message,
        )
        return HTMLResponse(views.list_page(ui, view))

    async def instance(self, request: Request, ui: Ui, params: Params) -> Response:
        wanted_page = _int(params, "page", 0, 0, 10**9)
        refresh = _int(params, "refresh", 0, 0, 3600) or None
        record = await self._record(_get(params, "id"))
        items = await data.read_history(self.provider, record.instance_id)
        pages = max(1, -(-len(items) // HISTORY_PAGE_SIZE))
        page = min(wanted_page, pages - 1)
        payloads = self.provider.payloads
        view = views.DetailView(
            record=record,
            input_offloaded=payloads.blob_name_from_url(record.input) is not None,
            output_offloaded=payloads.blob_name_from_url(record.output) is not None,
            input_text=record.input,
            output_text=record.output,
            custom_text=record.custom_status,
            failure=await self._failure(record.instance_id, items),
            parent=record.parent_instance_id or data.parent_of(items),
            children=data.children_of(items),
            items=items,
            spans=timeline.spans(items),
            page=page,
            page_size=HISTORY_PAGE_SIZE,
            now=datetime.now(UTC),
            refresh=refresh,
            message=_get(params, "msg") or None,
        )
        return HTMLResponse(views.detail_page(ui, view))

    async def _failure(
        self, instance_id: str, items: Sequence[data.HistoryItem]
    ) -> Mapping[str, Any] | None:
        for item in reversed(items):
            if isinstance(item.event, ExecutionCompleted):
                if "FailureDetails" in item.offloaded:
                    text = await data.history_value(
                        self.provider, instance_id, item.position, "FailureDetails"
                    )
                    return json.loads(text) if text else None
                failure: Mapping[str, Any] | None = event_fields(item.event).get("FailureDetails")
                return failure
        return None

    async def value(self, request: Request, ui: Ui, params: Params) -> Response:
        column = _get(params, "column")
        event = _get(params, "event")
        if event:
            allowed: tuple[str, ...] = (*views.PAYLOAD_MEMBERS, "FailureDetails")
            if column not in allowed:
                raise PageError(400, f"'column' must be one of {', '.join(allowed)}")
            instance_id = _get(params, "id")
            validate_instance_id(instance_id)
            position = _int(params, "event", 0, 0, 10**9)
            text = await data.history_value(self.provider, instance_id, position, column)
        else:
            if column not in data.INSTANCE_VALUE_COLUMNS:
                allowed_text = ", ".join(data.INSTANCE_VALUE_COLUMNS)
                raise PageError(400, f"'column' must be one of {allowed_text}")
            record = await self._record(_get(params, "id"))
            text = await data.instance_value(self.provider, record, column)
        return PlainTextResponse(views.pretty(text), headers={"Content-Security-Policy": "sandbox"})

    async def health(self, request: Request, ui: Ui, params: Params) -> Response:
        info = await hub_info(self.provider)
        try:
            poison = await self.client.list_poison()
        except NotFoundError:
            poison = []
        return HTMLResponse(views.health_page(ui, info, poison, _get(params, "msg") or None))

    # --- actions -------------------------------------------------------------------------

    def _operation(self, params: Params, known: Sequence[str]) -> str:
        if self.read_only:
            raise PageError(403, "This dashboard is read-only.")
        op = _get(params, "op")
        if op not in known:
            raise PageError(400, f"unknown operation {op!r} (known: {', '.join(known)})")
        return op

    async def action(self, request: Request, ui: Ui, params: Params) -> Response:
        op = self._operation(params, _SINGLE_OPS)
        if op.endswith("-poison"):
            name = _get(params, "name")
            if not name:
                raise PageError(400, "no poison record given ('name')")
            target = ("name", name)
            what = f"poison record <code>{views.esc(name)}</code>"
            back = ui.url("/health")
        else:
            record = await self._record(_get(params, "id"))
            target = ("id", record.instance_id)
            what = (
                f"instance <code>{views.esc(record.instance_id)}</code> "
                f"({views.status_badge(record.runtime_status)})"
            )
            back = ui.url("/instance", {"id": record.instance_id})
        if request.method == "GET" or _get(params, "confirm") != "1":
            page = views.confirm_page(
                ui, action="/action", op=op, what=what, fields=[target], cancel_url=back
            )
            return HTMLResponse(page)
        message, url = await self._perform(ui, op, target[1], params)
        logger.info("dashboard: %s %s", op, target[1], extra={"operation": op})
        separator = "&" if "?" in url else "?"
        return RedirectResponse(f"{url}{separator}{urlencode({'msg': message})}", status_code=303)

    async def _perform(self, ui: Ui, op: str, target: str, params: Params) -> tuple[str, str]:
        """Do ``op`` on one instance (or poison record); returns (message, where to go)."""
        if op == "requeue-poison":
            done = await self.client.requeue_poison(target)
            return f"{target}: {done}", ui.url("/health")
        if op == "drop-poison":
            await self.client.drop_poison(target)
            return f"dropped {target}", ui.url("/health")
        if op == "purge":
            result = await self.client.purge_instance_history(target)
            if result.instances_deleted == 0:
                raise InstanceNotFoundError(f"no instance with id {target!r}")
            return f"purged {target}", ui.url("/")
        if op == "restart":
            new_id = await self.client.restart(target, _get(params, "new_id") == "1")
            return f"restarted {target} as {new_id}", ui.url("/instance", {"id": new_id})
        await self._apply(op, target, params)
        return f"{op}: sent to {target}", ui.url("/instance", {"id": target})

    async def _apply(self, op: str, instance_id: str, params: Params) -> None:
        """The operations that send a message to the instance."""
        reason = _get(params, "reason") or None
        if op == "raise":
            event = _get(params, "event")
            if not event:
                raise PageError(400, "an event name is needed")
            await self.client.raise_event(instance_id, event, _json_or_none(_get(params, "data")))
        elif op == "terminate":
            await self.client.terminate(instance_id, reason)
        elif op == "suspend":
            await self.client.suspend(instance_id, reason)
        elif op == "resume":
            await self.client.resume(instance_id, reason)
        elif op == "rewind":
            await self.client.rewind(instance_id, reason)
        elif op == "restart":
            await self.client.restart(instance_id, _get(params, "new_id") == "1")
        elif op == "purge":
            result = await self.client.purge_instance_history(instance_id)
            if result.instances_deleted == 0:
                raise InstanceNotFoundError(f"no instance with id {instance_id!r}")
        else:
            raise PageError(400, f"unknown operation {op!r}")

    async def batch(self, request: Request, ui: Ui, params: Params) -> Response:
        op = self._operation(params, _BATCH_OPS)
        parsed = parse_filter(params)
        back = ui.url("/", parsed.params)
        if op == "raise" and request.method == "POST" and not _get(params, "event"):
            raise PageError(400, "an event name is needed")
        ids = await data.matching_ids(self.provider, parsed.filter)
        if request.method == "GET" or _get(params, "confirm") != "1":
            page = views.confirm_page(
                ui,
                action="/batch",
                op=op,
                what=f'<b id="batch-count">{len(ids)}</b> instance(s) matching the filter',
                fields=parsed.params,
                cancel_url=back,
                warning=(
                    "No filter is set: this applies to every instance in the task hub."
                    if parsed.filter.is_empty
                    else None
                ),
            )
            return HTMLResponse(page)
        succeeded, failures = await self._run_batch(op, ids, params)
        logger.info(
            "dashboard: batch %s over %d instances: %d succeeded, %d failed",
            op,
            len(ids),
            succeeded,
            len(failures),
            extra={"operation": op},
        )
        page = views.batch_result_page(
            ui, op=op, succeeded=succeeded, failures=failures, back_url=back
        )
        return HTMLResponse(page)

    async def _run_batch(
        self, op: str, ids: Sequence[str], params: Params
    ) -> tuple[int, list[tuple[str, str]]]:
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)
        failures: list[tuple[str, str]] = []

        async def one(instance_id: str) -> None:
            async with gate:
                try:
                    await self._apply(op, instance_id, params)
                except (DurableAzureError, ValueError, PageError) as exc:
                    failures.append((instance_id, str(exc)))
                except Exception as exc:
                    logger.exception("dashboard: batch %s of %s failed", op, instance_id)
                    failures.append((instance_id, f"unexpected {type(exc).__name__}"))

        await asyncio.gather(*(one(i) for i in ids))
        return len(ids) - len(failures), sorted(failures)


def _mac(secret: bytes, purpose: str) -> str:
    return hmac.new(secret, purpose.encode(), hashlib.sha256).hexdigest()


def _page(ui: Ui, status: int, title: str, message: str) -> HTMLResponse:
    return HTMLResponse(views.error_page(ui, title, message), status_code=status)


def create_dashboard_app(
    client: DurableClient, *, key: str | None = None, read_only: bool = False
) -> Starlette:
    """The dashboard as an ASGI app, to mount under a path of your choice.

    Args:
        client: the task hub's client (the caller opens and closes it).
        key: when set, pages need it (``?code=``, ``x-functions-key`` or the cookie a
            ``?code=`` visit sets), else 401.
        read_only: show no actions; action requests get 403.
    """
    return Starlette(routes=_Dashboard(client, key=key, read_only=read_only).routes())


def dashboard_routes(
    client: DurableClient,
    *,
    key: str | None = None,
    read_only: bool = False,
    path: str = DEFAULT_DASHBOARD_PATH,
) -> list[BaseRoute]:
    """Routes to add to the API's app: the dashboard mounted at ``path`` and a redirect
    from ``/`` to it."""
    path = "/" + path.strip("/")
    dashboard = create_dashboard_app(client, key=key, read_only=read_only)

    async def to_dashboard(request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{path}/{query}", status_code=307)

    return [Mount(path, app=dashboard), Route("/", to_dashboard, methods=["GET", "HEAD"])]
