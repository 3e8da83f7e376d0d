"""The dashboard's HTML, as plain functions returning strings.

Every value that comes from storage or from the request (instance ids, names, inputs,
outputs, reasons, tracebacks) goes through :func:`esc` (``html.escape``) before it is put
in the page; URLs are built with ``urlencode`` and then escaped too. Pages use no script
at all (auto-refresh is a ``<meta http-equiv="refresh">``), so the app can send a
Content-Security-Policy that forbids scripts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from durable_azure.dashboard import timeline
from durable_azure.dashboard.data import HistoryItem
from durable_azure.dashboard.markup import Ui, esc, fmt_seconds, fmt_time, hidden, status_badge
from durable_azure.engine.history import EventType, OrchestrationStatus
from durable_azure.storage.codec import event_fields

__all__ = ["PREVIEW_CHARS", "Ui", "esc", "status_badge"]

#: Longer values are shown cut, with a link to the whole value.
PREVIEW_CHARS = 400

#: History members holding a payload (shown as a preview, fetched in full on demand).
PAYLOAD_MEMBERS = ("Input", "Result", "Reason", "Details", "Data")

_HIDDEN_MEMBERS = {"EventType", "EventId", "IsPlayed", "Timestamp", "OrchestrationInstance"}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}
header .hub{margin-left:auto;opacity:.8}
main{padding:16px}
a{color:#0b5cad}
table{border-collapse:collapse;background:#fff;margin:8px 0;width:100%}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f3}
pre{white-space:pre-wrap;word-break:break-all;margin:0;max-height:30em;overflow:auto}
.box{background:#fff;border:1px solid #dde1e6;padding:8px 12px;margin:8px 0}
.status{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;color:#fff;
background:#6b7280}
.s-Running{background:#2563eb}.s-Completed{background:#15803d}.s-Failed{background:#b91c1c}
.s-Terminated{background:#9a3412}.s-Pending{background:#6b7280}.s-Suspended{background:#a16207}
.s-ContinuedAsNew{background:#0e7490}.s-Canceled{background:#57534e}
.counts a{margin-right:12px}
.flash{background:#ecfdf5;border:1px solid #15803d;padding:8px;margin:8px 0}
.error{background:#fef2f2;border:1px solid #b91c1c;padding:8px;margin:8px 0}
.ro{background:#a16207;padding:1px 8px;border-radius:9px;font-size:12px}
form.filters label{display:inline-block;margin:2px 10px 2px 0}
form.inline{display:inline}
.pager a{margin-right:12px}
.muted{color:#6b7280}
svg text{font:12px system-ui,sans-serif}
.bar-activity{fill:#2563eb}.bar-timer{fill:#a16207}.bar-sub-orchestration{fill:#7c3aed}
.bar-failed{fill:#b91c1c}.bar-running{opacity:.45}
"""


def layout(ui: Ui, title: str, body: str, *, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    mode = ' <span class="ro">read-only</span>' if ui.read_only else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}<title>{esc(title)} - durable-azure</title><style>{_CSS}</style></head><body>"
        f"<header>{ui.link('/', 'Instances')}{ui.link('/health', 'Task hub health')}"
        f'<span class="hub">task hub <b>{esc(ui.hub)}</b>{mode}</span></header>'
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )


def message_box(text: str | None, *, error: bool = False) -> str:
    if not text:
        return ""
    return f'<div class="{"error" if error else "flash"}" role="status">{esc(text)}</div>'


def error_page(ui: Ui, title: str, message: str) -> str:
    body = message_box(message, error=True) + f"<p>{ui.link('/', 'Back to the instances')}</p>"
    return layout(ui, title, body)


def login_page(ui: Ui, action: str, *, wrong: bool) -> str:
    note = message_box("That key is not right." if wrong else None, error=True)
    body = (
        f"{note}<p>This dashboard needs the API key (the one given to <code>serve --key</code> "
        "or <code>$DURABLE_HTTP_KEY</code>).</p>"
        f'<form method="get" action="{esc(action)}"><label>Key '
        '<input type="password" name="code" autocomplete="current-password" required></label> '
        "<button>Open</button></form>"
    )
    return layout(ui, "Key required", body)


# --- values --------------------------------------------------------------------------------


def pretty(text: str | None, *, indent: int | None = 2) -> str:
    """JSON text re-indented for reading (one line with ``indent=None``); other text as
    it is."""
    if text is None:
        return "null"
    try:
        return json.dumps(json.loads(text), indent=indent, ensure_ascii=False)
    except ValueError:
        return text


def preview(
    text: str | None, full_url: str, *, offloaded: bool = False, compact: bool = False
) -> str:
    """A value cut at :data:`PREVIEW_CHARS`, with a link to all of it when cut or when it
    lives in a blob (not fetched for the page). ``compact`` puts JSON on one line."""
    if offloaded:
        return (
            '<span class="muted">large value, stored in a blob</span> '
            f'<a href="{esc(full_url)}" target="_blank" rel="noopener">load it</a>'
        )
    shown = pretty(text, indent=None if compact else 2)
    if len(shown) <= PREVIEW_CHARS:
        return f"<pre>{esc(shown)}</pre>"
    return (
        f"<pre>{esc(shown[:PREVIEW_CHARS])}…</pre>"
        f'<a href="{esc(full_url)}" target="_blank" rel="noopener">full value '
        f"({len(shown):,} characters)</a>"
    )


def failure_block(failure: Mapping[str, Any] | None, *, expanded: bool = True) -> str:
    """A failure (``FailureDetails`` as a dict): type, message, traceback (folded unless
    ``expanded``), inner ones."""
    if not failure:
        return ""
    trace = failure.get("StackTrace") or ""
    parts = [
        f'<div class="failure"><b class="error-type">{esc(failure.get("ErrorType"))}</b>: '
        f"{esc(failure.get('ErrorMessage'))}"
    ]
    if trace:
        state = " open" if expanded else ""
        parts.append(
            f"<details{state}><summary>traceback</summary><pre>{esc(trace)}</pre></details>"
        )
    inner = failure.get("InnerFailure")
    if inner:
        parts.append(f"<div>caused by {failure_block(inner, expanded=expanded)}</div>")
    parts.append("</div>")
    return "".join(parts)


# --- the instance list -----------------------------------------------------------------------


@dataclass(frozen=True)
class ListView:
    """What the list page shows. ``filter_params`` are the query parameters of the current
    filter (kept in every link), ``form`` the raw values to put back in the form."""

    filter_params: list[tuple[str, str]]
    form: Mapping[str, str]
    selected: Sequence[str]
    counts: Mapping[str, int]
    records: Sequence[Any]
    page_size: int
    trail: Sequence[str]
    next_token: str | None
    refresh: int | None
    message: str | None


_REFRESH_CHOICES = (0, 5, 10, 30, 60)
_PAGE_SIZES = (20, 50, 100, 200, 500)
_BATCH_OPS = ("terminate", "suspend", "resume", "rewind", "restart", "purge", "raise")


def _select(name: str, choices: Iterable[tuple[object, str]], current: object) -> str:
    options = "".join(
        f'<option value="{esc(v)}"{" selected" if str(v) == str(current) else ""}>{esc(t)}</option>'
        for v, t in choices
    )
    return f'<select name="{esc(name)}">{options}</select>'


def _text_input(name: str, label: str, value: str, placeholder: str = "") -> str:
    return (
        f'<label>{esc(label)} <input type="text" name="{esc(name)}" value="{esc(value)}" '
        f'placeholder="{esc(placeholder)}"></label>'
    )


def list_page(ui: Ui, view: ListView) -> str:
    when = "2026-11-24T18:00:00Z"
    boxes = "".join(
        f'<label><input type="checkbox" name="status" value="{esc(s)}"'
        f"{' checked' if s in view.selected else ''}> {esc(s)} ({view.counts.get(s, 0)})</label>"
        for s in OrchestrationStatus.__members__
    )
    form = (
        f'<form class="filters box" method="get" action="{esc(ui.url("/"))}">'
        f"<div>{boxes}</div><div>"
        + _text_input("name", "Orchestration", view.form.get("name", ""), "exact name")
        + _text_input("prefix", "Instance id prefix", view.form.get("prefix", ""))
        + "</div><div>"
        + _text_input("created_from", "Created from", view.form.get("created_from", ""), when)
        + _text_input("created_to", "to", view.form.get("created_to", ""), when)
        + _text_input("updated_from", "Updated from", view.form.get("updated_from", ""), when)
        + _text_input("updated_to", "to", view.form.get("updated_to", ""), when)
        + "</div><div><label>Page size "
        + _select("size", ((n, str(n)) for n in _PAGE_SIZES), view.page_size)
        + "</label><label>Auto-refresh "
        + _select(
            "refresh",
            ((n, f"every {n} s" if n else "off") for n in _REFRESH_CHOICES),
            view.refresh or 0,
        )
        + "</label> <button>Apply</button> "
        + ui.link("/", "Clear")
        + "</div></form>"
    )
    others = [(k, v) for k, v in view.filter_params if k != "status"]
    total = sum(view.counts.values())
    matching = sum(view.counts.get(s, 0) for s in view.selected) if view.selected else total
    counts = (
        '<div class="counts box">'
        + ui.link("/", f"All {total}", others)
        + "".join(
            ui.link("/", f"{name} {n}", [*others, ("status", name)], class_=f"count-{name}")
            for name, n in view.counts.items()
            if n
        )
        + f'<span class="muted">matching the filter: <b id="matching">{matching}</b></span></div>'
    )
    rows = "".join(
        f"<tr><td>{ui.instance_link(r.instance_id)}</td><td>{esc(r.name)}</td>"
        f"<td>{status_badge(r.runtime_status)}</td><td>{fmt_time(r.created_time)}</td>"
        f"<td>{fmt_time(r.last_updated_time)}</td></tr>"
        for r in view.records
    )
    table = (
        '<table id="instances"><thead><tr><th>Instance id</th><th>Orchestration</th>'
        "<th>Status</th><th>Created (UTC)</th><th>Last updated (UTC)</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if view.records
        else '<p class="box muted" id="instances">No instance matches.</p>'
    )
    keep = [*view.filter_params, ("size", str(view.page_size))]
    if view.refresh:
        keep.append(("refresh", str(view.refresh)))
    pager = ['<div class="pager">']
    if view.trail:
        pager.append(ui.link("/", "First page", keep))
        pager.append(ui.link("/", "Previous page", [*keep, ("pages", ".".join(view.trail[:-1]))]))
    if view.next_token:
        trail = ".".join([*view.trail, view.next_token])
        pager.append(ui.link("/", "Next page", [*keep, ("pages", trail)], rel="next"))
    pager.append(f'<span class="muted">page {len(view.trail) + 1}</span></div>')
    batch = "" if ui.read_only else _batch_form(ui, view.filter_params)
    return layout(
        ui,
        "Instances",
        message_box(view.message) + form + counts + table + "".join(pager) + batch,
        refresh=view.refresh,
    )


def _batch_form(ui: Ui, filter_params: list[tuple[str, str]]) -> str:
    fields = "".join(hidden(k, v) for k, v in filter_params)
    return (
        f'<form class="box" method="get" action="{esc(ui.url("/batch"))}" id="batch">'
        f"<b>Batch action over every instance matching the filter:</b> {fields}"
        + _select("op", ((op, op) for op in _BATCH_OPS), "terminate")
        + " <button>Review…</button> "
        '<span class="muted">(the next page shows how many instances and asks to confirm)</span>'
        "</form>"
    )


# --- the instance detail -----------------------------------------------------------------------


@dataclass(frozen=True)
class DetailView:
    record: Any
    input_offloaded: bool
    output_offloaded: bool
    input_text: str | None
    output_text: str | None
    custom_text: str | None
    failure: Mapping[str, Any] | None
    parent: str | None
    children: Sequence[tuple[str, str]]
    items: Sequence[HistoryItem]
    spans: Sequence[timeline.Span]
    page: int
    page_size: int
    now: datetime
    refresh: int | None
    message: str | None


#: Operations on one instance, and the statuses each applies to (None: any).
SINGLE_OPS: dict[str, frozenset[OrchestrationStatus] | None] = {
    "raise": frozenset(
        {
            OrchestrationStatus.Pending,
            OrchestrationStatus.Running,
            OrchestrationStatus.Suspended,
            OrchestrationStatus.ContinuedAsNew,
        }
    ),
    "terminate": frozenset(
        {
            OrchestrationStatus.Pending,
            OrchestrationStatus.Running,
            OrchestrationStatus.Suspended,
            OrchestrationStatus.ContinuedAsNew,
        }
    ),
    "suspend": frozenset({OrchestrationStatus.Running, OrchestrationStatus.Pending}),
    "resume": frozenset({OrchestrationStatus.Suspended}),
    "rewind": frozenset({OrchestrationStatus.Failed}),
    "restart": None,
    "purge": frozenset(
        {
            OrchestrationStatus.Completed,
            OrchestrationStatus.Failed,
            OrchestrationStatus.Terminated,
            OrchestrationStatus.Canceled,
        }
    ),
}


def detail_page(ui: Ui, view: DetailView) -> str:
    record = view.record
    iid = record.instance_id
    actions = ""
    if not ui.read_only:
        allowed = [
            op
            for op, statuses in SINGLE_OPS.items()
            if statuses is None or record.runtime_status in statuses
        ]
        actions = (
            '<div class="box" id="actions"><b>Actions:</b> '
            + " ".join(
                ui.link("/action", op.capitalize(), {"op": op, "id": iid}, id_=f"action-{op}")
                for op in allowed
            )
            + "</div>"
        )
    props = [
        ("Instance id", f'<code id="instance-id">{esc(iid)}</code>'),
        ("Orchestration", esc(record.name)),
        ("Status", f'<span id="runtime-status">{status_badge(record.runtime_status)}</span>'),
        ("Execution id", esc(record.execution_id)),
        ("Created (UTC)", fmt_time(record.created_time)),
        ("Last updated (UTC)", fmt_time(record.last_updated_time)),
        ("Completed (UTC)", fmt_time(record.completed_time)),
        ("Parent", ui.instance_link(view.parent) if view.parent else "-"),
        (
            "Children",
            ", ".join(
                ui.instance_link(child) + f' <span class="muted">({esc(name)})</span>'
                for child, name in view.children
            )
            or "-",
        ),
    ]
    if record.scheduled_start_time is not None:
        props.append(("Scheduled start (UTC)", fmt_time(record.scheduled_start_time)))
    body = [
        message_box(view.message),
        actions,
        '<table id="properties">',
        *(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in props),
        "</table>",
        '<div class="box"><h3>Input</h3>',
        preview(
            view.input_text,
            ui.url("/value", {"id": iid, "column": "Input"}),
            offloaded=view.input_offloaded,
        ),
        "<h3>Output</h3>",
        preview(
            view.output_text,
            ui.url("/value", {"id": iid, "column": "Output"}),
            offloaded=view.output_offloaded,
        ),
        "<h3>Custom status</h3>",
        preview(view.custom_text, ui.url("/value", {"id": iid, "column": "CustomStatus"})),
        "</div>",
    ]
    if view.failure:
        body.append('<div class="box error" id="failure"><h3>Failure</h3>')
        body.append(failure_block(view.failure) + "</div>")
    start = view.page * view.page_size
    page_items = view.items[start : start + view.page_size]
    body.append("<h2>Timeline</h2>")
    body.append(timeline.svg(ui, view.spans, view.now, page_items))
    body.append(f"<h2>History ({len(view.items):,} events)</h2>")
    body.append(_history_pager(ui, iid, view.page, view.page_size, len(view.items)))
    body.append(history_table(ui, iid, page_items))
    body.append(_history_pager(ui, iid, view.page, view.page_size, len(view.items)))
    return layout(ui, f"Instance {iid}", "".join(body), refresh=view.refresh)


def _history_pager(ui: Ui, instance_id: str, page: int, page_size: int, total: int) -> str:
    pages = max(1, -(-total // page_size))
    links = []
    for label, target in (
        ("First", 0),
        ("Previous", page - 1),
        ("Next", page + 1),
        ("Last", pages - 1),
    ):
        if 0 <= target < pages and target != page:
            links.append(ui.link("/instance", label, {"id": instance_id, "page": target}))
    shown = f"events {page * page_size + 1}-{min(total, (page + 1) * page_size)}" if total else ""
    return (
        f'<div class="pager">{" ".join(links)} <span class="muted">page {page + 1} of '
        f"{pages}{'; ' + shown if shown else ''}</span></div>"
    )


def history_table(ui: Ui, instance_id: str, items: Sequence[HistoryItem]) -> str:
    names = {}
    rows = []
    for item in items:
        fields = event_fields(item.event)
        event_type = fields["EventType"]
        if event_type is EventType.TaskScheduled:
            names[item.event.event_id] = fields.get("Name")
        cells = []
        for member, value in fields.items():
            if member in _HIDDEN_MEMBERS or (value is None and member not in item.offloaded):
                continue
            cells.append(
                f"<div><b>{esc(member)}</b>: "
                f"{_member(ui, instance_id, item, member, value, names)}</div>"
            )
        rows.append(
            f'<tr id="event-{item.position}"><td>{item.position}</td>'
            f"<td>{fmt_time(item.event.timestamp, millis=True)}</td>"
            f"<td>{esc(event_type.name)}</td><td>{item.event.event_id}</td>"
            f"<td>{''.join(cells)}</td></tr>"
        )
    return (
        '<table id="history"><thead><tr><th>#</th><th>Time (UTC)</th><th>Event</th>'
        f"<th>EventId</th><th>Details</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _member(
    ui: Ui,
    instance_id: str,
    item: HistoryItem,
    member: str,
    value: Any,
    names: Mapping[int, Any],
) -> str:
    if member in PAYLOAD_MEMBERS:
        url = ui.url("/value", {"id": instance_id, "event": item.position, "column": member})
        text = None if value is None else str(value)
        return preview(text, url, offloaded=member in item.offloaded, compact=True)
    if member == "FailureDetails":
        return failure_block(value, expanded=False)
    if member == "ParentInstance":
        parent = (value.get("OrchestrationInstance") or {}).get("InstanceId")
        return ui.instance_link(parent) if parent else esc(json.dumps(value))
    if member == "InstanceId":
        return ui.instance_link(str(value))
    if member in ("TaskScheduledId", "TimerId"):
        name = names.get(value) if member == "TaskScheduledId" else None
        return esc(value) + (f' <span class="muted">({esc(name)})</span>' if name else "")
    if isinstance(value, datetime):
        return fmt_time(value, millis=True)
    if isinstance(value, (dict, list)):
        return f"<code>{esc(json.dumps(value))}</code>"
    return esc(getattr(value, "name", value))


# --- confirmations and results -------------------------------------------------------------------


_OP_VERBS = {
    "raise": "raise an event to",
    "terminate": "terminate",
    "suspend": "suspend",
    "resume": "resume",
    "rewind": "rewind",
    "restart": "restart",
    "purge": "purge (delete for good)",
    "requeue-poison": "requeue",
    "drop-poison": "drop (delete for good)",
}


def op_fields(op: str) -> str:
    """The inputs an operation takes on its confirmation page."""
    if op == "raise":
        return (
            '<div><label>Event name <input type="text" name="event" required></label></div>'
            "<div><label>Event data (JSON, empty for null)<br>"
            '<textarea name="data" rows="4" cols="60"></textarea></label></div>'
        )
    if op in ("terminate", "suspend", "resume", "rewind"):
        return '<div><label>Reason <input type="text" name="reason" size="60"></label></div>'
    if op == "restart":
        return (
            '<div><label><input type="checkbox" name="new_id" value="1" checked> '
            "start it under a new instance id</label></div>"
        )
    return ""


def confirm_page(
    ui: Ui,
    *,
    action: str,
    op: str,
    what: str,
    fields: Sequence[tuple[str, str]],
    cancel_url: str,
    warning: str | None = None,
) -> str:
    """A page that repeats the request as a form with ``confirm=1``."""
    body = (
        f"<p>You are about to <b>{esc(_OP_VERBS.get(op, op))}</b> {what}.</p>"
        + message_box(warning, error=True)
        + f'<form method="post" action="{esc(ui.url(action))}" class="box" id="confirm-form">'
        + ui.csrf_field()
        + hidden("op", op)
        + hidden("confirm", "1")
        + "".join(hidden(k, v) for k, v in fields)
        + op_fields(op)
        + f'<button id="confirm">Confirm: {esc(op)}</button> '
        f'<a href="{esc(cancel_url)}">Cancel</a></form>'
    )
    return layout(ui, f"Confirm {op}", body)


def batch_result_page(
    ui: Ui,
    *,
    op: str,
    succeeded: int,
    failures: Sequence[tuple[str, str]],
    back_url: str,
    shown_failures: int = 100,
) -> str:
    rows = "".join(
        f"<tr><td>{ui.instance_link(iid)}</td><td>{esc(err)}</td></tr>"
        for iid, err in failures[:shown_failures]
    )
    more = (
        f'<p class="muted">and {len(failures) - shown_failures} more failures.</p>'
        if len(failures) > shown_failures
        else ""
    )
    table = (
        f'<table id="failures"><tr><th>Instance</th><th>Error</th></tr>{rows}</table>{more}'
        if failures
        else ""
    )
    body = (
        f'<p id="batch-result"><b>{esc(op)}</b>: <b id="succeeded">{succeeded}</b> succeeded, '
        f'<b id="failed">{len(failures)}</b> failed.</p>'
        f'{table}<p><a href="{esc(back_url)}">Back to the instances</a></p>'
    )
    return layout(ui, f"Batch {op}", body)


# --- health -----------------------------------------------------------------------------------


def health_page(ui: Ui, info: Any, poison: Sequence[Any], message: str | None) -> str:
    queues = "".join(
        f"<tr><td>{esc(q.name)}</td><td>{'yes' if q.exists else 'missing'}</td>"
        f"<td>{q.approximate_count}</td>"
        f"<td>{'-' if q.oldest_age_seconds is None else esc(fmt_seconds(q.oldest_age_seconds))}"
        f"</td><td>{fmt_time(q.oldest_inserted_on) or '-'}</td></tr>"
        for q in info.queues
    )
    body = [
        message_box(message),
        f'<p class="muted">read at {fmt_time(info.checked_at)} UTC; '
        f"{info.partition_count} partitions configured.</p>",
        "<h2>Queues</h2>",
        '<table id="queues"><tr><th>Queue</th><th>Exists</th><th>Messages (approx.)</th>'
        f"<th>Oldest visible message age</th><th>Oldest inserted (UTC)</th></tr>{queues}</table>",
        "<h2>Partitions</h2>",
        _partitions(info),
        "<h2>Instances</h2>",
        _instance_counts(ui, info.instance_counts),
        f"<h2>Poison messages ({len(poison)})</h2>",
        _poison(ui, poison),
    ]
    return layout(ui, "Task hub health", "".join(body))


def _partitions(info: Any) -> str:
    if info.partitions is None:
        return '<p class="muted" id="partitions">No partition table.</p>'
    rows = "".join(
        f"<tr><td>{esc(p.queue)}</td><td>{esc(p.current_owner or '-')}</td>"
        f"<td>{esc(p.next_owner or '-')}</td><td>{fmt_time(p.owned_since)}</td>"
        f"<td>{fmt_time(p.last_renewal)}</td><td>{fmt_time(p.expires_at)}</td>"
        f"<td>{'live' if p.live(info.checked_at) else '<b>no live owner</b>'}"
        f"{', draining' if p.is_draining else ''}</td></tr>"
        for p in info.partitions
    )
    return (
        '<table id="partitions"><tr><th>Control queue</th><th>Owner</th><th>Next owner</th>'
        "<th>Owned since</th><th>Last renewal</th><th>Lease expires (UTC)</th><th>State</th>"
        f"</tr>{rows}</table>"
    )


def _instance_counts(ui: Ui, counts: Mapping[str, int] | None) -> str:
    if counts is None:
        return '<p class="muted">The hub has no Instances table yet.</p>'
    cells = "".join(
        f"<tr><td>{ui.link('/', name, {'status': name})}</td><td>{n}</td></tr>"
        for name, n in counts.items()
    )
    return f'<table id="instance-counts"><tr><th>Status</th><th>Instances</th></tr>{cells}</table>'


def _poison(ui: Ui, records: Sequence[Any]) -> str:
    if not records:
        return '<p class="muted" id="poison">None.</p>'
    rows = []
    for r in records:
        actions = (
            ""
            if ui.read_only
            else ui.link("/action", "Requeue", {"op": "requeue-poison", "name": r.name})
            + " "
            + ui.link("/action", "Drop", {"op": "drop-poison", "name": r.name})
        )
        instance = ui.instance_link(r.instance_id) if r.instance_id else "-"
        body = r.body if len(r.body) <= PREVIEW_CHARS else r.body[:PREVIEW_CHARS] + "…"
        rows.append(
            f"<tr><td>{esc(r.name)}</td><td>{esc(r.queue)}</td><td>{instance}</td>"
            f"<td>{r.dequeue_count}</td><td>{esc(r.set_aside_at)}</td><td>{esc(r.reason)}</td>"
            f"<td><pre>{esc(body)}</pre></td><td>{actions}</td></tr>"
        )
    return (
        '<table id="poison"><tr><th>Record</th><th>Queue</th><th>Instance</th>'
        "<th>Deliveries</th><th>Set aside at</th><th>Reason</th><th>Message</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
    )
