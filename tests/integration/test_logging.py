"""Logging with a real worker on Azurite: an orchestrator's log lines appear once per real
execution, not once per replay, for this library's API and for azure-functions-durable
apps; the CLI's ``--log-format json`` prints the records' fields.

Each orchestration runs three activities and logs at each step; the orchestrator also
logs one line on every run of its code (replays included), which shows the replays
really happened. Three worker set-ups: the default (activities run in-process and folded
into the checkpoint), every activity through the work-item queue (one episode per
result, each replaying the history from storage or the cache), and no folding.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from durable_azure import (
    DurableApp,
    DurableClient,
    DurableOrchestrationStatus,
    OrchestrationContext,
    Worker,
    WorkerOptions,
)
from durable_azure.functions import load_function_app

pytestmark = pytest.mark.azurite

APPS = Path(__file__).resolve().parents[1] / "function_apps"
ROOT = Path(__file__).resolve().parents[2]
ORCH = "tests.logging.orchestrator"
EVERY = "tests.logging.every_run"
WAIT = 60.0

app = DurableApp()


@app.activity
def shout(text: str) -> str:
    logging.getLogger(ORCH + ".activity").info("activity ran: %s", text)
    return text.upper()


@app.orchestrator
def logged_steps(ctx: OrchestrationContext) -> Generator[Any, Any, list[str]]:
    logging.getLogger(EVERY).info("entered")
    log = ctx.create_replay_safe_logger(logging.getLogger(ORCH))
    log.info("starting")
    results = []
    for step in range(3):
        result = yield ctx.call_activity(shout, f"step {step}")
        results.append(result)
        log.info("step %d done: %s", step, result)
        if not ctx.is_replaying:
            logging.getLogger(ORCH + ".manual").info("manual %d", step)
    return results


SETUPS = {
    "in-process, folded": {},
    "work-item queue": {"max_local_activities": 0},
    "in-process, not folded": {"fold_window": 0.0},
}


async def start_and_wait(
    durable_app: DurableApp, azurite: Any, task_hub: str, name: str, instance_id: str
) -> DurableOrchestrationStatus:
    async with DurableClient.from_app(
        durable_app, connection_string=azurite.connection_string, task_hub=task_hub
    ) as client:
        await client.start_new(name, instance_id)
        return await client.wait_for_completion(instance_id, timeout=WAIT)


async def run_once(
    durable_app: DurableApp, options: dict[str, Any], azurite: Any, task_hub: str
) -> tuple[str, Any]:
    worker = Worker(
        durable_app,
        connection_string=azurite.connection_string,
        task_hub=task_hub,
        options=WorkerOptions(max_poll_interval=0.5, **options),
    )
    await worker.start()
    try:
        status = await start_and_wait(durable_app, azurite, task_hub, "logged_steps", "logged-1")
    finally:
        await worker.stop()
    assert status.runtime_status.name == "Completed", status.to_json()
    return status.instance_id, status.output


def messages(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    """The INFO messages of logger ``name`` (the SDK warns on the root logger too)."""
    return [r.getMessage() for r in caplog.records if r.name == name and r.levelno == logging.INFO]


@pytest.mark.parametrize("setup", SETUPS)
async def test_replay_safe_logger_logs_each_step_once(
    caplog: pytest.LogCaptureFixture, azurite: Any, task_hub: str, setup: str
) -> None:
    caplog.set_level(logging.INFO, logger="tests.logging")
    instance_id, output = await run_once(app, SETUPS[setup], azurite, task_hub)
    assert output == ["STEP 0", "STEP 1", "STEP 2"]

    assert len(messages(caplog, EVERY)) >= 4  # the code ran again after each result
    assert messages(caplog, ORCH) == [
        "starting",
        "step 0 done: STEP 0",
        "step 1 done: STEP 1",
        "step 2 done: STEP 2",
    ]
    assert messages(caplog, ORCH + ".manual") == ["manual 0", "manual 1", "manual 2"]
    assert messages(caplog, ORCH + ".activity") == [f"activity ran: step {i}" for i in range(3)]
    records = [r for r in caplog.records if r.name == ORCH]
    assert {(r.instance_id, r.orchestration) for r in records} == {(instance_id, "logged_steps")}


@pytest.mark.parametrize("setup", SETUPS)
async def test_function_app_is_replaying_check_logs_each_step_once(
    caplog: pytest.LogCaptureFixture, azurite: Any, task_hub: str, setup: str
) -> None:
    caplog.set_level(logging.WARNING, logger="azure")
    caplog.set_level(logging.WARNING, logger="durable_azure")
    # Last: set_level sets the capturing handler's level too. The app logs with
    # logging.info, on the root logger.
    caplog.set_level(logging.INFO)
    adapter = load_function_app(str(APPS / "replay_logging"))
    instance_id, output = await run_once(adapter.durable_app, SETUPS[setup], azurite, task_hub)
    assert output == [f"STEP {i} OF {instance_id.upper()}" for i in range(3)]

    assert len(messages(caplog, "replay_logging_app.every")) >= 4
    assert messages(caplog, "root") == [
        f"starting {instance_id}",
        *(
            line
            for i in range(3)
            for line in (
                f"activity ran: step {i} of {instance_id}",
                f"step {i} done: STEP {i} OF {instance_id.upper()}",
            )
        ),
    ]


async def test_cli_worker_json_logs_carry_the_event_fields(azurite: Any, task_hub: str) -> None:
    command = [
        sys.executable,
        "-m",
        "durable_azure.cli",
        "--connection",
        azurite.connection_string,
        "--task-hub",
        task_hub,
        "--log-format",
        "json",
        "worker",
        "tests.integration.apps:app",
        "--max-poll-interval",
        "0.5",
    ]
    worker = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        status = await start_and_wait(app, azurite, task_hub, "fails_uncaught", "json-logged")
        assert status.runtime_status.name == "Failed"
        worker.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(worker.communicate(), timeout=60)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    stderr = err.decode()
    assert worker.returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    events = {r.get("event") for r in records}
    assert {"worker.started", "lease.acquired", "worker.stopped"} <= events
    (failed,) = [r for r in records if r.get("event") == "instance.failed"]
    (activity,) = [r for r in records if r.get("event") == "activity.failed"]
    for record in (failed, activity):
        assert record["instance_id"] == "json-logged"
        assert record["level"] == "INFO"
        assert record["logger"] == "durable_azure.runner"
        assert record["partition"].startswith(task_hub.lower() + "-control-")
        assert len(record["execution_id"]) == 32
    assert activity["activity"] == "fail_with"
    assert failed["status"] == "Failed"
    assert "TaskFailedError" in failed["message"]
