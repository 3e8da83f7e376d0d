"""What the command line prints for people: aligned tables and progress on stderr.

Pure formatting (no storage access), so it is unit-tested without Azurite. Scripts use
the commands' JSON output instead (``--format json``), which does not change.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

#: Longest DETAILS cell of a history table; longer values end in "...".
DETAILS_WIDTH = 80

#: Longest payload shown in a status summary line.
VALUE_WIDTH = 200


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Left-aligned columns two spaces apart, the header first; no trailing spaces."""
    cells = [[str(v) for v in header], *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("\n", " ")


def shorten(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with a trailing "..."."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def compact(value: Any) -> str:
    """A payload as compact JSON (text that is not JSON-serialisable as ``str()``)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def time_cell(iso: str | None, *, fraction: bool = False) -> str:
    """An ISO-8601 time (``2026-11-24T17:07:55.1234560Z``) as UTC ``2026-11-24 17:07:55``,
    with milliseconds (``.123``) when ``fraction``; "" for None, text that is not a time
    as it is."""
    if not iso:
        return ""
    try:
        value = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    value = value.astimezone(UTC) if value.tzinfo else value
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{value.microsecond // 1000:03d}" if fraction else text


# --- list --------------------------------------------------------------------------------

LIST_HEADER = ("INSTANCE ID", "NAME", "STATUS", "CREATED (UTC)", "UPDATED (UTC)")


def instances_table(statuses: Iterable[Mapping[str, Any]]) -> list[str]:
    """``durable-azure list``: one row per instance (from their ``to_json()`` form)."""
    return table(
        LIST_HEADER,
        (
            (
                s["instanceId"],
                s["name"],
                s["runtimeStatus"],
                time_cell(s.get("createdTime")),
                time_cell(s.get("lastUpdatedTime")),
            )
            for s in statuses
        ),
    )


# --- status ------------------------------------------------------------------------------

HISTORY_HEADER = ("SEQ", "TIMESTAMP (UTC)", "EVENT TYPE", "NAME", "DETAILS")


def status_lines(status: Mapping[str, Any]) -> list[str]:
    """``durable-azure status``: the instance as ``label value`` lines, then, if the
    status has ``historyEvents``, a blank line and its history table."""
    fields: list[tuple[str, Any]] = [
        ("instance", status["instanceId"]),
        ("name", status["name"]),
        ("status", status["runtimeStatus"]),
        ("created (UTC)", time_cell(status.get("createdTime"))),
        ("updated (UTC)", time_cell(status.get("lastUpdatedTime"))),
        ("input", shorten(compact(status.get("input")), VALUE_WIDTH)),
        ("output", shorten(compact(status.get("output")), VALUE_WIDTH)),
    ]
    if status.get("customStatus") is not None:
        fields.append(("custom", shorten(compact(status["customStatus"]), VALUE_WIDTH)))
    if status.get("parentInstanceId"):
        fields.append(("parent", status["parentInstanceId"]))
    failure = status.get("failureDetails")
    if failure:
        message = f"{failure.get('errorType')}: {failure.get('errorMessage')}"
        fields.append(("failure", shorten(message, VALUE_WIDTH)))
    width = max(len(label) for label, _ in fields)
    lines = [f"{label:<{width}}  {value}".rstrip() for label, value in fields]
    history = status.get("historyEvents")
    if history is not None:
        lines += ["", *history_table(history)]
    return lines


def history_table(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """A history (``historyEvents`` items) as SEQ, TIMESTAMP, EVENT TYPE, NAME, DETAILS."""
    return table(
        HISTORY_HEADER,
        (
            (
                seq,
                time_cell(e.get("Timestamp"), fraction=True),
                e.get("EventType", ""),
                e.get("Name") or e.get("FunctionName") or "",
                shorten(event_details(e), DETAILS_WIDTH),
            )
            for seq, e in enumerate(events)
        ),
    )


#: Members shown in DETAILS, in this order, as ``label=value``.
_DETAIL_MEMBERS = (
    ("OrchestrationStatus", "status"),
    ("Input", "input"),
    ("Result", "result"),
    ("Reason", "reason"),
    ("FireAt", "fire at"),
    ("InstanceId", "instance"),
)


def event_details(event: Mapping[str, Any]) -> str:
    """The parts of one history event worth a glance: its task id (``#3``), status,
    input or result, failure reason, timer due time, sub-orchestration instance."""
    parts: list[str] = []
    task_id = event.get("TaskScheduledId", event.get("TimerId"))
    if task_id is None and event.get("EventId", -1) >= 0:
        task_id = event["EventId"]
    if task_id is not None and task_id >= 0:
        parts.append(f"#{task_id}")
    for member, label in _DETAIL_MEMBERS:
        value = event.get(member)
        if value is None:
            continue
        if member == "FireAt":
            value = time_cell(value, fraction=True)
        elif member in ("Input", "Result"):
            value = compact(value)
        parts.append(f"{label}={value}")
    failure = event.get("FailureDetails")
    if failure and "Reason" not in event:
        parts.append(f"failure={failure.get('ErrorType')}: {failure.get('ErrorMessage')}")
    return " ".join(parts)


# --- progress ----------------------------------------------------------------------------


class Progress:
    """Progress of a long operation on a stream (stderr by default).

    On a terminal, one line redrawn in place (``\\r``), at most 10 times a second: a bar
    when the total is known, else the count. Elsewhere (a log file, CI), a plain line at
    most every ``interval`` seconds, so the output stays readable. :meth:`close` prints
    the final state and ends the line.
    """

    BAR_WIDTH = 30

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: str = "",
        stream: TextIO | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.1 if self.tty else interval
        self.clock = clock
        self.started = clock()
        self.done = 0
        self._shown_at: float | None = None
        self._shown: int | None = None

    def update(self, done: int, total: int | None = None) -> None:
        """Record ``done`` items so far (of ``total``, if given now); shown if enough time
        passed since it was last shown."""
        self.done = done
        if total is not None:
            self.total = total
        now = self.clock()
        if self._shown_at is None or now - self._shown_at >= self.interval:
            self._show(now)

    def close(self) -> None:
        """Show the final count and end the line."""
        if self._shown != self.done or self._shown_at is None:
            self._show(self.clock())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        """The progress as text, e.g. ``purging [#####     ] 50% 5/10 instances 3s``."""
        elapsed = f"{self.clock() - self.started:.0f}s"
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            ratio = min(1.0, self.done / self.total)
            filled = round(ratio * self.BAR_WIDTH)
            bar = "#" * filled + " " * (self.BAR_WIDTH - filled)
            return f"{self.label} [{bar}] {ratio:4.0%} {self.done}/{self.total}{unit} {elapsed}"
        return f"{self.label}: {self.done}{unit} {elapsed}"

    def _show(self, now: float) -> None:
        self._shown_at, self._shown = now, self.done
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
