"""Chaos: mixed orchestrations while workers are SIGKILLed and Azurite restarts.

The test runs its own Azurite (a fixed workspace, so it can be restarted with its data)
and three ``durable-azure worker`` subprocesses sharing 8 control-queue partitions through
3-second leases. It starts a mix of orchestrations (see ``chaos_app``), then, while they
run, SIGKILLs a random worker every few seconds and starts a replacement, restarts Azurite
once (gracefully), and raises the external events the waiters need (retrying while storage
is unavailable). Once every instance is terminal it checks:

* every orchestration (and sub-orchestration) Completed with exactly the right output;
* none is left Pending or Running (a bounded wait, failing with the stuck instances);
* every event waiter got its event (output and an ``EventRaised`` in its history);
* no history completes a task id twice (one TaskCompleted / SubOrchestrationInstance-
  Completed / TimerFired per id) and each has exactly one ExecutionStarted/Completed;
* every activity an instance needs ran (the activity log) and nothing else ran.

Duplicate activity executions (allowed: at-least-once delivery), kills and the wall time
are printed, not asserted. ``CHAOS_INSTANCES`` overrides the number of instances (60).
``run_long.py`` next to this file runs the same code for longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from durable_azure import DurableClient, OrchestrationStatus, StorageSettings
from durable_azure import azurite as az
from durable_azure.engine.history import (
    EventRaised,
    ExecutionCompleted,
    ExecutionStarted,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from durable_azure.errors import (
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
)
from tests.chaos import chaos_app

PROJECT_ROOT = Path(__file__).resolve().parents[2]
APP_SPEC = "tests.chaos.chaos_app:app"
TASK_HUB = "chaoshub"
PARTITIONS = 8
WORKERS = 3
LEASE = 3.0
VISIBILITY = 5.0
GRACE = 5.0
MAX_POLL = 0.5


@dataclass
class ChaosConfig:
    instances: int = 60
    kills: int = 4  # SIGKILLs (each followed by a replacement worker)
    kill_interval: float = 3.0  # seconds between kills
    azurite_restart_at: float = 7.0  # seconds after the starts; None: no restart
    start_spread: float = 0.0  # seconds over which the starts are spread
    event_delay: float = 10.0  # events are raised 0..event_delay s after their start
    completion_timeout: float = 180.0  # bound for all instances to be terminal
    activity_sleep: float = 0.1
    seed: int = 12345


@dataclass
class ChaosResult:
    wall_time: float = 0.0
    kills: int = 0
    azurite_restarts: int = 0
    raise_retries: int = 0
    start_retries: int = 0
    instances: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (kind, seed)
    statuses: dict[str, Any] = field(default_factory=dict)  # id -> DurableOrchestrationStatus
    stuck: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # not Completed, or a wrong output
    lost_events: list[str] = field(default_factory=list)
    history_problems: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)
    duplicate_executions: dict[tuple[str, str], int] = field(default_factory=dict)
    same_pid_repeats: int = 0  # duplicate runs of one activity by one worker process
    killed_pids: set[int] = field(default_factory=set)
    repeats_after_kill: int = 0  # duplicates with a first run by a worker later killed
    executions: int = 0
    diagnostics: str = ""

    @property
    def completed(self) -> int:
        return sum(
            1 for s in self.statuses.values() if s.runtime_status is OrchestrationStatus.Completed
        )

    def problems(self) -> list[str]:
        out = []
        if self.stuck:
            out.append(f"{len(self.stuck)} instance(s) not terminal: {self.stuck}")
        if self.wrong:
            out.append(f"{len(self.wrong)} wrong result(s): {self.wrong}")
        if self.lost_events:
            out.append(f"{len(self.lost_events)} lost event(s): {self.lost_events}")
        out += self.history_problems + self.log_problems
        return out

    def summary(self) -> str:
        dup_runs = sum(n - 1 for n in self.duplicate_executions.values())
        return (
            f"{len(self.instances)} instances (+children) tracked, {self.completed} completed, "
            f"{len(self.stuck)} stuck, {len(self.wrong)} wrong, {len(self.lost_events)} lost "
            f"events, {len(self.history_problems)} history problems; {self.executions} "
            f"activity executions, {len(self.duplicate_executions)} activities ran more than "
            f"once ({dup_runs} extra runs; {self.repeats_after_kill} of those activities first ran "
            f"in a worker later SIGKILLed, {self.same_pid_repeats} re-ran in the same "
            f"process); {self.kills} SIGKILLs, {self.azurite_restarts} "
            f"Azurite restart(s), {self.raise_retries} raise_event retries, "
            f"{self.start_retries} start retries; wall time {self.wall_time:.1f} s"
        )


# --- workers ----------------------------------------------------------------------------------


@dataclass
class Workers:
    connection_string: str
    log_path: Path
    out_dir: Path
    activity_sleep: float
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    outputs: dict[int, Path] = field(default_factory=dict)
    spawned: int = 0

    def spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env[chaos_app.LOG_ENV] = str(self.log_path)
        env[chaos_app.SLEEP_ENV] = str(self.activity_sleep)
        env.pop("AZURE_STORAGE_CONNECTION_STRING", None)
        cmd = [
            sys.executable,
            "-m",
            "durable_azure.cli",
            "--connection",
            self.connection_string,
            "--task-hub",
            TASK_HUB,
            "--partitions",
            str(PARTITIONS),
            "worker",
            APP_SPEC,
            "--visibility-timeout",
            str(VISIBILITY),
            "--shutdown-grace",
            str(GRACE),
            "--max-poll-interval",
            str(MAX_POLL),
            "--lease-seconds",
            str(LEASE),
        ]
        output = self.out_dir / f"worker-{self.spawned}.out"
        self.spawned += 1
        with output.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        self.outputs[proc.pid] = output
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)

    def diagnostics(self, lines: int = 25) -> str:
        parts = []
        for p in self.procs:
            state = "running" if p.poll() is None else f"exit code {p.returncode}"
            try:
                text = self.outputs[p.pid].read_text(errors="replace")
            except FileNotFoundError:
                text = "(no output)"
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- worker pid {p.pid} ({state}):\n{tail}")
        return "\n".join(parts)


# --- the run ----------------------------------------------------------------------------------


def _client(connection_string: str) -> DurableClient:
    return DurableClient.from_settings(
        StorageSettings.resolve(
            connection_string=connection_string, task_hub=TASK_HUB, partition_count=PARTITIONS
        )
    )


async def _retrying(what: str, deadline: float, call: Any) -> int:
    """Await ``call()`` until it succeeds; returns the number of retries. Errors the product
    raises on purpose (not found, wrong state) are not retried."""
    retries = 0
    while True:
        try:
            await call()
            return retries
        except (InstanceNotFoundError, InstanceStateError):
            raise
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} kept failing: {exc!r}") from exc
            retries += 1
            await asyncio.sleep(0.5)


async def run_chaos(config: ChaosConfig, work_dir: Path, *, verbose: bool = False) -> ChaosResult:
    """Run the chaos scenario on a fresh Azurite in ``work_dir``; stops everything it
    started before returning."""
    rng = random.Random(config.seed)
    result = ChaosResult()
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    log_path = work_dir / "activities.log"
    azurite = az.start_on_free_ports(first_base=29000, location=work_dir / "azurite")
    workers = Workers(azurite.connection_string, log_path, work_dir, config.activity_sleep)

    def say(msg: str) -> None:
        if verbose:
            print(f"[{time.monotonic() - t0:7.1f}s] {msg}", flush=True)

    t0 = time.monotonic()
    try:
        async with _client(azurite.connection_string) as client:
            for _ in range(WORKERS):
                workers.spawn()
            plan = []
            for i in range(config.instances):
                kind = chaos_app.KINDS[i % len(chaos_app.KINDS)]
                instance_id = f"{kind}-{i:05d}"
                plan.append((instance_id, kind, i))
                result.instances[instance_id] = (kind, i)
                if kind == "parent":
                    child_seed = chaos_app.work_value("parent:0", i)
                    result.instances[chaos_app.child_id(instance_id)] = ("child", child_seed)
            all_started = asyncio.Event()
            raisers: list[asyncio.Task[None]] = []

            async def raise_later(instance_id: str, delay: float) -> None:
                await asyncio.sleep(delay)
                deadline = time.monotonic() + 60.0
                result.raise_retries += await _retrying(
                    f"raise_event({instance_id})",
                    deadline,
                    lambda: client.raise_event(
                        instance_id, chaos_app.EVENT_NAME, chaos_app.event_data(instance_id)
                    ),
                )

            async def starter() -> None:
                gap = config.start_spread / max(1, len(plan))
                for instance_id, kind, seed in plan:

                    async def start(
                        instance_id: str = instance_id, kind: str = kind, seed: int = seed
                    ) -> None:
                        with contextlib.suppress(InstanceAlreadyExistsError):
                            await client.start_new(
                                chaos_app.ORCHESTRATOR_OF[kind],
                                instance_id,
                                chaos_app.initial_input(kind, seed),
                            )

                    result.start_retries += await _retrying(
                        f"start_new({instance_id})", time.monotonic() + 60.0, start
                    )
                    if kind == "event":
                        delay = rng.uniform(0, config.event_delay)
                        raisers.append(asyncio.create_task(raise_later(instance_id, delay)))
                    if gap:
                        await asyncio.sleep(gap)
                all_started.set()
                say(f"started {len(plan)} instances")

            async def chaos() -> None:
                restart_at = config.azurite_restart_at
                next_kill = config.kill_interval
                while result.kills < config.kills or restart_at is not None:
                    now = time.monotonic() - t0
                    if restart_at is not None and now >= restart_at:
                        say("restarting Azurite")
                        await asyncio.to_thread(azurite.restart)
                        result.azurite_restarts += 1
                        restart_at = None
                        say("Azurite is back")
                    if result.kills < config.kills and now >= next_kill:
                        victim = rng.choice(workers.alive())
                        victim.send_signal(signal.SIGKILL)
                        await asyncio.to_thread(victim.wait, 10)
                        result.kills += 1
                        result.killed_pids.add(victim.pid)
                        workers.spawn()
                        say(f"SIGKILLed worker pid {victim.pid}; replacement started")
                        next_kill = now + config.kill_interval
                    await asyncio.sleep(0.1)

            await asyncio.gather(starter(), chaos())
            await asyncio.gather(*raisers)
            say("all events raised; waiting for the instances to finish")

            deadline = time.monotonic() + config.completion_timeout
            pending = set(result.instances)
            while True:
                try:
                    statuses = await client.get_status_all()
                except Exception:
                    statuses = []
                for s in statuses:
                    if s.instance_id in result.instances:
                        result.statuses[s.instance_id] = s
                pending = {
                    i
                    for i in result.instances
                    if i not in result.statuses or not result.statuses[i].is_terminal
                }
                if not pending or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
            result.wall_time = time.monotonic() - t0
            result.stuck = sorted(pending)
            say(f"{len(result.instances) - len(pending)} terminal, {len(pending)} not")
            await _check(client, result, log_path)
            if result.problems():
                result.diagnostics = workers.diagnostics()
                for instance_id in result.stuck[:5]:
                    result.diagnostics += "\n" + await _describe(client, instance_id)
    finally:
        workers.kill_all()
        azurite.stop()
    return result


async def _describe(client: DurableClient, instance_id: str) -> str:
    try:
        events = (await client.provider.load_history(instance_id)).events
    except Exception as exc:
        return f"--- {instance_id}: history unreadable: {exc!r}"
    kinds = [type(e).__name__ for e in events]
    return f"--- history of {instance_id}: {kinds}"


async def _check(client: DurableClient, result: ChaosResult, log_path: Path) -> None:
    records = chaos_app.read_log(str(log_path))
    result.executions = len(records)
    runs = Counter((r["instance"], r["key"]) for r in records)
    result.duplicate_executions = {k: n for k, n in runs.items() if n > 1}
    pids: dict[tuple[str, str], list[int]] = {}
    for r in records:
        pids.setdefault((r["instance"], r["key"]), []).append(r["pid"])
    for key in result.duplicate_executions:
        run_pids = pids[key]
        result.same_pid_repeats += len(run_pids) - len(set(run_pids))
        result.repeats_after_kill += run_pids[0] in result.killed_pids
    logged: dict[str, set[str]] = {}
    for instance_id, key in runs:
        logged.setdefault(instance_id, set()).add(key)

    for instance_id, (kind, seed) in sorted(result.instances.items()):
        expected_keys = chaos_app.expected_keys(kind)
        if logged.get(instance_id, set()) != expected_keys:
            result.log_problems.append(
                f"{instance_id}: activities run {sorted(logged.get(instance_id, set()))}, "
                f"expected {sorted(expected_keys)}"
            )
        status = result.statuses.get(instance_id)
        if status is None or not status.is_terminal:
            continue
        expected = chaos_app.expected_output(kind, instance_id, seed)
        if status.runtime_status is not OrchestrationStatus.Completed:
            result.wrong.append(
                f"{instance_id} {status.runtime_status.name}: {status.failure_details}"
            )
        elif status.output != expected:
            result.wrong.append(f"{instance_id}: output {status.output!r}, expected {expected!r}")
        if kind == "event" and (
            not isinstance(status.output, dict)
            or status.output.get("event") != chaos_app.event_data(instance_id)
        ):
            result.lost_events.append(f"{instance_id}: output {status.output!r}")
        try:
            events = (await client.provider.load_history(instance_id)).events
        except Exception as exc:
            result.history_problems.append(f"{instance_id}: history unreadable: {exc!r}")
            continue
        result.history_problems += [f"{instance_id}: {p}" for p in _history_problems(events)]
        if kind == "event" and not any(isinstance(e, EventRaised) for e in events):
            result.lost_events.append(f"{instance_id}: no EventRaised in its history")


def _history_problems(events: list[Any]) -> list[str]:
    problems = []
    for cls in (ExecutionStarted, ExecutionCompleted):
        n = sum(isinstance(e, cls) for e in events)
        if n != 1:
            problems.append(f"{n} {cls.__name__} events")
    for opened, closed in (
        ((TaskScheduled,), (TaskCompleted, TaskFailed)),
        (
            (SubOrchestrationInstanceCreated,),
            (SubOrchestrationInstanceCompleted, SubOrchestrationInstanceFailed),
        ),
        ((TimerCreated,), (TimerFired,)),
    ):
        ids = Counter(e.event_id for e in events if isinstance(e, opened))
        dup_ids = {i: n for i, n in ids.items() if n > 1}
        if dup_ids:
            problems.append(f"{opened[0].__name__} ids repeated: {dup_ids}")
        done = Counter(
            getattr(e, "task_scheduled_id", getattr(e, "timer_id", None))
            for e in events
            if isinstance(e, closed)
        )
        dup_done = {i: n for i, n in done.items() if n > 1}
        if dup_done:
            problems.append(f"{closed[0].__name__} more than once for ids {dup_done}")
        if set(done) != set(ids):
            problems.append(
                f"{opened[0].__name__} ids {sorted(ids)} but {closed[0].__name__} ids "
                f"{sorted(done)}"
            )
    failed = [e for e in events if isinstance(e, (TaskFailed, SubOrchestrationInstanceFailed))]
    if failed:
        problems.append(f"failures in history: {[getattr(e, 'reason', None) for e in failed]}")
    return problems


def format_duplicates(result: ChaosResult, limit: int = 10) -> str:
    items = sorted(result.duplicate_executions.items(), key=lambda kv: (-kv[1], kv[0]))
    return json.dumps([f"{i}/{k} x{n}" for (i, k), n in items[:limit]])


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.azurite
@pytest.mark.slow
@pytest.mark.timeout(360)
async def test_chaos_kills_and_azurite_restart(tmp_path: Path) -> None:
    config = ChaosConfig(instances=int(os.environ.get("CHAOS_INSTANCES", "60")))
    result = await run_chaos(config, tmp_path / "chaos", verbose=True)
    print(f"\n[chaos] {result.summary()}")
    print(f"[chaos] most repeated activities: {format_duplicates(result)}")
    problems = result.problems()
    assert not problems, "\n".join(problems) + "\n" + result.diagnostics
