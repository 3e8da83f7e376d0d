"""The ``durable-azure`` command line, run as a real process against Azurite."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.conftest import Hub
from tests.integration.test_orchestrations import expected_chain

pytestmark = pytest.mark.azurite

STATUS_KEYS = {
    "name",
    "instanceId",
    "runtimeStatus",
    "input",
    "output",
    "customStatus",
    "createdTime",
    "lastUpdatedTime",
}


def cli(connection: str, task_hub: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "durable_azure.cli", "--connection", connection,
         "--task-hub", task_hub, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


async def run_cli(hub: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    # The worker runs on this test's event loop, so the CLI runs in a thread meanwhile.
    import asyncio

    return await asyncio.to_thread(cli, hub.connection_string, hub.task_hub, *args)


async def test_start_wait_prints_the_status_payload_and_exits_0(hub: Hub) -> None:
    done = await run_cli(hub, "start", "chain5", "--input", "4", "--id", "cli-1", "--wait", "60")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert set(status) == STATUS_KEYS
    assert status["instanceId"] == "cli-1"
    assert status["runtimeStatus"] == "Completed"
    assert status["input"] == 4
    assert status["output"] == expected_chain(4)


async def test_start_without_wait_prints_the_instance_id(hub: Hub) -> None:
    done = await run_cli(hub, "start", "chain5", "--input", "1")
    assert done.returncode == 0, done.stderr
    instance_id = done.stdout.strip()
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.output == expected_chain(1)


async def test_failed_instance_exits_1_with_its_failure(hub: Hub) -> None:
    done = await run_cli(hub, "start", "fails_uncaught", "--wait", "60")
    assert done.returncode == 1
    status = json.loads(done.stdout)
    assert status["runtimeStatus"] == "Failed"
    assert status["failureDetails"]["errorType"] == "TaskFailedError"
    assert "KeyError" in status["output"]


async def test_status_with_history_lists_the_events(hub: Hub) -> None:
    instance_id = await hub.client.start_new("chain5", client_input=0)
    await hub.client.wait_for_completion(instance_id, timeout=60)
    done = await run_cli(hub, "status", instance_id, "--history")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    kinds = [e["EventType"] for e in status["historyEvents"]]
    assert kinds[:2] == ["OrchestratorStarted", "ExecutionStarted"]
    completed = [e for e in status["historyEvents"] if e["EventType"] == "TaskCompleted"]
    assert [e["FunctionName"] for e in completed] == ["add_step"] * 5
    assert completed[0]["Result"] == {"value": 1, "steps": [0]}


def test_wait_timeout_exits_3(azurite: Any, task_hub: str) -> None:
    # No worker runs on this hub, so the instance stays Pending.
    done = cli(azurite.connection_string, task_hub, "start", "chain5", "--wait", "0.5")
    assert done.returncode == 3
    assert json.loads(done.stdout)["runtimeStatus"] == "Pending"
    assert "still Pending" in done.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["start", "chain5", "--input", "{not json"], 2, "--input is not valid JSON"),
        (["start", "chain5", "--id", ""], 2, "must not be empty"),
        (["status", "no-such-instance"], 1, "no instance with id 'no-such-instance'"),
    ],
)
def test_bad_input_gets_a_clear_error(
    azurite: Any, task_hub: str, args: list[str], code: int, message: str
) -> None:
    done = cli(azurite.connection_string, task_hub, *args)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_invalid_task_hub_name_is_a_clear_error(azurite: Any) -> None:
    done = cli(azurite.connection_string, "bad-hub", "status", "x")
    assert done.returncode == 2
    assert "letters and digits" in done.stderr


def test_azurite_command_runs_the_emulator_until_sigterm() -> None:
    import signal

    from durable_azure import azurite as az

    ports = az.AzuritePorts.from_base(az.find_free_port_base(start=27000))
    proc = subprocess.Popen(
        [sys.executable, "-m", "durable_azure.cli", "azurite", "--port-base", str(ports[0])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        # The command prints the connection string once Azurite answers.
        assert proc.stdout is not None
        for line in proc.stdout:  # ends if the process exits early
            lines.append(line)
            if "QueueEndpoint=" in line:
                break
        assert az.is_answering(az.DEFAULT_HOST, ports), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + output
    assert f"QueueEndpoint=http://127.0.0.1:{ports[1]}/devstoreaccount1" in "".join(lines)
    assert not az.is_answering(az.DEFAULT_HOST, ports)


async def test_lifecycle_commands_mirror_the_client(hub: Hub) -> None:
    instance_id = await hub.client.start_new("waits_for_go")
    done = await run_cli(hub, "raise", instance_id, "go", "--data", '{"n": 1}')
    assert done.returncode == 0, done.stderr
    done = await run_cli(hub, "suspend", instance_id, "--reason", "pause")
    assert done.returncode == 0, done.stderr
    done = await run_cli(hub, "resume", instance_id)
    assert done.returncode == 0, done.stderr
    done = await run_cli(hub, "raise", instance_id, "go", "--data", "2")
    assert done.returncode == 0, done.stderr
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.output == [{"n": 1}, 2]

    stuck = await hub.client.start_new("waits_for_go")
    done = await run_cli(hub, "terminate", stuck, "--reason", "enough")
    assert done.returncode == 0, done.stderr
    assert (await hub.client.wait_for_completion(stuck, timeout=60)).output == "enough"
    done = await run_cli(hub, "raise", stuck, "go")
    assert done.returncode == 1
    assert "it is Terminated" in done.stderr

    done = await run_cli(hub, "restart", instance_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() != instance_id


async def test_list_and_purge_commands(hub: Hub) -> None:
    ids = [await hub.client.start_new("chain5", f"batch-{i}", i) for i in range(3)]
    for instance_id in ids:
        await hub.client.wait_for_completion(instance_id, timeout=60)
    done = await run_cli(hub, "list", "--prefix", "batch-", "--status", "Completed")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "INSTANCE",
        "ID",
        "NAME",
        "STATUS",
        "CREATED",
        "(UTC)",
        "UPDATED",
        "(UTC)",
    ]
    assert sorted(line.split()[0] for line in lines[1:-1]) == ids
    assert lines[-1] == "3 instance(s)"
    done = await run_cli(hub, "list", "--prefix", "batch-", "--json", "--top", "2")
    page = json.loads(done.stdout)
    assert len(page["instances"]) == 2
    assert page["continuation"]

    done = await run_cli(hub, "purge", "--prefix", "batch-")
    assert done.returncode == 2
    assert "--created-before" in done.stderr
    done = await run_cli(hub, "purge", ids[0])
    assert done.returncode == 0, done.stderr
    assert "purged 1 instance(s)" in done.stdout
    done = await run_cli(
        hub, "purge", "--prefix", "batch-", "--created-before", "2100-01-01T00:00:00Z"
    )
    assert done.returncode == 0, done.stderr
    assert "purged 2 instance(s)" in done.stdout
    assert await hub.client.get_status_by(instance_id_prefix="batch-") == []


def test_start_at_needs_a_valid_time(azurite: Any, task_hub: str) -> None:
    done = cli(azurite.connection_string, task_hub, "start", "chain5", "--at", "tomorrow")
    assert done.returncode == 2
    assert "--at is not an ISO-8601 time" in done.stderr


async def test_hub_and_doctor_commands(hub: Hub) -> None:
    instance_id = await hub.client.start_new("chain5", "doc-1", 1)
    await hub.client.wait_for_completion(instance_id, timeout=60)
    info = await run_cli(hub, "hub", "info", "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["instance_counts"]["Completed"] == 1
    assert "hub info" not in info.stderr

    # A crash between the history write and the Instances write: the row says Running.
    await hub.worker.provider.instances.merge(instance_id, {"RuntimeStatus": "Running"})
    found = await run_cli(hub, "doctor", "--stale-after", "0")
    assert found.returncode == 1  # findings, not fixed
    assert instance_id in found.stdout
    fixed = await run_cli(hub, "doctor", "--stale-after", "0", "--fix")
    assert fixed.returncode == 0, fixed.stderr
    assert "fix:" in fixed.stdout
    status = await hub.client.get_status(instance_id)
    assert status.runtime_status.name == "Completed"
    assert status.output == expected_chain(1)

    refused = await run_cli(hub, "hub", "delete")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
