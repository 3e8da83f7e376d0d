"""Stable names and fields of the library's log records.

Every record the library logs about something that happened (not plain debug chatter)
carries, as attributes set through ``extra``:

* ``event``: one of the names below, stable across versions, so alerts and dashboards
  can match ``event == "poison.moved"`` instead of a message's wording;
* where they apply: ``instance_id``, ``execution_id``, ``partition`` (the control queue
  name, e.g. ``myhub-control-02``, as DTFx names partitions), ``worker_id``, ``queue``,
  ``message_id``, ``activity``, ``orchestration``, ``status``.

A handler reads them as ``record.event``, ``record.instance_id`` and so on (absent when
they do not apply: use ``getattr(record, "instance_id", None)``).
:class:`JsonFormatter` writes each record as one JSON object with those fields; the CLI
uses it for ``--log-format json``. The library itself attaches no handler to any logger
and never configures the root logger: that is the application's choice.

Levels: INFO for lifecycle (a worker starting or stopping, partitions moving, an
orchestration or activity failing), DEBUG for per-episode and per-activity detail,
WARNING/ERROR for what needs attention.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

# --- the worker ----------------------------------------------------------------------------
WORKER_STARTED: Final = "worker.started"
WORKER_STOPPED: Final = "worker.stopped"
WORKER_ERROR: Final = "worker.error"
"""An unexpected error in a worker loop or task (logged with its traceback); it goes on."""
PARTITIONS_CHANGED: Final = "worker.partitions_changed"
RECEIVE_FAILED: Final = "queue.receive_failed"
WAKE_UPS_UNAVAILABLE: Final = "worker.wake_ups_unavailable"

# --- partition leases ----------------------------------------------------------------------
LEASE_ACQUIRED: Final = "lease.acquired"
LEASE_RELEASED: Final = "lease.released"
LEASE_DRAINING: Final = "lease.draining"
LEASE_LOST: Final = "lease.lost"
LEASE_CONFLICT: Final = "lease.conflict"
"""A lease write lost to another writer (412); the row is read again."""
LEASE_FAILED: Final = "lease.failed"
"""A lease read or write failed on storage; retried at the next step."""

# --- orchestrations ------------------------------------------------------------------------
INSTANCE_STARTED: Final = "instance.started"
INSTANCE_COMPLETED: Final = "instance.completed"
"""An execution ended Completed, Terminated or ContinuedAsNew (``status`` says which)."""
INSTANCE_FAILED: Final = "instance.failed"
INSTANCE_ROW_REPAIRED: Final = "instance.row_repaired"
NONDETERMINISTIC: Final = "instance.nondeterministic"
"""The code no longer matches the history; the execution fails."""
EPISODE_COMPLETED: Final = "episode.completed"
EPISODE_ABORTED: Final = "episode.aborted"
"""Another writer checkpointed first (sentinel ETag); the messages are retried."""
EPISODE_STORAGE_FAILED: Final = "episode.storage_failed"
EPISODE_FAILED: Final = "episode.failed"
"""An unexpected error (a bug, an unreadable payload); the messages come back later."""
EVENT_DROPPED: Final = "episode.event_dropped"
MESSAGE_DISCARDED: Final = "message.discarded"
"""A message deleted unprocessed: for no instance, a stale start, a rewind not allowed."""

# --- activities ----------------------------------------------------------------------------
ACTIVITY_COMPLETED: Final = "activity.completed"
ACTIVITY_FAILED: Final = "activity.failed"
ACTIVITY_RESPONSE_FAILED: Final = "activity.response_failed"
RENEW_FAILED: Final = "message.renew_failed"
"""A running activity's work item or an episode's anchor could not be kept hidden."""

# --- messages ------------------------------------------------------------------------------
POISON_MOVED: Final = "poison.moved"
"""A message delivered too often (or unreadable) was copied to the poison container."""
MESSAGE_UNREADABLE: Final = "message.unreadable"
MESSAGE_GONE: Final = "message.gone"
ABANDON_FAILED: Final = "message.abandon_failed"

#: Attributes every LogRecord has; everything else on a record came through ``extra``.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def fields(event: str, /, **values: Any) -> dict[str, Any]:
    """The ``extra`` of a record: ``{"event": event, **values}`` without the None values.

    ``logger.info("acquired %s", queue, extra=fields(LEASE_ACQUIRED, partition=queue))``.
    """
    out: dict[str, Any] = {"event": event}
    for key, value in values.items():
        if value is not None:
            out[key] = value
    return out


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record got through ``extra`` (``event``, ``instance_id``, ...)."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, every ``extra`` field (``event``, ``instance_id``, ...) and, for a record
    with an exception, ``exception`` (the formatted traceback). Values JSON cannot hold
    are written as their ``str()``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(extra_fields(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)
