"""A benchmark worker process: runs the apps of ``bench/apps.py`` until SIGTERM.

    python bench/worker_main.py CONNECTION_STRING TASK_HUB STATS_FILE
        [--partitions N] [--max-poll-interval S] [--shutdown-grace S] [--lease-seconds S]
        [--fold-window S] [--max-local-activities N]

Options left out keep the engine's defaults (``WorkerOptions``, 4 partitions).
``--lease-seconds`` shortens the partition leases as ``durable-azure worker`` does (renewal
and acquire steps every third of it), so that workers balance sooner.

Once the worker has started (task hub created, first partition lease step done) it writes
its worker id to ``STATS_FILE.ready``. Its counters are the storage operations its
provider sent (``worker.account.stats``, by kind) and its CPU seconds (user + system):

* SIGUSR1: reset the counters (the measured window starts now), then write them;
* SIGUSR2: write the counters;
* SIGTERM or SIGINT: stop the worker gracefully and write the counters a last time.

"Write" means replacing ``STATS_FILE`` atomically with
``{"ops": {kind: count}, "cpu_s": seconds, "worker_id": id}``; a caller that deletes the
file before sending the signal knows the answer has arrived when the file reappears.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.apps import app
from durable_azure import Worker, WorkerOptions
from durable_azure.storage.partitions import LeaseOptions


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Counters:
    """The worker's storage operations and CPU time since the last reset."""

    def __init__(self, worker: Worker, stats_file: Path) -> None:
        self.worker = worker
        self.stats_file = stats_file
        self.cpu_baseline = cpu_seconds()

    def reset(self) -> None:
        self.worker.account.stats.reset()
        self.cpu_baseline = cpu_seconds()
        self.write()

    def write(self) -> None:
        snapshot: dict[str, Any] = {
            "ops": self.worker.account.stats.snapshot(),
            "cpu_s": cpu_seconds() - self.cpu_baseline,
            "worker_id": self.worker.worker_id,
        }
        partial = self.stats_file.with_name(self.stats_file.name + ".partial")
        partial.write_text(json.dumps(snapshot))
        os.replace(partial, self.stats_file)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A benchmark worker process.")
    parser.add_argument("connection", help="storage connection string")
    parser.add_argument("task_hub")
    parser.add_argument("stats_file", type=Path, help="where the counters are written")
    parser.add_argument("--partitions", type=int, help="partition count (engine default: 4)")
    parser.add_argument("--max-poll-interval", type=float, help="seconds (engine default)")
    parser.add_argument("--shutdown-grace", type=float, help="seconds (engine default)")
    parser.add_argument("--lease-seconds", type=float, help="partition lease (engine default)")
    parser.add_argument("--fold-window", type=float, help="seconds (engine default)")
    parser.add_argument("--max-local-activities", type=int, help="(engine default)")
    return parser.parse_args(argv)


def worker_options(args: argparse.Namespace) -> WorkerOptions:
    tuning: dict[str, Any] = {
        "max_poll_interval": args.max_poll_interval,
        "shutdown_grace": args.shutdown_grace,
        "fold_window": args.fold_window,
        "max_local_activities": args.max_local_activities,
    }
    if args.lease_seconds is not None:
        tuning["leases"] = LeaseOptions(
            lease_interval=args.lease_seconds,
            claim_duration=args.lease_seconds,
            renew_interval=args.lease_seconds / 3,
            acquire_interval=args.lease_seconds / 3,
        )
    return WorkerOptions(**{k: v for k, v in tuning.items() if v is not None})


async def main(args: argparse.Namespace) -> None:
    worker = Worker(
        app,
        connection_string=args.connection,
        task_hub=args.task_hub,
        partition_count=args.partitions,
        options=worker_options(args),
    )
    counters = Counters(worker, args.stats_file)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, counters.reset)
    loop.add_signal_handler(signal.SIGUSR2, counters.write)
    await worker.start()
    Path(f"{args.stats_file}.ready").write_text(worker.worker_id)
    try:
        await asyncio.Event().wait()  # until cancelled by SIGTERM / SIGINT (see run())
    except asyncio.CancelledError:
        pass
    finally:
        try:
            await worker.stop()
        finally:
            counters.write()


def run() -> None:
    args = parse_args(sys.argv[1:])
    loop = asyncio.new_event_loop()
    task = loop.create_task(main(args))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    # For finding where the worker's CPU goes: DURABLE_BENCH_PROFILE=DIR writes a cProfile
    # of each worker process there (read it with `python -m pstats FILE`).
    profile_dir = os.environ.get("DURABLE_BENCH_PROFILE")
    if not profile_dir:
        loop.run_until_complete(task)
        return
    import cProfile

    with cProfile.Profile() as profile:
        loop.run_until_complete(task)
    profile.dump_stats(Path(profile_dir) / f"worker-{os.getpid()}.pstats")


if __name__ == "__main__":
    run()
