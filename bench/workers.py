"""Benchmark worker processes (``bench/worker_main.py``): started, signalled, always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Seconds a worker process may take to start (imports, task hub, first lease step).
STARTUP_TIMEOUT = 60.0
#: Seconds a worker process may take to answer a counters signal.
SIGNAL_TIMEOUT = 15.0
#: Seconds a worker process gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0
#: The workers' shutdown grace (seconds); nothing is in flight when the bench stops them.
SHUTDOWN_GRACE = 10.0


class BenchError(RuntimeError):
    """A scenario cannot go on (a worker died, instances failed or gave a wrong result)."""


@dataclass(frozen=True)
class WorkerCounters:
    """What a worker counted since its last reset: storage ops by kind, CPU seconds."""

    ops: dict[str, int]
    cpu_s: float


class WorkerProcess:
    """One ``bench/worker_main.py`` process."""

    def __init__(
        self, connection: str, task_hub: str, stats_file: Path, options: list[str]
    ) -> None:
        """Start ``bench/worker_main.py`` with ``options`` (see :func:`worker_options`)."""
        self.stats_file = stats_file
        self.ready_file = Path(f"{stats_file}.ready")
        self.worker_id = ""
        script = str(ROOT / "bench" / "worker_main.py")
        self.process = subprocess.Popen(
            [sys.executable, script, connection, task_hub, str(stats_file), *options],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )

    def _check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"worker process {self.process.pid} exited with code {code}")

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.ready_file.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"worker process did not start within {STARTUP_TIMEOUT:.0f} s")
            await asyncio.sleep(0.05)
        self.worker_id = self.ready_file.read_text()

    async def _signal_for_counters(self, sig: signal.Signals) -> WorkerCounters:
        self.stats_file.unlink(missing_ok=True)
        self.process.send_signal(sig)
        deadline = time.monotonic() + SIGNAL_TIMEOUT
        while not self.stats_file.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"worker process did not answer {sig.name}")
            await asyncio.sleep(0.01)
        data = json.loads(self.stats_file.read_text())
        return WorkerCounters(ops=dict(data["ops"]), cpu_s=float(data["cpu_s"]))

    async def reset_counters(self) -> None:
        """Zero the worker's counters; returns once it has done so."""
        await self._signal_for_counters(signal.SIGUSR1)

    async def read_counters(self) -> WorkerCounters:
        return await self._signal_for_counters(signal.SIGUSR2)

    async def stop(self) -> None:
        """SIGTERM, then kill if it has not exited within :data:`STOP_TIMEOUT`. Never raises
        for a process that has already exited."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                for _ in range(round(STOP_TIMEOUT / 0.05)):
                    if self.process.poll() is not None:
                        break
                    await asyncio.sleep(0.05)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)


def worker_options(
    partitions: int, lease_seconds: float | None, max_poll_interval: float | None = None
) -> list[str]:
    """The command-line options of ``bench/worker_main.py`` for these settings."""
    options = ["--partitions", str(partitions), "--shutdown-grace", str(SHUTDOWN_GRACE)]
    options += os.environ.get("DURABLE_BENCH_WORKER_ARGS", "").split()
    if lease_seconds is not None:
        options += ["--lease-seconds", str(lease_seconds)]
    if max_poll_interval is not None:
        options += ["--max-poll-interval", str(max_poll_interval)]
    return options


@contextlib.asynccontextmanager
async def running_workers(
    connection: str, task_hub: str, count: int, options: list[str]
) -> AsyncIterator[list[WorkerProcess]]:
    """``count`` started worker processes on ``task_hub``, stopped on exit (also on errors)."""
    with tempfile.TemporaryDirectory(prefix="durable-bench-") as directory:
        workers: list[WorkerProcess] = []
        try:
            for index in range(count):
                stats_file = Path(directory) / f"worker{index}.json"
                workers.append(WorkerProcess(connection, task_hub, stats_file, options))
            await asyncio.gather(*(w.wait_ready() for w in workers))
            yield workers
        finally:
            try:
                await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
            finally:
                for worker in workers:  # in case the stopping itself was interrupted
                    if worker.process.poll() is None:
                        worker.process.kill()
