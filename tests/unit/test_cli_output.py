"""The command line's tables and progress output (pure formatting)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from durable_azure.cli_output import (
    DETAILS_WIDTH,
    Progress,
    event_details,
    history_table,
    instances_table,
    status_lines,
    table,
    time_cell,
)
from durable_azure.client import history_json
from durable_azure.engine.history import (
    ExecutionCompleted,
    ExecutionStarted,
    FailureDetails,
    OrchestrationStatus,
    OrchestratorStarted,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
)

T0 = datetime(2026, 11, 24, 17, 7, 55, 123456, tzinfo=UTC)


def test_table_aligns_columns_two_spaces_apart_without_trailing_spaces() -> None:
    lines = table(("A", "LONGER"), [("x", None), ("yyyy", "z\nw")])
    assert lines == ["A     LONGER", "x", "yyyy  z w"]


def test_time_cell_shows_utc_to_the_second_or_the_millisecond() -> None:
    assert time_cell("2026-11-24T17:07:55.1234560Z") == "2026-11-24 17:07:55"
    assert time_cell("2026-11-24T18:07:55.123456+01:00", fraction=True) == (
        "2026-11-24 17:07:55.123"
    )
    assert (time_cell(None), time_cell("soon")) == ("", "soon")


def test_instances_table_has_one_aligned_row_per_instance() -> None:
    statuses = [
        {
            "instanceId": "order-1",
            "name": "process_order",
            "runtimeStatus": "Completed",
            "createdTime": "2026-11-24T17:07:55Z",
            "lastUpdatedTime": "2026-11-24T17:08:01Z",
        },
        {
            "instanceId": "order-1000",
            "name": "p",
            "runtimeStatus": "Running",
            "createdTime": None,
            "lastUpdatedTime": None,
        },
    ]
    header, first, second = instances_table(statuses)
    assert header.split("  ")[0].strip() == "INSTANCE ID"
    assert first.split() == [
        "order-1",
        "process_order",
        "Completed",
        "2026-11-24",
        "17:07:55",
        "2026-11-24",
        "17:08:01",
    ]
    assert second.split() == ["order-1000", "p", "Running"]
    # Every column starts at the same offset on every line.
    for column in ("NAME", "STATUS", "CREATED (UTC)"):
        offset = header.index(column)
        assert first[offset - 2 : offset] == "  "
        assert first[offset] != " "


def _history() -> list[dict[str, object]]:
    failure = FailureDetails("ValueError", "bad input")
    events = [
        OrchestratorStarted(timestamp=T0),
        ExecutionStarted(
            timestamp=T0, name="chain", instance_id="i", execution_id="e", input="[1, 2]"
        ),
        TaskScheduled(timestamp=T0, event_id=0, name="say", input='"Tokyo"'),
        TimerCreated(timestamp=T0, event_id=1, fire_at=T0 + timedelta(hours=1)),
        TaskCompleted(timestamp=T0, task_scheduled_id=0, result='"Hello Tokyo!"'),
        TaskFailed(
            timestamp=T0, task_scheduled_id=0, reason=failure.summary(), failure_details=failure
        ),
        ExecutionCompleted(
            timestamp=T0,
            event_id=2,
            orchestration_status=OrchestrationStatus.Failed,
            failure_details=failure,
        ),
    ]
    return history_json(events, show_output=True)


def test_history_table_reads_as_a_timeline() -> None:
    lines = history_table(_history())
    assert lines[0].split() == ["SEQ", "TIMESTAMP", "(UTC)", "EVENT", "TYPE", "NAME", "DETAILS"]
    rows = [line.split(None, 4) for line in lines[1:]]
    assert [r[0] for r in rows] == [str(i) for i in range(7)]
    assert {r[1] + " " + r[2] for r in rows} == {"2026-11-24 17:07:55.123"}
    assert [r[3] for r in rows] == [
        "OrchestratorStarted",
        "ExecutionStarted",
        "TaskScheduled",
        "TimerCreated",
        "TaskCompleted",
        "TaskFailed",
        "ExecutionCompleted",
    ]
    assert rows[1][4] == "chain  input=[1,2]"
    assert rows[2][4] == 'say    #0 input="Tokyo"'
    assert rows[3][4] == "#1 fire at=2026-11-24 18:07:55.123"
    assert rows[4][4] == 'say    #0 result="Hello Tokyo!"'
    assert rows[5][4] == "say    #0 reason=ValueError: bad input"
    assert rows[6][4] == "#2 status=Failed failure=ValueError: bad input"


def test_long_details_are_cut() -> None:
    event = {"EventType": "TaskScheduled", "EventId": 0, "Input": "x" * 500}
    assert len(event_details(event)) > DETAILS_WIDTH
    (_, row) = history_table([event])
    assert row.endswith("...")
    assert len(row.split("  ")[-1].strip()) == DETAILS_WIDTH


def test_status_lines_then_the_history() -> None:
    status = {
        "name": "chain",
        "instanceId": "i",
        "runtimeStatus": "Failed",
        "input": [1, 2],
        "customStatus": {"stage": 2},
        "output": "ValueError: bad input",
        "createdTime": "2026-11-24T17:07:55Z",
        "lastUpdatedTime": "2026-11-24T17:08:55Z",
        "failureDetails": {"errorType": "ValueError", "errorMessage": "bad input"},
        "historyEvents": _history(),
    }
    lines = status_lines(status)
    assert lines[:10] == [
        "instance       i",
        "name           chain",
        "status         Failed",
        "created (UTC)  2026-11-24 17:07:55",
        "updated (UTC)  2026-11-24 17:08:55",
        "input          [1,2]",
        'output         "ValueError: bad input"',
        'custom         {"stage":2}',
        "failure        ValueError: bad input",
        "",
    ]
    assert lines[10].startswith("SEQ")
    assert len(lines) == 11 + 7
    assert status_lines({**status, "historyEvents": None})[-1].startswith("failure")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_terminal_redraws_one_line_with_a_bar() -> None:
    stream, clock = _Stream(tty=True), _Clock()
    progress = Progress("purging", total=10, unit="instances", stream=stream, clock=clock)
    progress.update(0)
    progress.update(5)  # no time passed: not drawn
    clock.now += 2
    progress.update(5)
    clock.now += 2
    progress.update(10)
    progress.close()
    out = stream.getvalue()
    frames = out.split("\r\x1b[K")[1:]
    assert frames[0] == "purging [" + " " * 30 + "]   0% 0/10 instances 0s"
    assert frames[1] == "purging [" + "#" * 15 + " " * 15 + "]  50% 5/10 instances 2s"
    assert frames[2] == "purging [" + "#" * 30 + "] 100% 10/10 instances 4s\n"
    assert len(frames) == 3


def test_progress_elsewhere_prints_a_plain_line_now_and_then() -> None:
    stream, clock = _Stream(tty=False), _Clock()
    progress = Progress("deleting", unit="resources", stream=stream, clock=clock)
    for done in range(1, 6):
        progress.update(done)
        clock.now += 2  # a line at most every 5 s
    progress.close()
    assert stream.getvalue().splitlines() == [
        "deleting: 1 resources 0s",
        "deleting: 4 resources 6s",
        "deleting: 5 resources 10s",
    ]
