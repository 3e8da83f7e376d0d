"""Names, keys, limits and encodings of the DTFx Azure Storage layout. Pure: no storage.

Expected values come from the reference ``shared/reference/dtfx-azure-storage.md``
(section numbers in the test names' comments).
"""

from __future__ import annotations

import base64
import json
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from durable_azure.engine.history import (
    EVENT_CLASSES,
    EventRaised,
    EventSent,
    EventType,
    ExecutionCompleted,
    ExecutionResumed,
    ExecutionRewound,
    ExecutionStarted,
    ExecutionSuspended,
    ExecutionTerminated,
    FailureDetails,
    GenericEvent,
    HistoryEvent,
    OrchestrationStatus,
    OrchestratorCompleted,
    OrchestratorStarted,
    ParentInstance,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
    UnsupportedEvent,
)
from durable_azure.errors import ConfigurationError, InvalidInstanceIdError
from durable_azure.runner import MAX_ORPHAN_DEQUEUES, MAX_START_DEFERRALS
from durable_azure.storage import messages, names, queues
from durable_azure.storage.codec import event_to_row, row_to_event
from durable_azure.storage.messages import (
    MessageFormatError,
    TaskMessage,
    format_timestamp,
    parse_timestamp,
)
from durable_azure.storage.names import (
    TaskHubNames,
    escape_key,
    fnv1a32,
    history_row_key,
    unescape_key,
    validate_instance_id,
    validate_task_hub_name,
)
from durable_azure.storage.primitives import MAX_TRANSACTION_OPS

T0 = datetime(2024, 5, 1, 10, 0, 1, 123456, tzinfo=UTC)
EXEC = "e0000000000000000000000000000001"


# --- §1.4 hashing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0x811C9DC5),
        ("a", 0xE40C292C),
        ("foobar", 0xBF9CF968),
        ("abc", 0x1A47E90B),
        ("myinstance", 0xC06A6290),
    ],
)
def test_fnv1a_vectors(text: str, expected: int) -> None:
    assert fnv1a32(text.encode("utf-8")) == expected


@pytest.mark.parametrize(("instance_id", "partition"), [("abc", 3), ("myinstance", 0)])
def test_partition_of_uses_the_hash_mod_count(instance_id: str, partition: int) -> None:
    assert TaskHubNames("Hub", 4).partition_of(instance_id) == partition


def test_partition_hash_takes_the_id_as_given() -> None:
    # No lowercasing or key escaping before hashing; UTF-8 bytes.
    hub = TaskHubNames("Hub", 16)
    for text in ("ABC", "a/b", "é", "@counter@key"):
        assert hub.partition_of(text) == fnv1a32(text.encode("utf-8")) % 16
    assert fnv1a32(b"ABC") != fnv1a32(b"abc")


# --- §1.1-§1.3 names ---------------------------------------------------------------------


def test_resource_names() -> None:
    hub = TaskHubNames("MyHub", 3)
    assert hub.control_queues == ["myhub-control-00", "myhub-control-01", "myhub-control-02"]
    assert hub.work_item_queue == "myhub-workitems"
    assert hub.history_table == "MyHubHistory"
    assert hub.instances_table == "MyHubInstances"
    assert hub.partitions_table == "MyHubPartitions"
    assert hub.large_messages_container == "myhub-largemessages"
    assert TaskHubNames("Hub", 16).control_queue(15) == "hub-control-15"
    with pytest.raises(ValueError, match="outside"):
        hub.control_queue(3)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "non-empty"),
        ("ab", "3-45 characters"),
        ("a" * 46, "3-45 characters"),
        ("my-hub", "letters and digits"),
        ("my_hub", "letters and digits"),
        ("1hub", "start with a letter"),
        ("hub name", "letters and digits"),
    ],
)
def test_hub_name_validation_errors(name: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        validate_task_hub_name(name)
    with pytest.raises(ConfigurationError):
        TaskHubNames(name)


def test_hub_name_not_a_string() -> None:
    with pytest.raises(ConfigurationError):
        validate_task_hub_name(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["abc", "TestHubName", "a" * 45, "H1b2"])
def test_valid_hub_names(name: str) -> None:
    assert validate_task_hub_name(name) == name
    # The longest derived name still fits Azure's 63-character queue/container limit.
    assert len(TaskHubNames(name).large_messages_container) <= 63


@pytest.mark.parametrize("count", [0, 17, -1, True, 2.0])
def test_partition_count_validation(count: Any) -> None:
    with pytest.raises(ConfigurationError, match="partition count"):
        TaskHubNames("Hub", count)


# --- instance ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance_id", "message"),
    [
        ("", "must not be empty"),
        ("x" * 257, "at most 256"),
        ("@counter@key", "reserved for entities"),
        ("abc\ud800", "lone surrogate"),
        (42, "must be a string"),
        (None, "must be a string"),
    ],
    ids=["empty", "too-long", "at-prefix", "lone-surrogate", "int", "none"],
)
def test_instance_id_validation_errors(instance_id: Any, message: str) -> None:
    with pytest.raises(InvalidInstanceIdError, match=message):
        validate_instance_id(instance_id)


@pytest.mark.parametrize("instance_id", ["x" * 256, "a/b\\c#d?e^f", "tab\there", "日本", "a@b"])
def test_valid_instance_ids(instance_id: str) -> None:
    assert validate_instance_id(instance_id) == instance_id


# --- §1.5 key escaping -------------------------------------------------------------------

_FORBIDDEN_IN_KEYS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("^", "^^"),
        ("/", "^0"),
        ("\\", "^1"),
        ("#", "^2"),
        ("?", "^3"),
        ("\x00", "^\u00c0"),
        ("\x1f", "^\u00df"),
        ("\x7f", "^\u013f"),
        ("\x9f", "^\u015f"),
        ("a/b?c", "a^0b^3c"),
        ("é ü", "é ü"),
    ],
)
def test_escape_key(raw: str, escaped: str) -> None:
    assert escape_key(raw) == escaped
    assert unescape_key(escaped) == raw


def test_escape_key_round_trip_and_table_safety() -> None:
    rng = random.Random(1234)
    alphabet = (
        "^/\\#?ab-_.~ é日" + "".join(map(chr, range(0x20))) + "".join(map(chr, range(0x7F, 0xA0)))
    )
    for _ in range(2000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        key = escape_key(raw)
        assert unescape_key(key) == raw
        assert not _FORBIDDEN_IN_KEYS.search(key), (raw, key)


def test_escape_is_not_idempotent() -> None:
    # Apply exactly once (§1.5).
    assert escape_key(escape_key("a^b")) != escape_key("a^b")


# --- §2.1 history row keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "key"),
    [
        (0, "0000000000000000"),
        (10, "000000000000000A"),
        (255, "00000000000000FF"),
        (2**40, "0000010000000000"),
    ],
)
def test_history_row_key(position: int, key: str) -> None:
    assert history_row_key(position) == key


def test_history_row_keys_sort_numerically_and_before_the_sentinel() -> None:
    keys = [history_row_key(i) for i in range(300)]
    assert sorted(keys) == keys
    assert max(keys) < names.SENTINEL_ROW_KEY


def test_history_row_key_rejects_negative() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        history_row_key(-1)


# --- named limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (names.DEFAULT_PARTITION_COUNT, 4),
        (names.MIN_PARTITION_COUNT, 1),
        (names.MAX_PARTITION_COUNT, 16),
        (names.MAX_MESSAGES_PER_RECEIVE, 32),
        (names.MAX_INLINE_MESSAGE_BYTES, 46_080),
        (names.MAX_INLINE_PROPERTY_BYTES, 61_440),
        (names.MAX_HISTORY_ROWS_PER_BATCH, 99),
        (names.MAX_BATCH_PAYLOAD_BYTES, 3 * 1024 * 1024),
        (names.MAX_VISIBILITY_TIMEOUT, timedelta(days=7)),
        (names.MAX_INSTANCE_ID_LENGTH, 256),
        (names.MIN_TASK_HUB_NAME_LENGTH, 3),
        (names.MAX_TASK_HUB_NAME_LENGTH, 45),
        (names.SENTINEL_ROW_KEY, "sentinel"),
        (names.INSTANCE_ROW_KEY, ""),
        (MAX_TRANSACTION_OPS, 100),
        (queues.DEFAULT_VISIBILITY_TIMEOUT, timedelta(minutes=5)),
        (queues.MAX_ABANDON_DELAY, timedelta(minutes=10)),
        (MAX_START_DEFERRALS, 10),
        (MAX_ORPHAN_DEQUEUES, 5),
    ],
    ids=[
        "DEFAULT_PARTITION_COUNT",
        "MIN_PARTITION_COUNT",
        "MAX_PARTITION_COUNT",
        "MAX_MESSAGES_PER_RECEIVE",
        "MAX_INLINE_MESSAGE_BYTES",
        "MAX_INLINE_PROPERTY_BYTES",
        "MAX_HISTORY_ROWS_PER_BATCH",
        "MAX_BATCH_PAYLOAD_BYTES",
        "MAX_VISIBILITY_TIMEOUT",
        "MAX_INSTANCE_ID_LENGTH",
        "MIN_TASK_HUB_NAME_LENGTH",
        "MAX_TASK_HUB_NAME_LENGTH",
        "SENTINEL_ROW_KEY",
        "INSTANCE_ROW_KEY",
        "MAX_TRANSACTION_OPS",
        "DEFAULT_VISIBILITY_TIMEOUT",
        "MAX_ABANDON_DELAY",
        "MAX_START_DEFERRALS",
        "MAX_ORPHAN_DEQUEUES",
    ],
)
def test_limit_constants(value: object, expected: object) -> None:
    assert value == expected


def test_history_batches_fit_one_transaction() -> None:
    assert names.MAX_HISTORY_ROWS_PER_BATCH + 1 == MAX_TRANSACTION_OPS  # + the sentinel


@pytest.mark.parametrize(
    ("dequeue_count", "seconds"), [(1, 1), (2, 2), (5, 16), (10, 512), (11, 600), (40, 600)]
)
def test_abandon_delay(dequeue_count: int, seconds: float) -> None:
    assert queues.abandon_delay(dequeue_count) == seconds


# --- §2.2-§2.4 history rows --------------------------------------------------------------

FAILURE = FailureDetails(
    error_type="ValueError",
    error_message="bad input",
    stack_trace="Traceback ...",
    inner_failure=FailureDetails("KeyError", "'k'"),
    is_non_retriable=True,
)
PARENT = ParentInstance(
    name="parent", instance_id="p-1", execution_id="pe", task_scheduled_id=3, version="1.0"
)

#: A DTFx ``ParentTraceContext`` (W3C trace context).
TRACE = {
    "TraceParent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "TraceState": "congo=t61rcWkgMzE",
}

#: One event of every class, with every optional member set where it has one.
EVENTS: list[HistoryEvent] = [
    ExecutionStarted(
        timestamp=T0,
        name="orch",
        instance_id="inst/1",
        execution_id=EXEC,
        input='{"a": 1}',
        version="2",
        parent_instance=PARENT,
        tags={"k": "v"},
        scheduled_start_time=T0 + timedelta(minutes=1),
        generation=2,
        parent_trace_context=TRACE,
    ),
    ExecutionStarted(timestamp=T0, name="orch", instance_id="i", execution_id=EXEC),
    ExecutionCompleted(
        event_id=4,
        timestamp=T0,
        orchestration_status=OrchestrationStatus.Completed,
        result='"done"',
    ),
    ExecutionCompleted(
        event_id=4,
        timestamp=T0,
        orchestration_status=OrchestrationStatus.Failed,
        failure_details=FAILURE,
    ),
    ExecutionTerminated(timestamp=T0, input='"stop"'),
    TaskScheduled(event_id=0, timestamp=T0, name="act", input="[1,2]", version="1"),
    TaskCompleted(timestamp=T0, task_scheduled_id=0, result="3"),
    TaskFailed(
        timestamp=T0,
        task_scheduled_id=0,
        reason="ValueError: bad input",
        details="Traceback ...",
        failure_details=FAILURE,
    ),
    SubOrchestrationInstanceCreated(
        event_id=1, timestamp=T0, name="sub", instance_id="sub-1", input="null", version="1"
    ),
    SubOrchestrationInstanceCompleted(timestamp=T0, task_scheduled_id=1, result='"r"'),
    SubOrchestrationInstanceFailed(
        timestamp=T0, task_scheduled_id=1, reason="r", details="d", failure_details=FAILURE
    ),
    TimerCreated(event_id=2, timestamp=T0, fire_at=T0 + timedelta(days=1)),
    TimerFired(timestamp=T0, timer_id=2, fire_at=T0 + timedelta(days=1)),
    OrchestratorStarted(timestamp=T0),
    OrchestratorCompleted(timestamp=T0, is_played=True),
    EventSent(event_id=3, timestamp=T0, instance_id="other", name="ping", input='"x"'),
    EventRaised(timestamp=T0, name="approval", input="true"),
    GenericEvent(timestamp=T0, data="payload"),
    ExecutionSuspended(timestamp=T0, reason="pause"),
    ExecutionResumed(timestamp=T0, reason="go"),
    ExecutionRewound(timestamp=T0, reason="again"),
    TaskScheduled(
        event_id=0, timestamp=T0, name="act", input="1", tags={"t": "1"}, parent_trace_context=TRACE
    ),
]


def _event_id(event: HistoryEvent) -> str:
    return type(event).__name__


def test_every_event_class_is_covered() -> None:
    assert {type(e) for e in EVENTS} == set(EVENT_CLASSES.values())


@pytest.mark.parametrize("event", EVENTS, ids=_event_id)
def test_row_round_trip(event: HistoryEvent) -> None:
    row = event_to_row(
        event, partition_key="inst^01", row_key=history_row_key(7), execution_id=EXEC
    )
    assert row_to_event(row) == event


@pytest.mark.parametrize("event", EVENTS, ids=_event_id)
def test_row_columns(event: HistoryEvent) -> None:
    row = event_to_row(event, partition_key="pk", row_key="000000000000000A", execution_id=EXEC)
    assert row["PartitionKey"] == "pk"
    assert row["RowKey"] == "000000000000000A"
    assert row["EventType"] == event.event_type.name  # the name, not the integer
    assert row["EventId"] == event.event_id
    assert type(row["EventId"]) is int
    assert row["IsPlayed"] is event.is_played
    assert row["_Timestamp"] == event.timestamp
    assert "Timestamp" not in row  # reserved by Azure Tables
    assert row["ExecutionId"] == EXEC
    # Only table-storable scalar types.
    for column, value in row.items():
        assert isinstance(value, (str, int, bool, datetime)), (column, value)


def test_row_enum_and_object_columns() -> None:
    started = event_to_row(EVENTS[0], partition_key="p", row_key="r", execution_id=EXEC)
    assert json.loads(started["OrchestrationInstance"]) == {
        "InstanceId": "inst/1",
        "ExecutionId": EXEC,
    }
    assert json.loads(started["ParentInstance"]) == {
        "Name": "parent",
        "OrchestrationInstance": {"InstanceId": "p-1", "ExecutionId": "pe"},
        "TaskScheduleId": 3,
        "Version": "1.0",
    }
    assert json.loads(started["Tags"]) == {"k": "v"}
    assert started["Generation"] == 2
    assert started["ScheduledStartTime"] == T0 + timedelta(minutes=1)
    assert "$type" not in started["ParentInstance"]  # no $type in table JSON

    bare = event_to_row(EVENTS[1], partition_key="p", row_key="r", execution_id=EXEC)
    assert bare["ParentInstance"] == "null"
    assert bare["Tags"] == "null"

    failed = event_to_row(EVENTS[3], partition_key="p", row_key="r", execution_id=EXEC)
    assert failed["OrchestrationStatus"] == "Failed"
    assert json.loads(failed["FailureDetails"]) == {
        "ErrorType": "ValueError",
        "ErrorMessage": "bad input",
        "StackTrace": "Traceback ...",
        "InnerFailure": {
            "ErrorType": "KeyError",
            "ErrorMessage": "'k'",
            "StackTrace": None,
            "InnerFailure": None,
            "IsNonRetriable": False,
            "Properties": None,
        },
        "IsNonRetriable": True,
        "Properties": None,
    }
    completed = event_to_row(EVENTS[2], partition_key="p", row_key="r", execution_id=EXEC)
    assert completed["OrchestrationStatus"] == "Completed"
    assert completed["FailureDetails"] == "null"
    assert completed["Result"] == '"done"'

    task = event_to_row(EVENTS[6], partition_key="p", row_key="r", execution_id=EXEC)
    assert task["TaskScheduledId"] == 0
    timer = event_to_row(EVENTS[12], partition_key="p", row_key="r", execution_id=EXEC)
    assert timer["TimerId"] == 2
    assert timer["FireAt"] == T0 + timedelta(days=1)


def test_row_absent_and_null_columns_read_the_same() -> None:
    base = {
        "PartitionKey": "p",
        "RowKey": "0000000000000000",
        "EventType": "TaskScheduled",
        "EventId": 0,
        "IsPlayed": False,
        "_Timestamp": T0,
        "ExecutionId": EXEC,
        "Name": "act",
    }
    assert row_to_event({**base, "Input": None, "Version": None}) == row_to_event(base)


def test_row_of_an_unknown_event_type_is_kept() -> None:
    row = {
        "PartitionKey": "p",
        "RowKey": "0000000000000003",
        "EventType": "ContinueAsNew",
        "EventId": 1,
        "IsPlayed": False,
        "_Timestamp": T0,
        "ExecutionId": EXEC,
        "OrchestrationStatus": "ContinuedAsNew",
        "Result": "5",
    }
    event = row_to_event(row)
    assert isinstance(event, UnsupportedEvent)
    assert event.original_type is EventType.ContinueAsNew
    assert event.extra["Result"] == "5"


# --- §4.1 queue messages -----------------------------------------------------------------

_TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")


def _objects(value: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every JSON object in ``value`` with its path."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(value, dict):
        found.append((path, value))
        for key, inner in value.items():
            found += _objects(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += _objects(inner, f"{path}[{i}]")
    return found


def _message(event: HistoryEvent, episode: int | None = 3) -> TaskMessage:
    return TaskMessage(
        event=event,
        instance_id="inst/1",
        execution_id=EXEC,
        episode=episode,
        sender_instance_id="parent",
        sender_execution_id="pe",
        sequence_number=42,
    )


@pytest.mark.parametrize("event", EVENTS, ids=_event_id)
def test_message_round_trip(event: HistoryEvent) -> None:
    message = _message(event)
    body = messages.encode(message)
    assert messages.decode(messages.parse_envelope(body)) == message


@pytest.mark.parametrize("event", EVENTS, ids=_event_id)
def test_message_json_shape(event: HistoryEvent) -> None:
    data = json.loads(messages.encode(_message(event)))
    for path, obj in _objects(data):
        if path == ".Sender":
            assert "$type" not in obj  # Sender carries no $type (§4.1)
            continue
        assert next(iter(obj)) == "$type", f"$type is not first in {path or 'the envelope'}"
    assert data["$type"] == "DurableTask.AzureStorage.MessageData"
    assert data["TaskMessage"]["$type"] == "DurableTask.Core.TaskMessage"
    wire = data["TaskMessage"]["Event"]
    assert wire["$type"].startswith("DurableTask.Core.History.")
    assert wire["EventType"] == int(event.event_type)
    assert type(wire["EventType"]) is int
    assert _TIMESTAMP_RE.match(wire["Timestamp"]), wire["Timestamp"]
    for member in ("FireAt", "ScheduledStartTime"):
        if wire.get(member) is not None:
            assert _TIMESTAMP_RE.match(wire[member]), wire[member]
    if "OrchestrationStatus" in wire:
        assert type(wire["OrchestrationStatus"]) is int
    assert data["TaskMessage"]["OrchestrationInstance"] == {
        "$type": "DurableTask.Core.OrchestrationInstance",
        "InstanceId": "inst/1",
        "ExecutionId": EXEC,
    }
    assert data["Sender"] == {"InstanceId": "parent", "ExecutionId": "pe"}
    assert data["Episode"] == 3
    assert data["SequenceNumber"] == 42


def test_message_member_order_and_event_class_names() -> None:
    data = json.loads(messages.encode(_message(EVENTS[6])))
    assert list(data) == [
        "$type",
        "ActivityId",
        "TaskMessage",
        "CompressedBlobName",
        "SequenceNumber",
        "Episode",
        "Sender",
        "SerializableTraceContext",
    ]
    assert data["TaskMessage"]["Event"]["$type"] == "DurableTask.Core.History.TaskCompletedEvent"
    assert list(data["TaskMessage"]["Event"])[-4:] == [
        "EventType",
        "EventId",
        "IsPlayed",
        "Timestamp",
    ]
    generic = json.loads(messages.encode(_message(GenericEvent(timestamp=T0, data="x"))))
    assert generic["TaskMessage"]["Event"]["$type"] == "DurableTask.Core.History.GenericEvent"


def test_message_enum_values_are_integers() -> None:
    data = json.loads(messages.encode(_message(EVENTS[3])))
    assert data["TaskMessage"]["Event"]["OrchestrationStatus"] == 3  # Failed
    assert data["TaskMessage"]["Event"]["EventType"] == 1
    assert data["TaskMessage"]["Event"]["FailureDetails"]["$type"] == (
        "DurableTask.Core.FailureDetails"
    )


def test_episode_omitted_when_none() -> None:
    data = json.loads(messages.encode(_message(EVENTS[6], episode=None)))
    assert "Episode" not in data
    decoded = messages.decode(data)
    assert decoded.episode is None


def test_message_execution_id_none_means_current() -> None:
    message = TaskMessage(EventRaised(timestamp=T0, name="e"), "inst", None)
    data = json.loads(messages.encode(message))
    assert data["TaskMessage"]["OrchestrationInstance"]["ExecutionId"] is None
    assert messages.decode(data).execution_id is None


def test_message_body_is_raw_utf8_json() -> None:
    body = messages.encode(_message(EventRaised(timestamp=T0, name="ü", input='"日本"')))
    assert body.startswith("{")
    assert "ü" in body
    assert "日本" in body


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (
            datetime(2024, 5, 1, 10, 0, 1, 123456, tzinfo=UTC),
            "2024-05-01T10:00:01.1234560Z",
        ),
        (datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC), "2024-05-01T10:00:01.0000000Z"),
        (
            datetime(2024, 5, 1, 12, 0, 1, tzinfo=timezone(timedelta(hours=2))),
            "2024-05-01T10:00:01.0000000Z",
        ),
    ],
)
def test_format_timestamp(value: datetime, text: str) -> None:
    assert format_timestamp(value) == text
    assert parse_timestamp(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2024-05-01T10:00:01Z", datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)),
        ("2024-05-01T10:00:01.5Z", datetime(2024, 5, 1, 10, 0, 1, 500000, tzinfo=UTC)),
        (
            "2024-05-01T10:00:01.12345678Z",
            datetime(2024, 5, 1, 10, 0, 1, 123456, tzinfo=UTC),
        ),
        ("2024-05-01T10:00:01", datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)),
        ("2024-05-01T12:00:01+02:00", datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)),
    ],
)
def test_parse_timestamp(text: str, value: datetime) -> None:
    assert parse_timestamp(text) == value


def test_parse_timestamp_rejects_garbage() -> None:
    with pytest.raises(MessageFormatError):
        parse_timestamp("yesterday")


# --- DTFx samples (§4.1 "accept the assembly-qualified form when reading") ------------------

DTFX_COMPLETED = {
    "$type": "DurableTask.AzureStorage.MessageData, DurableTask.AzureStorage",
    "ActivityId": "5dc4e0f2-8f3e-4b8a-9f79-0a41e1f5c3d2",
    "TaskMessage": {
        "$type": "DurableTask.Core.TaskMessage, DurableTask.Core",
        "Event": {
            "$type": "DurableTask.Core.History.TaskCompletedEvent, DurableTask.Core",
            "TaskScheduledId": 2,
            "Result": '"Hello Tokyo!"',
            "EventType": 5,
            "EventId": -1,
            "IsPlayed": False,
            "Timestamp": "2024-05-01T10:00:03.1234567Z",
        },
        "SequenceNumber": 0,
        "OrchestrationInstance": {
            "$type": "DurableTask.Core.OrchestrationInstance, DurableTask.Core",
            "InstanceId": "b2d6e3f0a1",
            "ExecutionId": "0a3b4c5d6e7f48e9a0b1c2d3e4f5a6b7",
        },
        "OrchestrationExecutionContext": None,
    },
    "CompressedBlobName": None,
    "SequenceNumber": 7,
    "Episode": 3,
    "Sender": {"InstanceId": "", "ExecutionId": ""},
    "SerializableTraceContext": None,
}

DTFX_STARTED = {
    "$type": "DurableTask.AzureStorage.MessageData, DurableTask.AzureStorage",
    "ActivityId": "7e1e2c3a-0000-4000-8000-000000000001",
    "TaskMessage": {
        "$type": "DurableTask.Core.TaskMessage, DurableTask.Core",
        "Event": {
            "$type": "DurableTask.Core.History.ExecutionStartedEvent, DurableTask.Core",
            "OrchestrationInstance": {
                "$type": "DurableTask.Core.OrchestrationInstance, DurableTask.Core",
                "InstanceId": "b2d6e3f0a1",
                "ExecutionId": "0a3b4c5d6e7f48e9a0b1c2d3e4f5a6b7",
            },
            "ParentInstance": None,
            "Name": "HelloCities",
            "Version": "",
            "Input": '"seed"',
            "Tags": {
                "$type": (
                    "System.Collections.Generic.Dictionary`2[[System.String, mscorlib],"
                    "[System.String, mscorlib]], mscorlib"
                ),
                "team": "blue",
            },
            "Correlation": None,
            "ScheduledStartTime": None,
            "Generation": 0,
            "EventType": 0,
            "EventId": -1,
            "IsPlayed": False,
            "Timestamp": "2024-05-01T10:00:01.0000001Z",
        },
        "SequenceNumber": 0,
        "OrchestrationInstance": {
            "$type": "DurableTask.Core.OrchestrationInstance, DurableTask.Core",
            "InstanceId": "b2d6e3f0a1",
            "ExecutionId": "0a3b4c5d6e7f48e9a0b1c2d3e4f5a6b7",
        },
        "OrchestrationExecutionContext": {
            "$type": "DurableTask.Core.OrchestrationExecutionContext, DurableTask.Core",
            "OrchestrationTags": None,
        },
    },
    "CompressedBlobName": None,
    "SequenceNumber": 1,
    "Sender": {"InstanceId": "", "ExecutionId": ""},
    "SerializableTraceContext": None,
}


def test_decode_dtfx_sample_base64_assembly_qualified() -> None:
    body = base64.b64encode(json.dumps(DTFX_COMPLETED).encode("utf-8")).decode("ascii")
    message = messages.decode(messages.parse_envelope(body))
    assert message.event == TaskCompleted(
        timestamp=datetime(2024, 5, 1, 10, 0, 3, 123456, tzinfo=UTC),
        task_scheduled_id=2,
        result='"Hello Tokyo!"',
    )
    assert message.instance_id == "b2d6e3f0a1"
    assert message.execution_id == "0a3b4c5d6e7f48e9a0b1c2d3e4f5a6b7"
    assert message.episode == 3
    assert message.sequence_number == 7
    assert message.activity_id == "5dc4e0f2-8f3e-4b8a-9f79-0a41e1f5c3d2"
    assert message.sender_instance_id == ""


def test_decode_dtfx_execution_started_sample() -> None:
    message = messages.decode(messages.parse_envelope(json.dumps(DTFX_STARTED)))
    assert message.event == ExecutionStarted(
        timestamp=datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC),
        name="HelloCities",
        instance_id="b2d6e3f0a1",
        execution_id="0a3b4c5d6e7f48e9a0b1c2d3e4f5a6b7",
        input='"seed"',
        version="",
        tags={"team": "blue"},
        generation=0,
    )
    assert message.episode is None


def test_decode_dtfx_failed_completion_with_integer_status() -> None:
    sample = json.loads(json.dumps(DTFX_COMPLETED))
    sample["TaskMessage"]["Event"] = {
        "$type": "DurableTask.Core.History.ExecutionCompletedEvent, DurableTask.Core",
        "OrchestrationStatus": 3,
        "Result": None,
        "FailureDetails": {
            "$type": "DurableTask.Core.FailureDetails, DurableTask.Core",
            "ErrorType": "System.InvalidOperationException",
            "ErrorMessage": "boom",
            "StackTrace": None,
            "InnerFailure": None,
            "IsNonRetriable": False,
            "Properties": None,
        },
        "EventType": 1,
        "EventId": 5,
        "IsPlayed": False,
        "Timestamp": "2024-05-01T10:00:09.0000000Z",
    }
    event = messages.decode(sample).event
    assert isinstance(event, ExecutionCompleted)
    assert event.orchestration_status is OrchestrationStatus.Failed
    assert event.failure_details == FailureDetails("System.InvalidOperationException", "boom")
    assert event.event_id == 5


def test_blob_reference_wrapper() -> None:
    body = messages.encode_blob_reference("inst/message-abc-TaskCompleted.json.gz")
    envelope = messages.parse_envelope(body)
    assert messages.blob_reference(envelope) == "inst/message-abc-TaskCompleted.json.gz"
    assert envelope["TaskMessage"] is None
    assert next(iter(envelope)) == "$type"
    assert "Episode" not in envelope
    assert "Sender" not in envelope
    assert messages.blob_reference(json.loads(messages.encode(_message(EVENTS[6])))) is None


@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        base64.b64encode(b"not json either").decode("ascii"),
        "[1, 2, 3]",
        "{broken",
    ],
    ids=["text", "base64-text", "array", "broken-json"],
)
def test_unreadable_bodies_raise_message_format_error(body: str) -> None:
    with pytest.raises(MessageFormatError):
        messages.parse_envelope(body)


def test_envelope_without_task_message_is_a_format_error() -> None:
    with pytest.raises(MessageFormatError):
        messages.decode({"$type": "DurableTask.AzureStorage.MessageData", "TaskMessage": None})


def _rewound_sample() -> dict[str, Any]:
    sample = json.loads(json.dumps(DTFX_COMPLETED))
    sample["TaskMessage"]["Event"] = {
        "$type": "DurableTask.Core.History.HistoryStateEvent, DurableTask.Core",
        "Reason": "rewind it",
        "ParentExecutionId": None,
        "InstanceId": None,
        "ParentTraceContext": {
            "$type": "DurableTask.Core.Tracing.DistributedTraceContext, DurableTask.Core",
            "TraceParent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "TraceState": None,
        },
        "EventType": 18,
        "EventId": -1,
        "IsPlayed": False,
        "Timestamp": "2024-05-01T10:00:09.0000000Z",
    }
    return sample


def test_unsupported_event_from_a_dtfx_message_becomes_a_storable_row() -> None:
    # §2.2: members of any other type are stored as JSON strings. An event type this
    # version does not model (here HistoryState) still has to fit in a table row.
    event = messages.decode(_rewound_sample()).event
    assert isinstance(event, UnsupportedEvent)
    row = event_to_row(event, partition_key="p", row_key=history_row_key(5), execution_id=EXEC)
    for column, value in row.items():
        assert isinstance(value, (str, int, bool, datetime)), (column, value)
    assert row["EventType"] == "HistoryState"
    assert json.loads(row["ParentTraceContext"])["TraceParent"].startswith("00-0af7")
    back = row_to_event(row)
    assert isinstance(back, UnsupportedEvent)
    assert back.original_type is EventType.HistoryState
    assert back.extra["Reason"] == "rewind it"


def test_unsupported_event_with_integer_status_becomes_a_row() -> None:
    event = UnsupportedEvent(
        timestamp=T0,
        original_type=EventType.ContinueAsNew,
        extra={"OrchestrationStatus": 2, "Result": "5"},
    )
    row = event_to_row(event, partition_key="p", row_key="r", execution_id=EXEC)
    assert row["OrchestrationStatus"] == "ContinuedAsNew"
