"""History events <-> DTFx field dictionaries and History table rows.

DTFx serialises a history event by its ``[DataMember]`` names (PascalCase). This module
holds that mapping once (:func:`event_fields` / :func:`event_from_fields`); the table row
form is built here (:func:`event_to_row` / :func:`row_to_event`) and the queue JSON form in
:mod:`durable_azure.storage.messages`, both from the same field dictionary.

Row rules (reference §2.2-§2.4): ``EventType`` and ``OrchestrationStatus`` as enum *names*;
complex members (``OrchestrationInstance``, ``ParentInstance``, ``FailureDetails``, ``Tags``)
as JSON strings, the literal ``"null"`` for none; ``Timestamp`` renamed ``_Timestamp``;
``ExecutionId`` on every row. Absent and null columns read the same. Date-times
(``_Timestamp``, ``FireAt``, ``ScheduledStartTime``) are written as ``Edm.DateTime``, as
DTFx writes them; ISO-8601 text in those columns (another tool's rows) reads the same.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

from durable_azure.engine.history import (
    EVENT_CLASSES,
    OMIT_IF_NONE,
    EventType,
    ExecutionCompleted,
    ExecutionStarted,
    FailureDetails,
    HistoryEvent,
    OrchestrationStatus,
    ParentInstance,
    UnsupportedEvent,
    type_of,
)

#: Python field name -> DTFx member name, where the plain snake->Pascal rule is not enough.
_SPECIAL_NAMES = {"timestamp": "Timestamp"}

#: Members stored as JSON objects (JSON strings in tables, nested objects in queue JSON).
OBJECT_MEMBERS = frozenset(
    {"OrchestrationInstance", "ParentInstance", "FailureDetails", "Tags", "ParentTraceContext"}
)

#: Members that hold date-times (``Edm.DateTime`` in rows, ISO-8601 text in queue JSON).
DATETIME_MEMBERS = frozenset({"Timestamp", "FireAt", "ScheduledStartTime"})

#: Common members every event has (not class-specific).
_COMMON = ("EventType", "EventId", "IsPlayed", "Timestamp")


def _pascal(name: str) -> str:
    return _SPECIAL_NAMES.get(name) or "".join(p[:1].upper() + p[1:] for p in name.split("_"))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def as_datetime(value: Any) -> datetime | None:
    """A date-time column as an aware datetime (naive means UTC). Accepts what this
    library and DTFx write (``Edm.DateTime``, read back as a datetime) and ISO-8601 text
    (``2026-11-24T16:54:09.1234567Z``), which other tools may have written; None for an
    absent or empty column.

    Raises:
        ValueError: text that is not an ISO-8601 date-time.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, str):
        return _utc(datetime.fromisoformat(value))
    raise ValueError(f"not a date-time: {value!r}")


# --- field dictionaries (shared by rows and messages) ------------------------------------


def event_fields(event: HistoryEvent) -> dict[str, Any]:
    """The event's DTFx members as plain values: objects as dicts, enums as enums.

    Returns a dict in DTFx member order: class members first, then EventType, EventId,
    IsPlayed and Timestamp (the base-class members come last in Newtonsoft output).
    """
    if isinstance(event, UnsupportedEvent):
        out: dict[str, Any] = dict(event.extra)
    else:
        out = {}
        for f in dataclasses.fields(event):
            if f.name in ("event_id", "is_played", "timestamp"):
                continue
            value = getattr(event, f.name)
            if isinstance(event, ExecutionStarted) and f.name in ("instance_id", "execution_id"):
                continue
            if value is None and f.metadata.get(OMIT_IF_NONE):
                continue
            out[_pascal(f.name)] = _to_plain(value)
        if isinstance(event, ExecutionStarted):
            out["OrchestrationInstance"] = {
                "InstanceId": event.instance_id,
                "ExecutionId": event.execution_id,
            }
    out["EventType"] = type_of(event)
    out["EventId"] = event.event_id
    out["IsPlayed"] = event.is_played
    out["Timestamp"] = _utc(event.timestamp)
    return out


def _to_plain(value: Any) -> Any:
    if isinstance(value, FailureDetails):
        return value.to_dict()
    if isinstance(value, ParentInstance):
        return {
            "Name": value.name,
            "OrchestrationInstance": {
                "InstanceId": value.instance_id,
                "ExecutionId": value.execution_id,
            },
            "TaskScheduleId": value.task_scheduled_id,
            "Version": value.version,
        }
    return value


def event_from_fields(fields: dict[str, Any]) -> HistoryEvent:
    """Build a history event from DTFx members (as produced by either storage form).

    ``EventType`` may be an int, an :class:`EventType` or its name; object members are
    dicts (or ``None``); date-times are aware datetimes.
    """
    event_type = _event_type(fields.get("EventType"))
    common: dict[str, Any] = {
        "event_id": int(fields.get("EventId", -1) if fields.get("EventId") is not None else -1),
        "is_played": bool(fields.get("IsPlayed") or False),
        "timestamp": _utc(fields["Timestamp"]),
    }
    cls = EVENT_CLASSES.get(event_type)
    if cls is None:
        extra = {k: v for k, v in fields.items() if k not in _COMMON}
        return UnsupportedEvent(original_type=event_type, extra=extra, **common)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in common or (
            f.name in ("instance_id", "execution_id") and cls is ExecutionStarted
        ):
            continue
        member = _pascal(f.name)
        if member in fields and fields[member] is not None:
            kwargs[f.name] = _from_plain(member, fields[member])
    if cls is ExecutionStarted:
        instance = fields.get("OrchestrationInstance") or {}
        kwargs["instance_id"] = str(instance.get("InstanceId") or "")
        kwargs["execution_id"] = str(instance.get("ExecutionId") or "")
    return cls(**common, **kwargs)


def _event_type(value: Any) -> EventType:
    if isinstance(value, str):
        return EventType[value]
    return EventType(int(value))


def _from_plain(member: str, value: Any) -> Any:
    if member == "FailureDetails":
        return FailureDetails.from_dict(value) if isinstance(value, dict) else None
    if member == "ParentInstance":
        if not isinstance(value, dict):
            return None
        inst = value.get("OrchestrationInstance") or {}
        return ParentInstance(
            name=str(value.get("Name") or ""),
            instance_id=str(inst.get("InstanceId") or ""),
            execution_id=str(inst.get("ExecutionId") or ""),
            task_scheduled_id=int(value.get("TaskScheduleId", -1)),
            version=value.get("Version"),
        )
    if member == "OrchestrationStatus":
        return OrchestrationStatus[value] if isinstance(value, str) else OrchestrationStatus(value)
    if isinstance(value, datetime):
        return _utc(value)
    return value


# --- table rows --------------------------------------------------------------------------


def event_to_row(
    event: HistoryEvent, *, partition_key: str, row_key: str, execution_id: str
) -> dict[str, Any]:
    """The History table row of ``event`` (large properties not yet offloaded)."""
    row: dict[str, Any] = {"PartitionKey": partition_key, "RowKey": row_key}
    for member, value in event_fields(event).items():
        if member == "Timestamp":
            row["_Timestamp"] = value
        elif member == "EventType":
            row["EventType"] = value.name
        elif member == "OrchestrationStatus":
            # An UnsupportedEvent carries it as read: an int (queue JSON) or a name (row).
            row[member] = OrchestrationStatus(value).name if isinstance(value, int) else value
        elif member in OBJECT_MEMBERS or isinstance(value, (dict, list)):
            # Any other object type is stored as JSON (§2.2), e.g. the ParentTraceContext
            # of an event type this version does not model.
            row[member] = json.dumps(value, separators=(",", ":"))
        elif value is not None:
            row[member] = value
    row["ExecutionId"] = execution_id
    return row


def row_to_event(row: dict[str, Any]) -> HistoryEvent:
    """Decode a History row (large properties already fetched back into their columns)."""
    fields: dict[str, Any] = {}
    for column, value in row.items():
        if column in ("PartitionKey", "RowKey", "ExecutionId", "Timestamp") or column.endswith(
            "BlobName"
        ):
            continue
        if column == "_Timestamp":
            fields["Timestamp"] = value
        elif column in OBJECT_MEMBERS:
            fields[column] = json.loads(value) if isinstance(value, str) and value else None
        else:
            fields[column] = value
    if isinstance(fields.get("EventType"), str):
        fields["EventType"] = EventType[fields["EventType"]]
    for member in DATETIME_MEMBERS & fields.keys():
        fields[member] = as_datetime(fields[member])
    if fields.get("Timestamp") is None:
        # A row written by a tool that kept only the table's own Timestamp.
        fields["Timestamp"] = as_datetime(row.get("Timestamp")) or datetime(1970, 1, 1, tzinfo=UTC)
    return event_from_fields(fields)


def completion_of(events: list[HistoryEvent]) -> ExecutionCompleted | None:
    """The execution's ``ExecutionCompleted`` event, if it has one."""
    for event in reversed(events):
        if isinstance(event, ExecutionCompleted):
            return event
    return None
