"""Run a worker in this process until SIGTERM/SIGINT, with test-friendly options.

The ``durable-azure worker`` command has no options for the worker's tuning knobs, and the
crash tests need a short message visibility (a killed worker's messages stay invisible for
that long) and a short shutdown grace. Usage (cwd = the project root)::

    python tests/integration/run_worker.py --connection CS --task-hub HUB \
        --visibility 4 --grace 10 tests.integration.worker_app:app

Exit code 0 after a graceful stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from datetime import timedelta

from durable_azure import Worker, WorkerOptions
from durable_azure.cli import load_app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("app", metavar="MODULE:APP")
    parser.add_argument("--connection", required=True)
    parser.add_argument("--task-hub", required=True)
    parser.add_argument("--partitions", type=int, default=None)
    parser.add_argument("--visibility", type=float, default=4.0, help="seconds")
    parser.add_argument("--grace", type=float, default=10.0, help="shutdown grace, seconds")
    parser.add_argument("--max-poll", type=float, default=0.5, help="seconds")
    parser.add_argument("--max-activities", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s [worker {os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    options: dict[str, object] = {
        "visibility_timeout": timedelta(seconds=args.visibility),
        "max_poll_interval": args.max_poll,
        "shutdown_grace": args.grace,
    }
    if args.max_activities is not None:
        options["max_concurrent_activities"] = args.max_activities

    async def run() -> None:
        worker = Worker(
            load_app(args.app),
            connection_string=args.connection,
            task_hub=args.task_hub,
            partition_count=args.partitions,
            options=WorkerOptions(**options),
        )
        await worker.run_until_signal()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
