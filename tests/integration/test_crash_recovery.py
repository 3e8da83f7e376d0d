"""Crash recovery with real worker processes on Azurite.

A worker subprocess (the ``durable-azure worker`` command) runs ``worker_app``; its
activities log every execution to a file.
The tests stop it mid-run - SIGKILL, or SIGTERM for a graceful stop - start a fresh
worker, and check that the instances complete with exactly the right outputs and that
their histories are clean: one TaskScheduled per task id, exactly one completion for each,
and every activity that ran before the stop accounted for. Activities may run more than
once (at-least-once delivery); the count is printed, not asserted.

Both workers use a short message visibility (set at receive time, so the killed worker
needs it too): the messages the killed worker held become visible again after it, not
after the default 5 minutes. The killed worker's activities sleep longer (0.5 s) than the
new worker's, so the kill lands while activities are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from durable_azure import DurableClient, OrchestrationStatus, StorageSettings, WaitTimeoutError
from durable_azure.engine.history import (
    ExecutionCompleted,
    ExecutionStarted,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
)

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parents[1]
APP_SPEC = "tests.integration.worker_app:app"

VISIBILITY = 4.0  # seconds a received message stays hidden (the default is 5 minutes)
GRACE = 10.0  # shutdown grace of the workers, seconds
LEASE = 3.0  # partition lease: a killed worker's partitions move to the new one after it
SLOW_SLEEP = 0.5  # activity duration in the worker that gets stopped
FAST_SLEEP = 0.05  # activity duration in the recovering worker
MID_RUN_TIMEOUT = 30.0  # bound for "some activities have run"
COMPLETION_TIMEOUT = 60.0  # bound for an instance to complete after recovery


def _load_worker_app() -> ModuleType:
    # By path: tests/ is not a package, and this must not depend on pytest's import mode.
    spec = importlib.util.spec_from_file_location("crash_worker_app", HERE / "worker_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker_app = _load_worker_app()


# --- worker subprocesses -----------------------------------------------------------------


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    output: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.output.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Harness:
    connection_string: str
    task_hub: str
    log_path: Path
    tmp_path: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def spawn(self, *, activity_sleep: float, max_activities: int | None = None) -> WorkerProcess:
        env = dict(os.environ)
        env[worker_app.LOG_ENV] = str(self.log_path)
        env[worker_app.SLEEP_ENV] = str(activity_sleep)
        env.pop("AZURE_STORAGE_CONNECTION_STRING", None)
        cmd = [
            sys.executable,
            "-m",
            "durable_azure.cli",
            "--connection",
            self.connection_string,
            "--task-hub",
            self.task_hub,
            "worker",
            APP_SPEC,
            "--visibility-timeout",
            str(VISIBILITY),
            "--shutdown-grace",
            str(GRACE),
            "--max-poll-interval",
            "0.5",
            "--lease-seconds",
            str(LEASE),
        ]
        if max_activities is not None:
            cmd += ["--max-activities", str(max_activities)]
        output = self.tmp_path / f"worker-{len(self.workers)}.out"
        with output.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        worker = WorkerProcess(proc, output)
        self.workers.append(worker)
        return worker

    def diagnostics(self) -> str:
        parts = []
        for w in self.workers:
            state = "running" if w.proc.poll() is None else f"exit code {w.proc.returncode}"
            parts.append(f"--- worker pid {w.pid} ({state}), last output:\n{w.tail()}")
        return "\n".join(parts)

    def records(self) -> list[dict[str, Any]]:
        return list(worker_app.read_log(str(self.log_path)))

    def kill_all(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=10)


@pytest.fixture
def harness(azurite: Any, task_hub: Any, tmp_path: Path) -> Iterator[Harness]:
    """Worker subprocesses for this test's task hub; all are killed at teardown (before the
    hub's resources are deleted, as this fixture is set up after ``task_hub``)."""
    h = Harness(
        connection_string=str(azurite.connection_string),
        task_hub=str(getattr(task_hub, "name", task_hub)),
        log_path=tmp_path / "activities.log",
        tmp_path=tmp_path,
    )
    try:
        yield h
    finally:
        h.kill_all()


def _client(h: Harness) -> DurableClient:
    return DurableClient.from_settings(
        StorageSettings.resolve(connection_string=h.connection_string, task_hub=h.task_hub)
    )


async def _wait_for_log(
    h: Harness, what: str, predicate: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Poll the activity log until ``predicate`` holds; fail clearly after a bound."""
    deadline = time.monotonic() + MID_RUN_TIMEOUT
    while True:
        records = h.records()
        if predicate(records):
            return records
        dead = [w for w in h.workers if w.proc.poll() is not None]
        if dead:
            pytest.fail(f"a worker exited while waiting for {what}\n{h.diagnostics()}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"no {what} within {MID_RUN_TIMEOUT} s ({len(records)} activity executions "
                f"logged)\n{h.diagnostics()}"
            )
        await asyncio.sleep(0.05)


def _done(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["phase"] == "done"]


def _count(records: list[dict[str, Any]], instance_id: str) -> int:
    """How many distinct activities of the instance have run to completion."""
    return len({r["input"] for r in _done(records) if r["instance"] == instance_id})


async def _wait_completed(client: DurableClient, h: Harness, instance_id: str) -> Any:
    try:
        status = await client.wait_for_completion(instance_id, timeout=COMPLETION_TIMEOUT)
    except WaitTimeoutError as exc:
        pytest.fail(
            f"{instance_id} still {exc.status.runtime_status.name} after "
            f"{COMPLETION_TIMEOUT} s\n{h.diagnostics()}"
        )
    assert status.runtime_status is OrchestrationStatus.Completed, (
        f"{instance_id} ended {status.runtime_status.name}: {status.failure_details}"
    )
    return status.output


def _activity_key(scheduled: TaskScheduled) -> tuple[str, str]:
    data = json.loads(scheduled.input or "null")
    if scheduled.name == "chain_step":
        return data["instance"], f"chain:{data['step']}"
    assert scheduled.name == "fanout_item", scheduled.name
    return data["instance"], f"fanout:{data['index']}"


async def _check_history(
    client: DurableClient,
    instance_id: str,
    expected_results: dict[str, Any],
    records: list[dict[str, Any]],
) -> set[tuple[str, str]]:
    """The history of a completed instance is clean and matches the activity log.

    ``expected_results`` maps each activity key (``chain:3``, ``fanout:42``) to the result
    its TaskCompleted must carry. Returns the (instance, key) pairs completed in history.
    """
    events = (await client.provider.load_history(instance_id)).events
    assert sum(isinstance(e, ExecutionStarted) for e in events) == 1
    assert sum(isinstance(e, ExecutionCompleted) for e in events) == 1

    scheduled = [e for e in events if isinstance(e, TaskScheduled)]
    ids = Counter(e.event_id for e in scheduled)
    assert not [i for i, n in ids.items() if n > 1], f"duplicate TaskScheduled ids: {ids}"

    completions = Counter(
        e.task_scheduled_id for e in events if isinstance(e, (TaskCompleted, TaskFailed))
    )
    repeated = {i: n for i, n in completions.items() if n > 1}
    assert not repeated, f"task ids completed more than once: {repeated}"
    assert set(completions) == set(ids), (
        f"scheduled without completion: {sorted(set(ids) - set(completions))}; "
        f"completed without being scheduled: {sorted(set(completions) - set(ids))}"
    )
    failed = [e for e in events if isinstance(e, TaskFailed)]
    assert not failed, f"activities failed: {[e.reason for e in failed]}"

    key_of = {e.event_id: _activity_key(e) for e in scheduled}
    assert all(inst == instance_id for inst, _ in key_of.values())
    keys = {key for _, key in key_of.values()}
    assert keys == set(expected_results), "the history scheduled the wrong activities"
    completed: set[tuple[str, str]] = set()
    for event in events:
        if isinstance(event, TaskCompleted):
            _, key = key_of[event.task_scheduled_id]
            assert json.loads(event.result or "null") == expected_results[key], key
            completed.add((instance_id, key))

    # Every activity in the history ran to completion at least once, and nothing else ran.
    for phase in ("start", "done"):
        logged = {
            r["input"] for r in records if r["instance"] == instance_id and r["phase"] == phase
        }
        assert logged == keys, (
            f"in history but no {phase!r} logged: {sorted(keys - logged)}; "
            f"{phase!r} logged but not in history: {sorted(logged - keys)}"
        )
    return completed


def _report_duplicates(label: str, records: list[dict[str, Any]], stopped_pid: int) -> None:
    """Print how many activities ran more than once (allowed: at-least-once delivery)."""
    starts = Counter((r["instance"], r["input"]) for r in records if r["phase"] == "start")
    dones = Counter((r["instance"], r["input"]) for r in _done(records))
    stopped = {(r["instance"], r["input"], r["phase"]) for r in records if r["pid"] == stopped_pid}
    cut_off = sorted(k for (*k, p) in stopped if p == "start" and (*k, "done") not in stopped)
    twice_started = sorted(k for k, n in starts.items() if n > 1)
    twice_done = sorted(k for k, n in dones.items() if n > 1)
    print(
        f"\n[{label}] {len(starts)} activities, {sum(starts.values())} executions started, "
        f"{sum(dones.values())} finished; the stopped worker (pid {stopped_pid}) finished "
        f"{sum(1 for *_, p in stopped if p == 'done')} and was cut off in {len(cut_off)}; "
        f"started more than once: {len(twice_started)}; finished more than once: "
        f"{len(twice_done)} {[k[1] for k in twice_done]}"
    )


def _chain_expected(start: int) -> dict[str, Any]:
    return {f"chain:{i}": v for i, v in enumerate(worker_app.expected_chain10(start))}


def _fanout_expected() -> dict[str, Any]:
    return {f"fanout:{i}": worker_app.fanout_item_value(i) for i in range(worker_app.FANOUT_WIDTH)}


# --- tests -------------------------------------------------------------------------------


async def test_sigkill_mid_run_then_new_worker_completes(harness: Harness) -> None:
    h = harness
    async with _client(h) as client:
        victim = h.spawn(activity_sleep=SLOW_SLEEP, max_activities=8)
        chain = await client.start_new("chain10", None, 5)
        # Let the chain get going first: its later steps then queue behind the fan-out.
        await _wait_for_log(h, "chain10 progress", lambda rs: _count(rs, chain) >= 2)
        fanout = await client.start_new("fanout100")
        await _wait_for_log(h, "fanout100 progress", lambda rs: _count(rs, fanout) >= 16)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        at_kill = h.records()  # the final word of the killed process
        assert 2 <= _count(at_kill, chain) < worker_app.CHAIN_LENGTH, (
            "the kill did not land in the middle of chain10"
        )
        assert 16 <= _count(at_kill, fanout) < worker_app.FANOUT_WIDTH, (
            "the kill did not land in the middle of fanout100"
        )

        h.spawn(activity_sleep=FAST_SLEEP)
        chain_output = await _wait_completed(client, h, chain)
        fanout_output = await _wait_completed(client, h, fanout)

        assert chain_output == worker_app.expected_chain10(5)
        assert fanout_output == worker_app.expected_fanout100()
        records = h.records()
        completed = await _check_history(client, chain, _chain_expected(5), records)
        completed |= await _check_history(client, fanout, _fanout_expected(), records)
        # Everything the killed worker finished has its completion in the history.
        finished_before_kill = {(r["instance"], r["input"]) for r in _done(at_kill)}
        assert finished_before_kill <= completed
        _report_duplicates("SIGKILL", records, victim.pid)


async def test_sigterm_mid_fanout_exits_cleanly_and_new_worker_completes(
    harness: Harness,
) -> None:
    h = harness
    async with _client(h) as client:
        first = h.spawn(activity_sleep=SLOW_SLEEP, max_activities=8)
        fanout = await client.start_new("fanout100")
        await _wait_for_log(h, "fanout100 progress", lambda rs: _count(rs, fanout) >= 16)
        first.proc.send_signal(signal.SIGTERM)
        try:
            code = first.proc.wait(timeout=GRACE + 20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit after SIGTERM\n{h.diagnostics()}")
        assert code == 0, f"exit code {code} after SIGTERM\n{h.diagnostics()}"
        assert _count(h.records(), fanout) < worker_app.FANOUT_WIDTH, (
            "the fan-out finished before SIGTERM; the test needs it mid-run"
        )

        # A graceful stop leaves nothing hidden in the control queues: in-flight episodes
        # finished and leftover messages were abandoned with no delay.
        for queue in client.provider.control_queues:
            count = await queue.queue.approximate_count()
            if count <= 32:
                visible = await queue.queue.peek(32)
                assert len(visible) == count, (
                    f"{count - len(visible)} message(s) in {queue.name} still invisible "
                    "after a graceful stop"
                )

        h.spawn(activity_sleep=FAST_SLEEP)
        output = await _wait_completed(client, h, fanout)
        assert output == worker_app.expected_fanout100()
        records = h.records()
        await _check_history(client, fanout, _fanout_expected(), records)
        _report_duplicates("SIGTERM", records, first.pid)


async def test_sigterm_starts_no_new_activity(harness: Harness) -> None:
    """After SIGTERM a worker finishes what it runs but takes no new work.

    Two activity slots, both busy with 3-second activities when SIGTERM arrives, so no
    new activity can legitimately start before the signal is handled.
    """
    h = harness
    async with _client(h) as client:
        worker = h.spawn(activity_sleep=3.0, max_activities=2)
        await client.start_new("fanout100")

        def started(records: list[dict[str, Any]]) -> set[str]:
            return {r["input"] for r in records if r["phase"] == "start"}

        before = started(
            await _wait_for_log(h, "two started activities", lambda rs: len(started(rs)) >= 2)
        )
        worker.proc.send_signal(signal.SIGTERM)
        try:
            code = worker.proc.wait(timeout=GRACE + 20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit after SIGTERM\n{h.diagnostics()}")
        assert code == 0, f"exit code {code} after SIGTERM\n{h.diagnostics()}"
        after = started(h.records()) - before
        assert not after, (
            f"the worker started {len(after)} new activities after SIGTERM: {sorted(after)}"
        )


async def test_timers_and_events_survive_a_sigkill(harness: Harness) -> None:
    """A durable timer pending and an event raised while no worker runs: both are
    delivered after the worker is SIGKILLed and a new one starts."""
    h = harness
    async with _client(h) as client:
        first = h.spawn(activity_sleep=FAST_SLEEP)
        instance_id = await client.start_new("timer_then_event", client_input=3)
        for _ in range(200):  # wait until the timer is created (committed in history)
            events = (await client.provider.load_history(instance_id)).events
            if any(type(e).__name__ == "TimerCreated" for e in events):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the timer was never created\n{h.diagnostics()}")
        first.proc.kill()
        first.proc.wait(timeout=10)

        # Raised while no worker is running, before the timer has even fired.
        await client.raise_event(instance_id, "answer", "yes")
        h.spawn(activity_sleep=FAST_SLEEP)
        output = await _wait_completed(client, h, instance_id)
        assert output == {"answer": "yes", "woke_at_or_after": 3}
        events = (await client.provider.load_history(instance_id)).events
        kinds = [type(e).__name__ for e in events]
        assert kinds.count("TimerFired") == 1
        assert kinds.count("EventRaised") == 1
        fired = next(e for e in events if type(e).__name__ == "TimerFired")
        started = events[0].timestamp
        assert fired.fire_at - started >= timedelta(seconds=3)
