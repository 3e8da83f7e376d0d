"""The command line's output for people, run as a real process against Azurite: the status
and history table, and progress on stderr for purge-by-filter and hub delete (plain lines
when stderr is not a terminal, a bar redrawn in place when it is)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
from typing import Any

import pytest

from durable_azure.hub import hub_resource_names
from durable_azure.storage.names import TaskHubNames
from tests.integration.conftest import Hub
from tests.integration.test_cli import cli, run_cli

pytestmark = pytest.mark.azurite


async def completed_chains(hub: Hub, prefix: str, count: int) -> list[str]:
    """Run ``count`` chain5 instances ``{prefix}0``... to completion; their ids."""
    ids = [await hub.client.start_new("chain5", f"{prefix}{i}", i) for i in range(count)]
    for instance_id in ids:
        await hub.client.wait_for_completion(instance_id, timeout=60)
    return ids


def columns(header: str, row: str) -> list[str]:
    """A table row cut at the header's column offsets (a cell may be empty)."""
    starts = [m.start() for m in re.finditer(r"(?<!\S)\S+(?: \S+)*", header)]
    ends = [*starts[1:], None]
    return [row[a:b].strip() for a, b in zip(starts, ends, strict=True)]


async def test_status_table_with_history(hub: Hub) -> None:
    instance_id = await hub.client.start_new("chain5", "table-1", 3)
    await hub.client.wait_for_completion(instance_id, timeout=60)
    status = await hub.client.get_status(instance_id, show_history=True, show_history_output=True)
    history = status.history
    assert history is not None

    done = await run_cli(hub, "status", instance_id, "--history", "--format", "table")
    assert done.returncode == 0, done.stderr
    summary, table = done.stdout.split("\n\n")
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in summary.splitlines())
    assert fields["instance"] == instance_id
    assert fields["name"] == "chain5"
    assert fields["status"] == "Completed"
    assert fields["input"] == "3"
    assert json.loads(fields["output"]) == {"value": 127, "steps": [3, 7, 15, 31, 63]}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", fields["created (UTC)"])

    header, *rows = table.splitlines()
    assert header.split() == ["SEQ", "TIMESTAMP", "(UTC)", "EVENT", "TYPE", "NAME", "DETAILS"]
    assert len(rows) == len(history)
    cells = [columns(header, row) for row in rows]
    assert [c[0] for c in cells] == [str(i) for i in range(len(history))]
    assert [c[2] for c in cells] == [e["EventType"] for e in history]
    scheduled = [c for c in cells if c[2] == "TaskScheduled"]
    assert [c[3] for c in scheduled] == ["add_step"] * 5
    assert scheduled[0][4] == '#0 input={"value":3,"steps":[]}'
    completed = [c for c in cells if c[2] == "TaskCompleted"]
    assert completed[-1][4] == '#4 result={"value":127,"steps":[3,7,15,31,63]}'
    (ended,) = [c for c in cells if c[2] == "ExecutionCompleted"]
    assert ended[4] == '#5 status=Completed result={"value":127,"steps":[3,7,15,31,63]}'

    as_json = await run_cli(hub, "status", instance_id, "--history", "--json")
    assert json.loads(as_json.stdout)["historyEvents"] == history


async def test_list_formats(hub: Hub) -> None:
    ids = await completed_chains(hub, "fmt-", 2)
    table = await run_cli(hub, "list", "--prefix", "fmt-", "--format", "table")
    assert table.returncode == 0, table.stderr
    header, *rows, count = table.stdout.splitlines()
    assert header.split()[:3] == ["INSTANCE", "ID", "NAME"]
    assert sorted(r.split()[:3] for r in rows) == [[i, "chain5", "Completed"] for i in ids]
    assert count == "2 instance(s)"
    as_json = await run_cli(hub, "list", "--prefix", "fmt-", "--format", "json")
    assert sorted(s["instanceId"] for s in json.loads(as_json.stdout)["instances"]) == ids


async def test_purge_by_filter_reports_progress_as_plain_lines(hub: Hub) -> None:
    await completed_chains(hub, "old-", 3)
    done = await run_cli(
        hub, "purge", "--prefix", "old-", "--created-before", "2100-01-01T00:00:00Z"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["purged 3 instance(s)"]
    lines = done.stderr.splitlines()
    assert lines  # stderr is a pipe here: no \r, no escape codes
    assert all(re.fullmatch(r"purging: \d+ instances \d+s", line) for line in lines), lines
    assert lines[-1].startswith("purging: 3 instances")
    assert await hub.client.get_status_by(instance_id_prefix="old-") == []


def _run_with_tty_stderr(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; returns (exit code, stdout, stderr)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "durable_azure.cli", *args],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        os.close(slave)
        stdout, _ = proc.communicate(timeout=120)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    return proc.returncode, stdout, b"".join(chunks).decode()


async def test_purge_on_a_terminal_draws_a_bar_over_the_counted_total(hub: Hub) -> None:
    await completed_chains(hub, "bar-", 2)
    args = ["--connection", hub.connection_string, "--task-hub", hub.task_hub, "purge"]
    args += ["--prefix", "bar-", "--created-before", "2100-01-01T00:00:00Z"]
    code, stdout, stderr = await asyncio.to_thread(_run_with_tty_stderr, args)
    assert code == 0, stderr
    assert stdout.splitlines() == ["purged 2 instance(s)"]
    frames = [f for f in stderr.replace("\r\n", "\n").split("\r\x1b[K") if f]
    assert re.fullmatch(r"purging \[#{30}\] 100% 2/2 instances \d+s\n", frames[-1]), frames
    assert "\n" not in "".join(frames[:-1])  # redrawn in place, one line in all
    assert await hub.client.get_status_by(instance_id_prefix="bar-") == []


def test_hub_delete_reports_each_resource(azurite: Any, task_hub: str) -> None:
    created = cli(azurite.connection_string, task_hub, "hub", "create")
    assert created.returncode == 0, created.stderr
    done = cli(azurite.connection_string, task_hub, "hub", "delete", "--yes")
    assert done.returncode == 0, done.stderr
    total = sum(len(v) for v in hub_resource_names(TaskHubNames(task_hub, 4)).values())
    lines = done.stderr.splitlines()
    assert lines
    # The total is known: a bar on every line (no terminal: a line now and then, and last).
    bar = rf"deleting \[[# ]{{30}}\] +\d+% \d+/{total} resources \d+s"
    assert all(re.fullmatch(bar, line) for line in lines), lines
    assert lines[-1].startswith(f"deleting [{'#' * 30}] 100% {total}/{total} resources")
    deleted = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("deleted")]
    assert task_hub + "History" in deleted
    assert done.stdout.splitlines()[-1] == f"{len(deleted)} resource(s) of {task_hub!r} deleted"
