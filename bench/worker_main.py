"""A benchmark worker process: runs until SIGTERM, then writes its counters as JSON.

python bench/worker_main.py CONNECTION_STRING TASK_HUB STATS_FILE
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.apps import app
from durable_azure import Worker, WorkerOptions


async def main(connection: str, task_hub: str, stats_file: str) -> None:
    worker = Worker(
        app,
        connection_string=connection,
        task_hub=task_hub,
        options=WorkerOptions(max_poll_interval=1.0),
    )
    stats = worker.account.stats
    cpu_baseline = [0.0]

    def cpu_now() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def reset() -> None:  # SIGUSR1: the measured run starts now
        stats.reset()
        cpu_baseline[0] = cpu_now()

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, reset)
    await worker.start()
    Path(stats_file + ".ready").write_text("ready")
    try:
        await asyncio.Event().wait()  # until cancelled by the signal handler below
    except asyncio.CancelledError:
        pass
    finally:
        Path(stats_file).write_text(
            json.dumps({"ops": stats.snapshot(), "cpu_s": cpu_now() - cpu_baseline[0]})
        )
        await worker.stop()


def run() -> None:
    connection, task_hub, stats_file = sys.argv[1:4]
    loop = asyncio.new_event_loop()
    task = loop.create_task(main(connection, task_hub, stats_file))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    loop.run_until_complete(task)


if __name__ == "__main__":
    run()
