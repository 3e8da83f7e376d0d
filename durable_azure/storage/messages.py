"""Queue messages in the DTFx ``MessageData`` JSON envelope (reference §4).

The body is Newtonsoft-style JSON with ``$type`` first in every object, integer enums,
ISO-8601 timestamps with 7 fractional digits and ``Z``, raw UTF-8 text (no base64).
Messages whose JSON is larger than :data:`~durable_azure.storage.names.MAX_INLINE_MESSAGE_BYTES`
are gzipped into a blob and the queue gets a wrapper holding only ``CompressedBlobName``;
that spill is done by :mod:`durable_azure.storage.queues`, this module only encodes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from durable_azure.engine.history import EventType, HistoryEvent, OrchestrationStatus
from durable_azure.storage.codec import event_fields, event_from_fields

_MESSAGE_DATA_TYPE = "DurableTask.AzureStorage.MessageData"
_TASK_MESSAGE_TYPE = "DurableTask.Core.TaskMessage"
_INSTANCE_TYPE = "DurableTask.Core.OrchestrationInstance"
_OBJECT_TYPES = {
    "OrchestrationInstance": _INSTANCE_TYPE,
    "ParentInstance": "DurableTask.Core.ParentInstance",
    "FailureDetails": "DurableTask.Core.FailureDetails",
    "InnerFailure": "DurableTask.Core.FailureDetails",
    "ParentTraceContext": "DurableTask.Core.Tracing.DistributedTraceContext",
    "Tags": (
        "System.Collections.Generic.Dictionary`2[[System.String, System.Private.CoreLib],"
        "[System.String, System.Private.CoreLib]]"
    ),
}
_DATETIME_MEMBERS = frozenset({"Timestamp", "FireAt", "ScheduledStartTime"})


class MessageFormatError(ValueError):
    """A queue message body is not a DTFx message this version can read."""


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One DTFx task message: a history event addressed to an orchestration instance.

    Attributes:
        event: the event carried (``TaskScheduled`` for activities, ``TaskCompleted`` etc.
            for control queues).
        instance_id: the target (or, for activity messages, the calling) instance.
        execution_id: the target execution; ``None`` means "whatever is current".
        episode: the sender's episode number (activity responses echo the request's).
        sender_instance_id, sender_execution_id: who sent it ("" for clients).
        activity_id: a fresh GUID per message (trace id, large-message blob names).
        sequence_number: per-process counter, a tie-breaker when sorting a batch.
    """

    event: HistoryEvent
    instance_id: str
    execution_id: str | None
    episode: int | None = None
    sender_instance_id: str = ""
    sender_execution_id: str = ""
    activity_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    sequence_number: int = 0


# --- timestamps --------------------------------------------------------------------------


def format_timestamp(value: datetime) -> str:
    """``2026-11-24T16:54:09.1234560Z``: .NET round-trip format, 7 fractional digits."""
    value = value.astimezone(UTC) if value.tzinfo else value
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


_TS = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?$",
)


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO-8601 timestamp with 0-7+ fractional digits; naive means UTC."""
    match = _TS.match(text)
    if not match:
        raise MessageFormatError(f"not an ISO-8601 timestamp: {text!r}")
    base, fraction, zone = match.groups()
    micros = (fraction or "0")[:6].ljust(6, "0")
    stamp = datetime.fromisoformat(f"{base}.{micros}")
    if zone in (None, "Z"):
        return stamp.replace(tzinfo=UTC)
    return datetime.fromisoformat(f"{base}.{micros}{zone}").astimezone(UTC)


# --- encoding ----------------------------------------------------------------------------


def _typed(member: str, value: Any) -> Any:
    """Add ``$type`` (first) to an object member, recursively, as Newtonsoft would."""
    if isinstance(value, dict) and member in _OBJECT_TYPES:
        out: dict[str, Any] = {"$type": _OBJECT_TYPES[member]}
        for key, inner in value.items():
            out[key] = _typed(key, inner)
        return out
    return value


def _event_json(event: HistoryEvent) -> dict[str, Any]:
    fields = event_fields(event)
    event_type: EventType = fields["EventType"]
    class_name = (
        event_type.name if event_type is EventType.GenericEvent else f"{event_type.name}Event"
    )
    out: dict[str, Any] = {"$type": f"DurableTask.Core.History.{class_name}"}
    for member, value in fields.items():
        if isinstance(value, (EventType, OrchestrationStatus)):
            out[member] = int(value)
        elif isinstance(value, datetime):
            out[member] = format_timestamp(value)
        else:
            out[member] = _typed(member, value)
    return out


def encode(message: TaskMessage) -> str:
    """The queue body of ``message`` (not yet checked against the size limit)."""
    envelope: dict[str, Any] = {
        "$type": _MESSAGE_DATA_TYPE,
        "ActivityId": message.activity_id,
        "TaskMessage": {
            "$type": _TASK_MESSAGE_TYPE,
            "Event": _event_json(message.event),
            "SequenceNumber": 0,
            "OrchestrationInstance": {
                "$type": _INSTANCE_TYPE,
                "InstanceId": message.instance_id,
                "ExecutionId": message.execution_id,
            },
            "OrchestrationExecutionContext": None,
        },
        "CompressedBlobName": None,
        "SequenceNumber": message.sequence_number,
    }
    if message.episode is not None:
        envelope["Episode"] = message.episode
    envelope["Sender"] = {
        "InstanceId": message.sender_instance_id,
        "ExecutionId": message.sender_execution_id,
    }
    envelope["SerializableTraceContext"] = None
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


def encode_blob_reference(blob_name: str) -> str:
    """The wrapper sent in place of a message that was spilled to a blob."""
    return json.dumps(
        {
            "$type": _MESSAGE_DATA_TYPE,
            "ActivityId": "00000000-0000-0000-0000-000000000000",
            "TaskMessage": None,
            "CompressedBlobName": blob_name,
            "SequenceNumber": 0,
            "SerializableTraceContext": None,
        },
        separators=(",", ":"),
    )


# --- decoding ----------------------------------------------------------------------------


def _untyped(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _untyped(v) for k, v in value.items() if k != "$type"}
    if isinstance(value, list):
        return [_untyped(v) for v in value]
    return value


def parse_envelope(body: str) -> dict[str, Any]:
    """Parse a queue body (raw JSON, or base64 JSON as older writers used)."""
    text = body.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.startswith(("{", "[")):  # meant as JSON: truncated or corrupt
            raise MessageFormatError(f"queue message is not valid JSON: {exc}") from None
        try:
            decoded = base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise MessageFormatError(
                f"queue message is neither JSON nor base64 JSON: {exc}"
            ) from None
        try:
            data = json.loads(decoded)
        except json.JSONDecodeError as inner:
            raise MessageFormatError(
                f"queue message is base64 whose content is not valid JSON: {inner}"
            ) from None
    if not isinstance(data, dict):
        raise MessageFormatError(
            f"queue message JSON is a {type(data).__name__}, not an object (a DTFx envelope)"
        )
    return data


def blob_reference(envelope: dict[str, Any]) -> str | None:
    """The ``CompressedBlobName`` of a wrapper message, if it is one."""
    name = envelope.get("CompressedBlobName")
    return name if isinstance(name, str) and name else None


def decode(envelope: dict[str, Any]) -> TaskMessage:
    """Decode a parsed (and, if it was spilled, already fetched) envelope."""
    try:
        task = envelope["TaskMessage"]
        event = _event_from_json(task["Event"])
        instance = task.get("OrchestrationInstance") or {}
        sender = envelope.get("Sender") or {}
        return TaskMessage(
            event=event,
            instance_id=str(instance["InstanceId"]),
            execution_id=instance.get("ExecutionId") or None,
            episode=envelope.get("Episode"),
            sender_instance_id=str(sender.get("InstanceId") or ""),
            sender_execution_id=str(sender.get("ExecutionId") or ""),
            activity_id=str(envelope.get("ActivityId") or ""),
            sequence_number=int(envelope.get("SequenceNumber") or 0),
        )
    except MessageFormatError:
        raise
    except Exception as exc:  # any shape we cannot read (a number for an object, ...)
        raise MessageFormatError(f"queue message is not a DTFx task message: {exc!r}") from exc


# --- single events -----------------------------------------------------------------------


def event_to_json(event: HistoryEvent) -> dict[str, Any]:
    """The DTFx queue-JSON object of one history event (the ``TaskMessage.Event`` member).

    ``$type`` comes first, enums are integers and date-times are strings with 7 fractional
    digits, exactly as :func:`encode` writes the event of a message. The result is a plain
    dict of JSON values, ready for :func:`json.dumps`.
    """
    return _event_json(event)


def _event_from_json(data: dict[str, Any]) -> HistoryEvent:
    # Shared with ``decode``: its caller translates KeyError/TypeError/ValueError.
    raw_event = _untyped(data)
    for member in _DATETIME_MEMBERS:
        if isinstance(raw_event.get(member), str):
            raw_event[member] = parse_timestamp(raw_event[member])
    return event_from_fields(raw_event)


def event_from_json(data: dict[str, Any]) -> HistoryEvent:
    """The history event of a DTFx queue-JSON event object (the reverse of
    :func:`event_to_json`; ``$type`` members are ignored).

    Raises:
        MessageFormatError: ``data`` is not an event object this version can read.
    """
    try:
        return _event_from_json(data)
    except MessageFormatError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise MessageFormatError(f"not a DTFx history event: {exc!r}") from exc
