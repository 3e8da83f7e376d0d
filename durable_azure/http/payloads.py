"""JSON shapes of the Durable Functions HTTP API (reference §4).

* :func:`status_payload`: the instance status body of ``GET instances/{id}``.
* :func:`compact_history`: the *compacted* ``historyEvents`` the host returns with
  ``showHistory=true`` (scheduling events merged into their completions, replay markers
  dropped, event types as names).
* :func:`check_status_payload` / :func:`management_payload`: the management URLs of an
  instance (the 202 body of a start, and the client binding's ``managementUrls``).
* :func:`client_binding`: the ``durableClient`` binding JSON of reference §2.4, for
  ``azure.durable_functions.DurableOrchestrationClient``.

Nothing here reads storage; :mod:`durable_azure.http.api` feeds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from durable_azure.client import DurableOrchestrationStatus
from durable_azure.engine import serialization
from durable_azure.engine.history import (
    EventRaised,
    EventType,
    ExecutionCompleted,
    ExecutionStarted,
    ExecutionTerminated,
    HistoryEvent,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
)
from durable_azure.storage.codec import event_fields
from durable_azure.storage.messages import format_timestamp

__all__ = [
    "INSTANCE_ID_PLACEHOLDER",
    "check_status_payload",
    "client_binding",
    "compact_history",
    "format_time",
    "management_payload",
    "parse_json_lenient",
    "status_payload",
]

#: The literal the client binding's ``managementUrls`` use where the instance id goes.
INSTANCE_ID_PLACEHOLDER = "INSTANCEID"


def format_time(value: datetime | None) -> str | None:
    """``yyyy-MM-ddTHH:mm:ssZ``, the status payload's time format."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def parse_json_lenient(text: str | None) -> Any:
    """Stored JSON text as a value; text that is not JSON comes back as is (as the host's
    ``ParseToJToken``: whitespace-only text gives ``""``)."""
    if text is None:
        return None
    if not text.strip():
        return ""
    try:
        return serialization.loads(text)
    except serialization.PayloadError:
        return text


def status_payload(
    status: DurableOrchestrationStatus, history: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The host's status payload: ``name, instanceId, runtimeStatus, input, customStatus,
    output, createdTime, lastUpdatedTime`` and, when given, ``historyEvents``."""
    data: dict[str, Any] = {
        "name": status.name,
        "instanceId": status.instance_id,
        "runtimeStatus": status.runtime_status.name,
        "input": status.input_,
        "customStatus": status.custom_status,
        "output": status.output,
        "createdTime": format_time(status.created_time),
        "lastUpdatedTime": format_time(status.last_updated_time),
    }
    if history is not None:
        data["historyEvents"] = history
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, EventType):
        return value.name
    if hasattr(value, "name") and hasattr(value, "value") and not isinstance(value, dict):
        return value.name  # other enums (OrchestrationStatus)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_SCHEDULERS = (TaskScheduled, SubOrchestrationInstanceCreated)
_COMPLETIONS = (
    TaskCompleted,
    TaskFailed,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceFailed,
)


def compact_history(
    events: Sequence[HistoryEvent], *, show_history_output: bool, show_input: bool
) -> list[dict[str, Any]]:
    """The compacted ``historyEvents`` of the status payload (reference §4).

    * ``EventType`` is the event's name; ``EventId``, ``IsPlayed`` and ``TimerId`` go;
      ``OrchestratorStarted``/``OrchestratorCompleted`` are dropped.
    * A ``TaskScheduled``/``SubOrchestrationInstanceCreated`` whose completion or
      failure is in the history is merged into it: the completion gets ``FunctionName``
      and ``ScheduledTime`` (and the scheduled ``Input`` when ``show_input``); its
      ``TaskScheduledId`` goes. Scheduling events still waiting stay, without input.
    * ``ExecutionStarted``: ``Name`` becomes ``FunctionName``; ``OrchestrationInstance``,
      ``ParentInstance``, ``Version``, ``Tags`` and ``Input`` go.
    * ``Result`` (task, sub-orchestration and execution completions) is kept, parsed as
      JSON, only with ``show_history_output``; ``EventRaised`` and ``ExecutionTerminated``
      inputs are never shown.
    """
    scheduled: dict[tuple[bool, int], tuple[int, HistoryEvent]] = {}
    for index, event in enumerate(events):
        if isinstance(event, _SCHEDULERS):
            slot = (isinstance(event, SubOrchestrationInstanceCreated), event.event_id)
            scheduled[slot] = (index, event)
    merged: set[int] = set()
    out: list[tuple[int, dict[str, Any]]] = []
    for index, event in enumerate(events):
        if event.event_type in (EventType.OrchestratorStarted, EventType.OrchestratorCompleted):
            continue
        fields = event_fields(event)
        event_type: EventType = fields.pop("EventType")
        fields.pop("EventId", None)
        fields.pop("IsPlayed", None)
        timestamp = fields.pop("Timestamp")
        item: dict[str, Any] = {"EventType": event_type.name}
        if isinstance(event, ExecutionStarted):
            item["FunctionName"] = fields.pop("Name", None)
            for name in ("OrchestrationInstance", "ParentInstance", "Version", "Tags", "Input"):
                fields.pop(name, None)
        elif isinstance(event, _SCHEDULERS):
            fields.pop("Version", None)
            fields.pop("Input", None)
        elif isinstance(event, _COMPLETIONS):
            sub = isinstance(event, (SubOrchestrationInstanceCompleted,
                                     SubOrchestrationInstanceFailed))  # fmt: skip
            found = scheduled.get((sub, event.task_scheduled_id))
            fields.pop("TaskScheduledId", None)
            if found is not None:
                position, origin = found
                merged.add(position)
                item["FunctionName"] = getattr(origin, "name", None)
                item["ScheduledTime"] = format_timestamp(origin.timestamp)
                if show_input:
                    item["Input"] = parse_json_lenient(getattr(origin, "input", None))
            if isinstance(event, (TaskCompleted, SubOrchestrationInstanceCompleted)):
                result = fields.pop("Result", None)
                if show_history_output:
                    item["Result"] = parse_json_lenient(result)
        elif isinstance(event, ExecutionCompleted):
            result = fields.pop("Result", None)
            if show_history_output:
                item["Result"] = parse_json_lenient(result)
        elif isinstance(event, (EventRaised, ExecutionTerminated)):
            fields.pop("Input", None)
        elif event.event_type is EventType.TimerFired:
            fields.pop("TimerId", None)
        for name, value in fields.items():
            if value is not None and name not in item:
                item[name] = _plain(value)
        item["Timestamp"] = format_timestamp(timestamp)
        out.append((index, item))
    return [item for index, item in out if index not in merged]


# --- management URLs -----------------------------------------------------------------------


def _common_query(task_hub: str, connection: str, code: str | None) -> str:
    query = f"taskHub={quote(task_hub, safe='')}&connection={quote(connection, safe='')}"
    if code:
        query += f"&code={quote(code, safe='')}"
    return query


def management_payload(
    base_url: str,
    instance_id: str,
    *,
    task_hub: str,
    connection: str,
    code: str | None = None,
    encode_id: bool = True,
) -> dict[str, str]:
    """The full ``HttpManagementPayload`` (the check-status URLs plus ``rewindPostUri``).

    ``base_url`` is e.g. ``http://host:7071/runtime/webhooks/durabletask`` (no trailing
    slash). ``connection`` is the connection *name* (e.g. ``"Storage"``), never a
    connection string; ``code`` is the HTTP API key when one is configured.
    """
    base_url = base_url.rstrip("/")
    instance = quote(instance_id, safe="") if encode_id else instance_id
    query = _common_query(task_hub, connection, code)
    status = f"{base_url}/instances/{instance}?{query}"
    prefix = f"{base_url}/instances/{instance}"
    return {
        "id": instance_id,
        "statusQueryGetUri": status,
        "sendEventPostUri": f"{prefix}/raiseEvent/{{eventName}}?{query}",
        "terminatePostUri": f"{prefix}/terminate?reason={{text}}&{query}",
        "rewindPostUri": f"{prefix}/rewind?reason={{text}}&{query}",
        "purgeHistoryDeleteUri": status,
        "restartPostUri": f"{prefix}/restart?{query}",
        "suspendPostUri": f"{prefix}/suspend?reason={{text}}&{query}",
        "resumePostUri": f"{prefix}/resume?reason={{text}}&{query}",
    }


def check_status_payload(
    base_url: str,
    instance_id: str,
    *,
    task_hub: str,
    connection: str,
    code: str | None = None,
    return_internal_server_error_on_failure: bool = False,
) -> dict[str, str]:
    """The host's own 202 body for a started instance (no ``rewindPostUri``)."""
    payload = management_payload(
        base_url, instance_id, task_hub=task_hub, connection=connection, code=code
    )
    del payload["rewindPostUri"]
    if return_internal_server_error_on_failure:
        payload["statusQueryGetUri"] += "&returnInternalServerErrorOnFailure=true"
    return payload


def client_binding(
    *,
    base_url: str,
    rpc_base_url: str,
    task_hub: str,
    connection: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The ``durableClient`` binding JSON (reference §2.4) that
    ``azure.durable_functions.DurableOrchestrationClient`` is constructed from.

    ``rpc_base_url`` is where the SDK sends its calls (e.g.
    ``http://127.0.0.1:7071/durabletask/``); a missing final ``/`` is added, since the SDK
    appends ``instances/...`` to it.
    """
    base_url = base_url.rstrip("/")
    if not rpc_base_url.endswith("/"):
        rpc_base_url += "/"
    code_query = f"code={quote(code, safe='')}" if code else ""
    creation_suffix = f"?{code_query}" if code_query else ""
    wait_suffix = "?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}" + (
        f"&{code_query}" if code_query else ""
    )
    return {
        "taskHubName": task_hub,
        "connectionName": connection,
        "creationUrls": {
            "createNewInstancePostUri": (
                f"{base_url}/orchestrators/{{functionName}}[/{{instanceId}}]{creation_suffix}"
            ),
            "createAndWaitOnNewInstancePostUri": (
                f"{base_url}/orchestrators/{{functionName}}[/{{instanceId}}]{wait_suffix}"
            ),
        },
        "managementUrls": management_payload(
            base_url,
            INSTANCE_ID_PLACEHOLDER,
            task_hub=task_hub,
            connection=connection or "Storage",
            code=code,
            encode_id=False,
        ),
        "baseUrl": base_url,
        "requiredQueryStringParameters": code_query,
        "rpcBaseUrl": rpc_base_url,
        "httpBaseUrl": None,
    }
