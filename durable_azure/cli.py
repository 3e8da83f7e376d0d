"""The ``durable-azure`` command line.

Common options: ``--connection``, ``--task-hub``, ``--partitions`` (defaults from the
environment, see :mod:`durable_azure.settings`).

Commands:
    worker MODULE:APP        run a worker for a DurableApp
    start NAME [--input JSON] [--id ID] [--wait SECONDS] [--at ISO-TIME]
    status ID [--history] [--format table|json]
    raise ID NAME [--data JSON];  terminate|suspend|resume|rewind ID [--reason TEXT]
    restart ID [--same-id]
    list [--status S] [--created-after T] [--created-before T] [--prefix P] [--name N]
         [--top N] [--format table|json | --json]
    purge ID  |  purge --created-before T [--created-after T] [--status S] [--prefix P]
    poison list [--json]  |  poison requeue NAME...  |  poison drop NAME...
    hub create | info [--json] | delete --yes
    doctor [--fix] [--stale-after S] [--json]
    azurite                  install the emulator if needed and run it in the foreground
    serve MODULE:APP [--host H] [--port P] [--key KEY] [--no-worker]
          [--no-dashboard | --dashboard-read-only]
                             serve the Durable Functions HTTP API and the dashboard
                             (and run a worker)
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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from durable_azure import cli_output
from durable_azure.engine.history import OrchestrationStatus
from durable_azure.errors import ConfigurationError, DurableAzureError, NotFoundError

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
        connection_string=args.connection,
        account_url=args.account_url,
        task_hub=args.task_hub,
        partition_count=args.partitions,
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
        "wake_ups": False if args.no_wake_ups else None,
        "wake_host": args.wake_host,
        "wake_advertise_host": args.wake_advertise_host,
        "queue_metrics_interval": args.queue_metrics_interval,
        "max_local_activities": args.max_local_activities,
        "fold_window": args.fold_window,
    }
    if args.visibility_timeout is not None:
        tuning["visibility_timeout"] = timedelta(seconds=args.visibility_timeout)
    if args.lease_seconds is not None:
        from durable_azure.storage.partitions import LeaseOptions

        try:
            tuning["leases"] = LeaseOptions(
                lease_interval=args.lease_seconds,
                claim_duration=args.lease_seconds,
                renew_interval=args.lease_seconds / 3,
                acquire_interval=args.lease_seconds / 3,
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid --lease-seconds: {exc}") from None
    try:
        options = WorkerOptions(**{k: v for k, v in tuning.items() if v is not None})
    except ValueError as exc:
        raise ConfigurationError(f"invalid worker option: {exc}") from None
    worker = Worker(
        app,
        connection_string=args.connection,
        account_url=args.account_url,
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
    start_at = _time_arg(args.at, "--at")
    async with DurableClient.from_settings(_settings(args)) as client:
        instance_id = await client.start_new(args.name, args.id, client_input, start_at=start_at)
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


def _json_arg(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{option} is not valid JSON: {exc}") from exc


def _time_arg(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"{option} is not an ISO-8601 time (e.g. 2026-11-24T18:00:00Z): {text!r}"
        ) from None
    if value.tzinfo is None:
        raise ConfigurationError(f"{option} needs a time zone (e.g. a trailing Z): {text!r}")
    return value


async def _cmd_control(args: argparse.Namespace) -> int:
    """raise / terminate / suspend / resume / rewind / restart: one instance operation."""
    from durable_azure.client import DurableClient

    async with DurableClient.from_settings(_settings(args)) as client:
        if args.command == "raise":
            data = _json_arg(args.data, "--data")
            await client.raise_event(args.id, args.name, data)
        elif args.command == "terminate":
            await client.terminate(args.id, args.reason)
        elif args.command == "suspend":
            await client.suspend(args.id, args.reason)
        elif args.command == "resume":
            await client.resume(args.id, args.reason)
        elif args.command == "rewind":
            await client.rewind(args.id, args.reason)
        elif args.command == "restart":
            print(await client.restart(args.id, restart_with_new_instance_id=not args.same_id))
            return EXIT_OK
        print(f"{args.command}: sent to {args.id}")
    return EXIT_OK


def _query_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "created_time_from": _time_arg(args.created_after, "--created-after"),
        "created_time_to": _time_arg(args.created_before, "--created-before"),
        "runtime_status": args.status or None,
        "instance_id_prefix": args.prefix,
    }


async def _cmd_list(args: argparse.Namespace) -> int:
    from durable_azure.client import DurableClient

    async with DurableClient.from_settings(_settings(args)) as client:
        found: list[Any] = []
        token: str | None = args.continuation
        while len(found) < args.top:
            page, token = await client.query_instances(
                **_query_args(args),
                name=args.name,
                page_size=min(1000, args.top - len(found)),
                continuation=token,
            )
            found += page
            if token is None:
                break
    if args.format == "json":
        print(json.dumps({"instances": [s.to_json() for s in found], "continuation": token}))
        return EXIT_OK
    for line in cli_output.instances_table(s.to_json() for s in found):
        print(line)
    print(f"{len(found)} instance(s)" + (f"; more: --continuation '{token}'" if token else ""))
    return EXIT_OK


async def _cmd_purge(args: argparse.Namespace) -> int:
    from durable_azure.client import DurableClient

    async with DurableClient.from_settings(_settings(args)) as client:
        if args.id is not None:
            if any(v is not None for v in _query_args(args).values()):
                raise ConfigurationError("give an instance id or filters, not both")
            result = await client.purge_instance_history(args.id)
            print(f"purged {result.instances_deleted} instance(s)")
            return EXIT_OK
        query = _query_args(args)
        if query["created_time_to"] is None and query["created_time_from"] is None:
            raise ConfigurationError(
                "purge by filter needs --created-before and/or --created-after "
                "(so a typo cannot purge a whole task hub)"
            )

        total = None
        if sys.stderr.isatty():
            # A bar needs the total: one more read of the matching rows, for people only.
            counts = await client.count_instances(
                created_time_from=query["created_time_from"],
                created_time_to=query["created_time_to"],
                runtime_status=query["runtime_status"],
                instance_id_prefix=query["instance_id_prefix"],
            )
            total = sum(n for s, n in counts.items() if OrchestrationStatus[s].is_terminal)
        progress = cli_output.Progress("purging", total=total, unit="instances")
        purged = await client.purge_instance_history_by(
            query["created_time_from"],
            query["created_time_to"],
            query["runtime_status"],
            instance_id_prefix=query["instance_id_prefix"],
            progress=progress.update,
            time_limit=args.time_limit,
            continuation=args.continuation,
        )
        progress.close()
        print(f"purged {purged.deleted} instance(s)")
        if not purged.complete:
            print(f"stopped early; resume with --continuation '{purged.continuation}'")
    return EXIT_OK


async def _cmd_poison(args: argparse.Namespace) -> int:
    from durable_azure.client import DurableClient

    async with DurableClient.from_settings(_settings(args)) as client:
        if args.action == "list":
            records = await client.list_poison()
            if args.json:
                print(json.dumps([vars(r) for r in records]))
                return EXIT_OK
            for r in records:
                print(
                    f"{r.name}  instance={r.instance_id or '-'}  "
                    f"deliveries={r.dequeue_count}  {r.reason}"
                )
            print(f"{len(records)} poison message(s)")
            return EXIT_OK
        if not args.names:
            raise ConfigurationError(f"poison {args.action} needs one or more NAMEs (see list)")
        for name in args.names:
            try:
                if args.action == "requeue":
                    print(f"{name}: {await client.requeue_poison(name)}")
                else:
                    await client.drop_poison(name)
                    print(f"{name}: dropped")
            except NotFoundError:
                raise DurableAzureError(f"no poison message named {name!r}") from None
    return EXIT_OK


async def _cmd_hub(args: argparse.Namespace) -> int:
    from durable_azure import hub
    from durable_azure.client import DurableClient

    async with DurableClient.from_settings(_settings(args)) as client:
        provider = client.provider
        if args.action == "info":
            info = await hub.hub_info(provider)
            print(json.dumps(info.to_json(), indent=2) if args.json else info.format())
        elif args.action == "create":
            for name in await hub.create_hub(provider):
                print(f"ok  {name}")
        else:
            if not args.yes:
                raise ConfigurationError(
                    f"'hub delete' removes every queue, table and blob of task hub "
                    f"{provider.names.hub!r}, history included; add --yes to do it"
                )
            progress = cli_output.Progress("deleting", unit="resources")
            deleted = await hub.delete_hub(provider, progress=progress.update)
            progress.close()
            for name in deleted:
                print(f"deleted  {name}")
            print(f"{len(deleted)} resource(s) of {provider.names.hub!r} deleted")
    return EXIT_OK


async def _cmd_doctor(args: argparse.Namespace) -> int:
    from durable_azure import doctor
    from durable_azure.client import DurableClient

    async with DurableClient.from_settings(_settings(args)) as client:
        report = await doctor.diagnose(
            client.provider, stale_after=timedelta(seconds=args.stale_after)
        )
        print(json.dumps(report.to_json(), indent=2) if args.json else report.format())
        if args.fix and report.fixable:
            for line in await doctor.fix(client.provider, report):
                print(f"fix: {line}")
    return EXIT_OK if report.clean or args.fix else EXIT_FAILED


async def _cmd_status(args: argparse.Namespace) -> int:
    from durable_azure.client import DurableClient

    async with DurableClient.from_settings(_settings(args)) as client:
        status = await client.get_status(
            args.id, show_history=args.history, show_history_output=args.history
        )
    data = status.to_json()
    as_json = args.format == "json" or (args.format is None and not sys.stdout.isatty())
    print(json.dumps(data, indent=2) if as_json else "\n".join(cli_output.status_lines(data)))
    return EXIT_OK


async def _cmd_serve(args: argparse.Namespace) -> int:
    from durable_azure.app import DurableApp

    try:
        from durable_azure.http.server import check_bind, serve
    except ImportError as exc:
        raise ConfigurationError(
            f"'serve' needs the http extra (pip install 'durable-azure[http]'): {exc}"
        ) from None
    key = args.key if args.key is not None else os.environ.get("DURABLE_HTTP_KEY") or None
    check_bind(args.host, key, args.insecure_no_key)
    app: Any
    if args.app.endswith(".py") or Path(args.app).is_dir():  # noqa: ASYNC240 - at start-up
        app = _function_app(args.app)  # function_app.py, or a directory holding one
    else:
        app = load_app(args.app)
        if not isinstance(app, DurableApp):
            import azure.functions as func

            if not isinstance(app, func.FunctionRegister):
                raise DurableAzureError(
                    f"{args.app} is a {type(app).__module__}.{type(app).__name__}, neither "
                    "a durable_azure.DurableApp nor an azure.functions app (df.DFApp)"
                )
            app = _function_app(args.app)
    await serve(
        app,
        host=args.host,
        port=args.port,
        key=key,
        run_worker=not args.no_worker,
        insecure_no_key=args.insecure_no_key,
        dashboard=not args.no_dashboard,
        dashboard_read_only=args.dashboard_read_only,
        connection_string=args.connection,
        account_url=args.account_url,
        task_hub=args.task_hub,
        partition_count=args.partitions,
    )
    return EXIT_OK


def _function_app(spec: str) -> Any:
    from durable_azure.functions import load_function_app

    return load_function_app(spec)


def _cmd_azurite(args: argparse.Namespace) -> int:
    from durable_azure import azurite

    return azurite.main(["run", *args.azurite_args])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durable-azure", description="Durable orchestrations on Azure Storage."
    )
    parser.add_argument("--connection", help="storage connection string (default: env or Azurite)")
    parser.add_argument(
        "--account-url",
        help="storage account URL, used with DefaultAzureCredential (managed identity, "
        "az login, ...) instead of a connection string ($DURABLE_STORAGE_ACCOUNT_URL)",
    )
    parser.add_argument("--task-hub", help="task hub name (default: $DURABLE_TASK_HUB)")
    parser.add_argument("--partitions", type=int, help="control-queue partitions, 1-16")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log records on stderr as text lines (default) or one JSON object each, "
        "with their event, instance_id, execution_id and partition fields",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a worker for MODULE:APP")
    worker.add_argument("app", metavar="MODULE:APP")
    worker.add_argument("--max-orchestrations", type=int, help="episodes at once (100)")
    worker.add_argument("--max-activities", type=int, help="activities at once (10 x cores)")
    worker.add_argument(
        "--max-poll-interval",
        type=float,
        metavar="S",
        help="longest idle poll delay (90 with wake-ups, 5 without)",
    )
    worker.add_argument(
        "--max-local-activities",
        type=int,
        metavar="N",
        help="activities of its own orchestrations run in-process, queued or running "
        "(10000; 0 sends all through the work-item queue)",
    )
    worker.add_argument(
        "--fold-window",
        type=float,
        metavar="S",
        help="how long an episode waits for its in-process activities before it "
        "checkpoints (0.5; 0 checkpoints at once)",
    )
    worker.add_argument(
        "--no-wake-ups",
        action="store_true",
        help="no loopback UDP wake-ups (poll only; see docs/design.md)",
    )
    worker.add_argument(
        "--wake-host",
        metavar="HOST",
        help="interface the wake-up listener binds (127.0.0.1; e.g. 0.0.0.0 with "
        "--wake-advertise-host so workers and clients on other machines wake this one)",
    )
    worker.add_argument(
        "--queue-metrics-interval",
        type=float,
        metavar="S",
        help="sample queue depth and oldest message age for OpenTelemetry every S seconds "
        "(off; 2 requests per queue per sample)",
    )
    worker.add_argument(
        "--wake-advertise-host",
        metavar="IP",
        help="the IP other machines send wake-ups to (needed with a wildcard --wake-host)",
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
    worker.add_argument(
        "--lease-seconds",
        type=float,
        metavar="S",
        help="partition lease length (30); a dead worker's partitions move after it",
    )

    start = sub.add_parser("start", help="start an orchestration")
    start.add_argument("name")
    start.add_argument("--input", help="the input, as JSON")
    start.add_argument("--id", help="the instance id (default: random)")
    start.add_argument(
        "--wait", type=float, metavar="SECONDS", help="wait for the result and print it"
    )
    start.add_argument("--at", metavar="ISO-TIME", help="start no earlier than this time")

    raise_ = sub.add_parser("raise", help="raise an event to an instance")
    raise_.add_argument("id")
    raise_.add_argument("name", help="the event name")
    raise_.add_argument("--data", help="the event data, as JSON")
    for command, text in (
        ("terminate", "stop an instance (it becomes Terminated)"),
        ("suspend", "pause an instance"),
        ("resume", "let a suspended instance continue"),
        ("rewind", "re-run a Failed instance's failed tasks"),
    ):
        control = sub.add_parser(command, help=text)
        control.add_argument("id")
        control.add_argument("--reason", help="recorded with the operation")
    restart = sub.add_parser("restart", help="start an instance's orchestration again")
    restart.add_argument("id")
    restart.add_argument(
        "--same-id", action="store_true", help="reuse the instance id (it must have finished)"
    )

    def add_filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--status", action="append", help="runtime status (repeatable)")
        p.add_argument("--created-after", metavar="ISO-TIME")
        p.add_argument("--created-before", metavar="ISO-TIME")
        p.add_argument("--prefix", help="instance id prefix")
        p.add_argument("--continuation", help="resume from a token printed earlier")

    hub_cmd = sub.add_parser("hub", help="task hub: create, info (partitions, queues), delete")
    hub_cmd.add_argument("action", choices=("create", "info", "delete"))
    hub_cmd.add_argument("--json", action="store_true", help="info as JSON")
    hub_cmd.add_argument("--yes", action="store_true", help="confirm 'delete'")

    doctor_cmd = sub.add_parser(
        "doctor",
        help="find instances whose status disagrees with their history, old "
        "messages, orphaned blobs, unowned partitions; --fix repairs what is safe",
    )
    doctor_cmd.add_argument("--fix", action="store_true", help="repair what is safe")
    doctor_cmd.add_argument(
        "--stale-after", type=float, default=600, metavar="S", help="age counted as stuck (600)"
    )
    doctor_cmd.add_argument("--json", action="store_true", help="print JSON")

    poison = sub.add_parser(
        "poison", help="messages set aside after failing too often: list, requeue, drop"
    )
    poison.add_argument("action", choices=("list", "requeue", "drop"))
    poison.add_argument("names", nargs="*", metavar="NAME", help="records (as listed)")
    poison.add_argument("--json", action="store_true", help="list as JSON")

    def add_format(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument(
            "--format", choices=("table", "json"), help=f"output format (default: {default})"
        )
        p.add_argument(
            "--json", dest="format", action="store_const", const="json", help="--format json"
        )

    listing = sub.add_parser("list", help="list instances (a table; --json for scripts)")
    add_filters(listing)
    listing.add_argument("--name", help="orchestration name")
    listing.add_argument("--top", type=int, default=100, help="at most this many (100)")
    add_format(listing, "table")

    purge = sub.add_parser("purge", help="delete finished instances and their history")
    purge.add_argument("id", nargs="?", help="one instance (or use filters)")
    add_filters(purge)
    purge.add_argument(
        "--time-limit", type=float, metavar="S", help="stop after about this many seconds"
    )

    status = sub.add_parser(
        "status", help="print an instance's status (a table on a terminal, else JSON)"
    )
    status.add_argument("id")
    status.add_argument("--history", action="store_true", help="include the history events")
    add_format(status, "table on a terminal, JSON otherwise")

    serve = sub.add_parser(
        "serve",
        help="serve the Durable Functions HTTP API for MODULE:APP (and run its worker)",
        description="Serve /runtime/webhooks/durabletask (and the /durabletask/ RPC base) "
        "for the app's task hub until SIGINT/SIGTERM.",
    )
    serve.add_argument(
        "app", metavar="APP", help="MODULE:APP, or a function app's function_app.py or folder"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, default=7071, help="port to bind (7071)")
    serve.add_argument(
        "--key", help="API key required as ?code= or x-functions-key ($DURABLE_HTTP_KEY)"
    )
    serve.add_argument(
        "--insecure-no-key",
        action="store_true",
        help="allow a non-loopback --host without a key",
    )
    serve.add_argument("--no-worker", action="store_true", help="serve the API only")
    dashboard = serve.add_mutually_exclusive_group()
    dashboard.add_argument(
        "--no-dashboard", action="store_true", help="do not serve the dashboard at /dashboard"
    )
    dashboard.add_argument(
        "--dashboard-read-only",
        action="store_true",
        help="serve the dashboard without actions (they answer 403)",
    )

    sub.add_parser(
        "azurite",
        help="run the Azurite emulator in the foreground",
        description="Install Azurite if needed and run it until Ctrl-C. Options after "
        "'azurite' (--host, --port-base, --blob-port, --queue-port, --table-port, "
        "--location) go to the emulator manager.",
    )
    return parser


def _configure_logging(verbose: bool, log_format: str) -> None:
    """This process's logging (the library itself never configures any): stderr, INFO
    (DEBUG with -v), as text lines or one JSON object per record."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from durable_azure.logevents import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "azurite":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.azurite_args = extra
    _configure_logging(args.verbose, args.log_format)
    if not args.verbose:
        logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        if args.command == "azurite":
            return _cmd_azurite(args)
        command = {
            "worker": _cmd_worker,
            "start": _cmd_start,
            "status": _cmd_status,
            "list": _cmd_list,
            "purge": _cmd_purge,
            "poison": _cmd_poison,
            "hub": _cmd_hub,
            "doctor": _cmd_doctor,
            "serve": _cmd_serve,
            **dict.fromkeys(
                ("raise", "terminate", "suspend", "resume", "rewind", "restart"), _cmd_control
            ),
        }
        return asyncio.run(command[args.command](args))
    except DurableAzureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED if not isinstance(exc, ValueError) else EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
