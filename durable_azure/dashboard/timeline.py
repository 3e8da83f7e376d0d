"""The timeline (Gantt chart) of an instance: activities, timers and sub-orchestrations as
spans (:func:`spans`), drawn as inline SVG (:func:`svg`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from durable_azure.dashboard.data import HistoryItem
from durable_azure.dashboard.markup import Ui, esc, fmt_seconds, fmt_time
from durable_azure.engine.history import (
    HistoryEvent,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)

__all__ = ["MAX_TIMELINE_SPANS", "Span", "spans", "svg"]

#: The chart draws at most this many spans (those of the history page shown).
MAX_TIMELINE_SPANS = 400


# --- spans ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One bar of the timeline.

    Attributes:
        kind: ``activity``, ``timer`` or ``sub-orchestration``.
        label: the activity or orchestrator name, or the timer's due time.
        start: when it was scheduled (the scheduling event's time).
        end: when its completion was recorded; ``None`` while it runs (for a timer not
            yet fired: ``due`` is when it will).
        outcome: ``completed``, ``failed`` or ``running``.
        position: the history position of the scheduling event.
        instance_id: the child's id, for sub-orchestrations.
        due: a timer's fire time.
    """

    kind: str
    label: str
    start: datetime
    end: datetime | None
    outcome: str
    position: int
    instance_id: str | None = None
    due: datetime | None = None


def spans(items: Sequence[HistoryItem]) -> list[Span]:
    """Spans for the activities, timers and sub-orchestrations of a history, in the order
    they were scheduled (a rewound task scheduled again is a new span)."""
    spans: list[Span] = []
    open_spans: dict[tuple[str, int], int] = {}  # (kind, task id) -> index in spans
    for item in items:
        span = _scheduled(item)
        if span is not None:
            open_spans[(span.kind, item.event.event_id)] = len(spans)
            spans.append(span)
            continue
        ended = _completion(item.event)
        if ended is not None and ended[0] in open_spans:
            index = open_spans.pop(ended[0])
            spans[index] = replace(spans[index], end=item.event.timestamp, outcome=ended[1])
    return spans


def _scheduled(item: HistoryItem) -> Span | None:
    event = item.event
    if isinstance(event, TaskScheduled):
        return Span("activity", event.name, event.timestamp, None, "running", item.position)
    if isinstance(event, TimerCreated):
        label = f"timer until {event.fire_at:%Y-%m-%d %H:%M:%S}"
        return Span(
            "timer", label, event.timestamp, None, "running", item.position, due=event.fire_at
        )
    if isinstance(event, SubOrchestrationInstanceCreated):
        return Span(
            "sub-orchestration",
            event.name,
            event.timestamp,
            None,
            "running",
            item.position,
            instance_id=event.instance_id,
        )
    return None


def _completion(event: HistoryEvent) -> tuple[tuple[str, int], str] | None:
    if isinstance(event, TaskCompleted):
        return ("activity", event.task_scheduled_id), "completed"
    if isinstance(event, TaskFailed):
        return ("activity", event.task_scheduled_id), "failed"
    if isinstance(event, TimerFired):
        return ("timer", event.timer_id), "completed"
    if isinstance(event, SubOrchestrationInstanceCompleted):
        return ("sub-orchestration", event.task_scheduled_id), "completed"
    if isinstance(event, SubOrchestrationInstanceFailed):
        return ("sub-orchestration", event.task_scheduled_id), "failed"
    return None


# --- the chart --------------------------------------------------------------------------------


def svg(ui: Ui, spans: Sequence[Span], now: datetime, page_items: Sequence[HistoryItem]) -> str:
    """A Gantt chart of ``spans`` as inline SVG (bars scaled to the time they cover).

    With more than :data:`MAX_TIMELINE_SPANS` spans, only those scheduled on the history
    page shown are drawn (a note says so).
    """
    note = ""
    if len(spans) > MAX_TIMELINE_SPANS:
        positions = {i.position for i in page_items}
        shown = [s for s in spans if s.position in positions][:MAX_TIMELINE_SPANS]
        note = (
            f'<p class="muted">{len(spans):,} spans in all; showing the {len(shown)} '
            "scheduled on this history page.</p>"
        )
        spans = shown
    if not spans:
        return (
            note + '<p class="muted" id="timeline">No activities, timers or sub-orchestrations.</p>'
        )
    ends = [_span_end(s, now) for s in spans]
    t0 = min(s.start for s in spans)
    t1 = max(ends)
    total = max((t1 - t0).total_seconds(), 0.001)
    label_w, chart_w, row_h, top = 280, 700, 20, 24
    margin = 50  # room for the last tick's label
    height = top + row_h * len(spans) + 4
    parts = [
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" '
        f'width="{label_w + chart_w + margin}" height="{height}" role="img" '
        'aria-label="timeline">'
    ]
    for tick in range(6):
        x = label_w + chart_w * tick / 5
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height}" stroke="#dde1e6"/>'
            f'<text x="{x:.1f}" y="{top - 10}" text-anchor="middle">'
            f"+{esc(fmt_seconds(total * tick / 5))}</text>"
        )
    for row, (span, end) in enumerate(zip(spans, ends, strict=True)):
        y = top + row * row_h
        x = label_w + chart_w * (span.start - t0).total_seconds() / total
        width = max(2.0, chart_w * (end - span.start).total_seconds() / total)
        classes = f"bar bar-{span.kind}"
        if span.outcome == "failed":
            classes += " bar-failed"
        elif span.end is None:
            classes += " bar-running"
        took = (end - span.start).total_seconds()
        title = (
            f"{span.kind} {span.label}: {span.outcome}"
            + ("" if span.end is None else f" after {fmt_seconds(took)}")
            + f" (scheduled {fmt_time(span.start, millis=True)}, history #{span.position})"
        )
        label = span.label if len(span.label) <= 36 else span.label[:35] + "…"
        text = f'<text x="4" y="{y + 14}">{esc(_KIND_MARK[span.kind])} {esc(label)}</text>'
        if span.instance_id:
            href = esc(ui.url("/instance", {"id": span.instance_id}))
            text = f'<a href="{href}">{text}</a>'
        parts.append(
            f'<g class="span" data-kind="{esc(span.kind)}" data-outcome="{esc(span.outcome)}">'
            f"<title>{esc(title)}</title>{text}"
            f'<rect class="{classes}" x="{x:.1f}" y="{y + 3}" width="{width:.1f}" '
            f'height="{row_h - 6}" rx="2"/></g>'
        )
    parts.append("</svg>")
    legend = (
        '<p class="muted">▮ activity (blue) · ◷ timer (amber) · ◆ sub-orchestration (purple); '
        "red: failed; faded: not finished. Hover a bar for its times.</p>"
    )
    return note + '<div class="box">' + "".join(parts) + legend + "</div>"


_KIND_MARK = {"activity": "▮", "timer": "◷", "sub-orchestration": "◆"}


def _span_end(span: Span, now: datetime) -> datetime:
    if span.end is not None:
        return span.end
    if span.due is not None and span.due > now:
        return span.due
    return max(now, span.start + timedelta(milliseconds=1))
