"""The ``durable-azure`` command line.

Common options: ``--connection``, ``--task-hub``, ``--partitions`` (defaults from the
environment, see :mod:`durable_azure.settings`).

Commands:
    worker MODULE:APP        run a worker for a DurableApp
    start NAME [--input JSON] [--id ID] [--wait SECONDS]
    status ID [--history]
    azurite                  install the emulator if needed and run it in the foreground
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from durable_azure.errors import ConfigurationError, DurableAzureError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1  # the instance failed or was terminated
EXIT_USAGE = 2
EXIT_TIMEOUT = 3


def load_app(spec: str) -> Any:
    """Import ``module:attribute`` (default attribute ``app``) with the cwd on sys.path."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise DurableAzureError(f"expected MODULE:APP, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DurableAzureError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr or "app")
    except AttributeError:
        raise DurableAzureError(
            f"module {module_name!r} has no attribute {attr or 'app'!r}"
        ) from None


def _settings(args: argparse.Namespace) -> Any:
    from durable_azure.settings import StorageSettings

    return StorageSettings.resolve(
        connection_string=args.connection, task_hub=args.task_hub, partition_count=args.partitions
    )


async def _cmd_worker(args: argparse.Namespace) -> int:
    from durable_azure.app import DurableApp
    from durable_azure.worker import Worker, WorkerOptions

    app = load_app(args.app)
    if not isinstance(app, DurableApp):
        raise DurableAzureError(f"{args.app} is a {type(app).__name__}, not a DurableApp")
    tuning: dict[str, Any] = {
        "max_concurrent_orchestrations": args.max_orchestrations,
        "max_concurrent_activities": args.max_activities,
        "max_poll_interval": args.max_poll_interval,
        "shutdown_grace": args.shutdown_grace,
    }
    if args.visibility_timeout is not None:
        tuning["visibility_timeout"] = timedelta(seconds=args.visibility_timeout)
    try:
        options = WorkerOptions(**{k: v for k, v in tuning.items() if v is not None})
    except ValueError as exc:
        raise ConfigurationError(f"invalid worker option: {exc}") from None
    worker = Worker(
        app,
        connection_string=args.connection,
        task_hub=args.task_hub,
        partition_count=args.partitions,
        options=options,
    )
    await worker.run_until_signal()
    return EXIT_OK


async def _cmd_start(args: argparse.Namespace) -> int:
    from durable_azure.client import DurableClient, WaitTimeoutError

    try:
        client_input = json.loads(args.input) if args.input is not None else None
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--input is not valid JSON: {exc}") from exc
    async with DurableClient.from_settings(_settings(args)) as client:
        instance_id = await client.start_new(args.name, args.id, client_input)
        if args.wait is None:
            print(instance_id)
            return EXIT_OK
        try:
            status = await client.wait_for_completion(instance_id, timeout=args.wait)
        except WaitTimeoutError as exc:
            print(json.dumps(exc.status.to_json(), indent=2))
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
        print(json.dumps(status.to_json(), indent=2))
        return EXIT_OK if status.runtime_status.name == "Completed" else EXIT_FAILED


async def _cmd_status(args: argparse.Namespace) -> int:
    from durable_azure.client import DurableClient

    async with DurableClient.from_settings(_settings(args)) as client:
        status = await client.get_status(
            args.id, show_history=args.history, show_history_output=args.history
        )
        print(json.dumps(status.to_json(), indent=2))
    return EXIT_OK


def _cmd_azurite(args: argparse.Namespace) -> int:
    from durable_azure import azurite

    return azurite.main(["run", *args.azurite_args])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durable-azure", description="Durable orchestrations on Azure Storage."
    )
    parser.add_argument("--connection", help="storage connection string (default: env or Azurite)")
    parser.add_argument("--task-hub", help="task hub name (default: $DURABLE_TASK_HUB)")
    parser.add_argument("--partitions", type=int, help="control-queue partitions, 1-16")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a worker for MODULE:APP")
    worker.add_argument("app", metavar="MODULE:APP")
    worker.add_argument("--max-orchestrations", type=int, help="episodes at once (100)")
    worker.add_argument("--max-activities", type=int, help="activities at once (10 x cores)")
    worker.add_argument(
        "--max-poll-interval", type=float, metavar="S", help="longest idle poll delay (5)"
    )
    worker.add_argument(
        "--visibility-timeout",
        type=float,
        metavar="S",
        help="how long received messages stay hidden from other workers (300)",
    )
    worker.add_argument(
        "--shutdown-grace", type=float, metavar="S", help="time to finish work on stop (30)"
    )

    start = sub.add_parser("start", help="start an orchestration")
    start.add_argument("name")
    start.add_argument("--input", help="the input, as JSON")
    start.add_argument("--id", help="the instance id (default: random)")
    start.add_argument(
        "--wait", type=float, metavar="SECONDS", help="wait for the result and print it"
    )

    status = sub.add_parser("status", help="print an instance's status as JSON")
    status.add_argument("id")
    status.add_argument("--history", action="store_true", help="include the history events")

    sub.add_parser(
        "azurite",
        help="run the Azurite emulator in the foreground",
        description="Install Azurite if needed and run it until Ctrl-C. Options after "
        "'azurite' (--host, --port-base, --blob-port, --queue-port, --table-port, "
        "--location) go to the emulator manager.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "azurite":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.azurite_args = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        if args.command == "azurite":
            return _cmd_azurite(args)
        command = {"worker": _cmd_worker, "start": _cmd_start, "status": _cmd_status}
        return asyncio.run(command[args.command](args))
    except DurableAzureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED if not isinstance(exc, ValueError) else EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
