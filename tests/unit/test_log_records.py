"""Logging like a library: no handlers on import, stable event names and fields on the
records, an orchestrator logger that is silent during replay.

The orchestrations run on the real runner, provider and activity code over the in-memory
account (``harness``), so the records checked are those a worker logs.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from harness import Harness

import durable_azure
from durable_azure import logevents
from durable_azure.engine.context import OrchestrationContext
from durable_azure.testing.memory import MemoryStorageAccount

Orch = Generator[Any, Any, Any]
PACKAGE = Path(durable_azure.__file__).parent
ORCH_LOGGER = "tests.unit.orchestrator"


# --- no handlers, no root configuration ----------------------------------------------------


def test_importing_every_module_adds_no_handler_and_leaves_the_root_logger_alone() -> None:
    # A fresh interpreter: pytest's own capture handlers sit on the root logger here.
    code = (
        "import importlib, logging, pkgutil, durable_azure\n"
        "skip = ('durable_azure.http', 'durable_azure.functions', 'durable_azure.dashboard')\n"
        "for m in pkgutil.walk_packages(durable_azure.__path__, 'durable_azure.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ImportError:\n"
        "        if not m.name.startswith(skip): raise  # optional extras may be missing\n"
        "loggers = [logging.getLogger()] + [l for n, l in logging.root.manager.loggerDict"
        ".items() if n.startswith('durable_azure') and isinstance(l, logging.Logger)]\n"
        "print(sum(len(l.handlers) for l in loggers), logging.getLogger().level,"
        " len(loggers) > 10)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    handlers, root_level, many = done.stdout.split()
    assert (handlers, root_level, many) == ("0", str(logging.WARNING), "True"), done.stderr


def _calls_in(path: Path, names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in names
        ):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.func.attr}")
    return found


def test_only_the_command_line_configures_logging() -> None:
    # The CLI entry point configures its own process; the library never does.
    allowed = {PACKAGE / "cli.py"}
    found = [
        call
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed
        for call in _calls_in(path, {"basicConfig", "addHandler", "dictConfig", "fileConfig"})
    ]
    assert found == []


def test_event_names_are_unique_dotted_and_lowercase() -> None:
    names = {
        attr: value
        for attr, value in vars(logevents).items()
        if attr.isupper() and isinstance(value, str)
    }
    assert len(names) >= 20
    assert len(set(names.values())) == len(names)
    for value in names.values():
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", value), value


# --- records and their fields --------------------------------------------------------------


def double(x: int) -> int:
    return x * 2


def refuse(x: int) -> int:
    raise ValueError(f"no {x}")


def doubles_then_fails(ctx: OrchestrationContext) -> Orch:
    value = yield ctx.call_activity("double", ctx.get_input())
    yield ctx.call_activity("refuse", value)  # uncaught: the orchestration fails
    return value


def chain3(ctx: OrchestrationContext) -> Orch:
    value = ctx.get_input()
    for _ in range(3):
        value = yield ctx.call_activity("double", value)
    return value


def by_event(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


async def test_lifecycle_records_carry_event_instance_execution_and_partition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="durable_azure")
    harness = Harness(
        {"doubles_then_fails": doubles_then_fails}, {"double": double, "refuse": refuse}
    )
    instance_id = await harness.start("doubles_then_fails", "logged-1", 4)
    await harness.drain()
    history = await harness.provider.load_history(instance_id)
    partition = harness.names.control_queue(harness.names.partition_of(instance_id))

    started = by_event(caplog, logevents.INSTANCE_STARTED)
    failed = by_event(caplog, logevents.INSTANCE_FAILED)
    activity_failed = by_event(caplog, logevents.ACTIVITY_FAILED)
    activity_done = by_event(caplog, logevents.ACTIVITY_COMPLETED)
    episodes = by_event(caplog, logevents.EPISODE_COMPLETED)
    # Once per recorded event: the checkpoint logs them, never a replay.
    assert (len(started), len(failed), len(activity_failed), len(activity_done)) == (1, 1, 1, 1)
    assert len(episodes) == 3  # start, first result, second result (queue path)
    for record in [*started, *failed, *activity_failed, *activity_done, *episodes]:
        assert record.instance_id == instance_id
        assert record.execution_id == history.execution_id
        assert record.partition == partition
    assert started[0].orchestration == "doubles_then_fails"
    assert (started[0].levelno, activity_done[0].levelno) == (logging.DEBUG, logging.DEBUG)
    assert (failed[0].levelno, activity_failed[0].levelno) == (logging.INFO, logging.INFO)
    assert failed[0].status == "Failed"
    assert (activity_failed[0].activity, activity_failed[0].task_id) == ("refuse", 1)
    assert "ValueError: no 8" in activity_failed[0].getMessage()
    assert (activity_done[0].activity, activity_done[0].task_id) == ("double", 0)


async def test_a_successful_orchestration_logs_nothing_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="durable_azure")
    harness = Harness({"chain3": chain3}, {"double": double})
    instance_id = await harness.start("chain3", "quiet-1", 1)
    await harness.drain()
    assert await harness.output(instance_id) == 8
    assert [r.getMessage() for r in caplog.records if r.name.startswith("durable_azure")] == []


async def test_worker_records_name_the_worker_and_the_partitions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from durable_azure import DurableApp, Worker, WorkerOptions

    caplog.set_level(logging.INFO, logger="durable_azure")
    app = DurableApp(task_hub="LogHub", partition_count=2)
    worker = Worker(app, account=MemoryStorageAccount(), options=WorkerOptions(wake_ups=False))
    await worker.start()
    await worker.stop()
    (started,) = by_event(caplog, logevents.WORKER_STARTED)
    (stopped,) = by_event(caplog, logevents.WORKER_STOPPED)
    assert started.worker_id == stopped.worker_id == worker.worker_id
    acquired = by_event(caplog, logevents.LEASE_ACQUIRED)
    released = by_event(caplog, logevents.LEASE_RELEASED)
    queues = {"loghub-control-00", "loghub-control-01"}
    assert {r.partition for r in acquired} == queues
    assert queues <= {getattr(r, "partition", None) for r in released}
    assert all(r.worker_id == worker.worker_id for r in acquired + released)


def test_json_formatter_writes_one_object_with_the_extra_fields() -> None:
    logger = logging.getLogger("tests.unit.json")
    try:
        raise KeyError("k")
    except KeyError:
        record = logger.makeRecord(
            logger.name,
            logging.WARNING,
            __file__,
            1,
            "episode of %s failed",
            ("i-1",),
            sys.exc_info(),
            extra=logevents.fields(
                logevents.EPISODE_FAILED, instance_id="i-1", execution_id=None, partition="p"
            ),
        )
    line = logevents.JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "episode of i-1 failed"
    assert (data["level"], data["logger"]) == ("WARNING", "tests.unit.json")
    assert (data["event"], data["instance_id"], data["partition"]) == (
        "episode.failed",
        "i-1",
        "p",
    )
    assert "execution_id" not in data  # None fields are left out
    assert "KeyError: 'k'" in data["exception"]
    assert data["time"].endswith("+00:00")


# --- the orchestrator's own logger ---------------------------------------------------------


def logged_chain(ctx: OrchestrationContext) -> Orch:
    log = ctx.create_replay_safe_logger(logging.getLogger(ORCH_LOGGER))
    logging.getLogger(ORCH_LOGGER + ".every").info("entered")  # logged on every replay
    log.info("starting with %s", ctx.get_input(), extra={"step": -1})
    value = ctx.get_input()
    for step in range(3):
        value = yield ctx.call_activity("double", value)
        log.info("step %d gave %d", step, value, extra={"step": step})
        if not ctx.is_replaying:  # how azure-functions-durable code usually writes it
            logging.getLogger(ORCH_LOGGER + ".manual").info("manual %d", step)
    return value


@pytest.mark.parametrize("cache_size", [1000, 0])
async def test_replay_safe_logger_logs_each_message_once(
    caplog: pytest.LogCaptureFixture, cache_size: int
) -> None:
    caplog.set_level(logging.INFO, logger=ORCH_LOGGER)
    harness = Harness({"logged_chain": logged_chain}, {"double": double}, cache_size=cache_size)
    instance_id = await harness.start("logged_chain", "replayed-1", 1)
    await harness.drain()
    assert await harness.output(instance_id) == 8

    def messages(name: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == name]

    # The code ran 4 times (start + one episode per result), replaying what came before.
    assert messages(ORCH_LOGGER + ".every") == ["entered"] * 4
    assert messages(ORCH_LOGGER) == [
        "starting with 1",
        "step 0 gave 2",
        "step 1 gave 4",
        "step 2 gave 8",
    ]
    assert messages(ORCH_LOGGER + ".manual") == ["manual 0", "manual 1", "manual 2"]
    records = [r for r in caplog.records if r.name == ORCH_LOGGER]
    assert [r.step for r in records] == [-1, 0, 1, 2]  # the call's own extra is kept
    assert {(r.instance_id, r.orchestration) for r in records} == {(instance_id, "logged_chain")}


def test_replay_safe_logger_follows_is_replaying_and_the_level() -> None:
    ctx = OrchestrationContext("i-2", name="orch")
    inner = logging.getLogger(ORCH_LOGGER + ".direct")
    inner.setLevel(logging.INFO)
    try:
        log = ctx.create_replay_safe_logger(inner)
        ctx.is_replaying = True
        assert not log.isEnabledFor(logging.ERROR)
        ctx.is_replaying = False
        assert log.isEnabledFor(logging.INFO)
        assert not log.isEnabledFor(logging.DEBUG)
    finally:
        inner.setLevel(logging.NOTSET)


def test_fields_leave_out_none_values_and_put_the_event_first() -> None:
    assert logevents.fields("x.y", a=1, b=None, c="c") == {"event": "x.y", "a": 1, "c": "c"}
    assert list(logevents.fields("x.y", a=1)) == ["event", "a"]
