"""Date-time columns: written as date-times, read back whether a row holds a date-time or
ISO-8601 text (rows written by another tool, or by hand in Storage Explorer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from durable_azure.engine.history import (
    ExecutionStarted,
    TaskScheduled,
    TimerCreated,
)
from durable_azure.storage.codec import as_datetime, event_to_row, row_to_event
from durable_azure.storage.primitives import Entity
from durable_azure.storage.tracking import InstanceRecord

WHEN = datetime(2026, 11, 24, 16, 54, 9, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (WHEN, WHEN),
        (WHEN.replace(tzinfo=None), WHEN),  # naive means UTC
        ("2026-11-24T16:54:09.1234567Z", WHEN),  # .NET round-trip: 7 digits
        ("2026-11-24T16:54:09.123456+00:00", WHEN),
        ("2026-11-24T17:54:09.123456+01:00", WHEN),
        ("2026-11-24T16:54:09Z", WHEN.replace(microsecond=0)),
        (None, None),
        ("", None),
    ],
)
def test_as_datetime_reads_date_times_and_iso_text(value: object, expected: object) -> None:
    assert as_datetime(value) == expected


@pytest.mark.parametrize("value", ["yesterday", 42])
def test_as_datetime_rejects_what_is_not_a_time(value: object) -> None:
    with pytest.raises(ValueError, match=r"date|time|format"):
        as_datetime(value)


def test_rows_hold_datetimes_and_the_activity_input() -> None:
    scheduled = TaskScheduled(timestamp=WHEN, event_id=0, name="say", input='"Tokyo"')
    row = event_to_row(scheduled, partition_key="i", row_key="0000000000000002", execution_id="e")
    assert row["_Timestamp"] == WHEN
    assert (row["EventType"], row["Name"], row["Input"]) == ("TaskScheduled", "say", '"Tokyo"')
    timer = TimerCreated(timestamp=WHEN, event_id=1, fire_at=WHEN + timedelta(days=3))
    row = event_to_row(timer, partition_key="i", row_key="0000000000000003", execution_id="e")
    assert row["FireAt"] == WHEN + timedelta(days=3)


def test_history_rows_with_text_times_read_as_the_same_events() -> None:
    fire_at = WHEN + timedelta(hours=2)
    timer = TimerCreated(timestamp=WHEN, event_id=1, fire_at=fire_at)
    row = event_to_row(timer, partition_key="i", row_key="0000000000000003", execution_id="e")
    as_text = {**row, "_Timestamp": "2026-11-24T16:54:09.1234560Z", "FireAt": fire_at.isoformat()}
    assert row_to_event(as_text) == row_to_event(row) == timer

    started = ExecutionStarted(
        timestamp=WHEN,
        name="o",
        instance_id="i",
        execution_id="e",
        scheduled_start_time=fire_at,
    )
    row = event_to_row(started, partition_key="i", row_key="0000000000000001", execution_id="e")
    as_text = {**row, "ScheduledStartTime": "2026-11-24T18:54:09.123456Z"}
    assert row_to_event(as_text) == started


def test_a_history_row_without_its_own_time_uses_the_table_timestamp_text() -> None:
    scheduled = TaskScheduled(timestamp=WHEN, event_id=0, name="say")
    row = event_to_row(scheduled, partition_key="i", row_key="0000000000000002", execution_id="e")
    del row["_Timestamp"]
    row["Timestamp"] = "2026-11-24T16:54:09.123456Z"
    assert row_to_event(row).timestamp == WHEN


def test_instances_rows_with_text_times_read_as_datetimes() -> None:
    entity = Entity(
        {
            "PartitionKey": "i",
            "RowKey": "",
            "Name": "o",
            "RuntimeStatus": "Completed",
            "CreatedTime": "2026-11-24T16:54:09.1234567Z",
            "LastUpdatedTime": WHEN + timedelta(seconds=1),
            "CompletedTime": "2026-11-24T17:54:10.123456+01:00",
            "ScheduledStartTime": "",
        },
        etag="*",
    )
    record = InstanceRecord.from_entity("i", entity)
    assert record.created_time == WHEN
    assert record.last_updated_time == WHEN + timedelta(seconds=1)
    assert record.completed_time == WHEN + timedelta(seconds=1)
    assert record.scheduled_start_time is None
