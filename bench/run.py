"""The benchmark suite of issue 6, against Azurite; prints a table, optionally writes JSON.

    python bench/run.py [--quick | --smoke] [--json FILE] [--connection CS]
                        [--only NAME,NAME...] [--instances N]

An Azurite is started on free ports for the run, unless ``--connection`` names storage to
use. Every scenario runs on a task hub of its own (``bench`` + random hex, deleted
afterwards), executed by separate worker processes (``bench/worker_main.py``: the apps of
``bench/apps.py``, the engine's default worker options but a 10 s shutdown grace); it
starts once the workers own all partitions, evenly. The client runs in this process.
Times are the Instances rows' CreatedTime (written by the client) and CompletedTime
(written by the worker). Sizes below are given as full / ``--quick`` / ``--smoke``.

Scenarios (``--only`` takes these names):

* ``hello_sequence5``: N HelloSequence5 (five sequential activities) started at once on one
  worker (1000 / 200 / 20; ``--instances N``): orchestrations/s and activities/s (first
  CreatedTime to last CompletedTime), start-to-completion latency p50/p99. Also gives
  ``storage_ops_per_orchestration`` (the worker's storage requests as counted by its
  provider plus the client's requests to start the instances, *_admin kinds excluded;
  ``total`` and each kind that occurred, blob kinds summed as ``blob``) and
  ``cpu_s_per_orchestration`` (the worker's user + system CPU seconds). The worker's
  counters are read 0.5 s after the last instance finished.
* ``single``: one HelloSequence5 at a time on an idle worker, the row polled every 20 ms
  (50 / 20 / 3 runs): latency p50/p99.
* ``fanout_1000``, ``fanout_10000``: one orchestration fanning out N trivial activities
  and summing their results (checked): seconds from the client's start call to the poll
  (every 20 ms) that sees it Completed.
  ``--quick`` and ``--smoke`` skip fanout_10000 (null); ``--smoke`` fans out 50, reported
  under fanout_1000 with ``n`` = 50.
* ``external_events``: one orchestration waiting for N events one after another; once it
  runs, the client raises them, 16 in flight (1000 / 200 / 20): events/s from the first
  raise to the CompletedTime.
* ``idle``: one worker left idle (300 / 60 / 3 s) once 120 / 10 / 3 s have passed since it
  took its partition leases (at full size its pollers' backoff has then reached the 90 s
  ceiling): its storage requests scaled to one hour; then one HelloSequence5 is started:
  ms from its CreatedTime to the timestamp of its first OrchestratorStarted. Measured
  with the engine's defaults, and again with idle polls at most 5 s apart
  (``short_poll``).
* ``workers_3_vs_1``: HelloSequence5 throughput (as above) on 6 partitions with three
  worker processes (once they own 2 partitions each) divided by that with one
  (600 / 150 / 30 instances). ``--smoke`` gives these workers 6 s partition leases (not
  the engine's default) so that they balance in seconds.

The table has one line per figure: value, issue 6's target and whether it is met
(``bench/report.py``, ``TARGETS``). The exit code is 0 whether or not targets are met;
1 if a scenario failed (an instance failed or did not finish in the scenario's time
limit, a wrong result, a worker process died); 2 for bad arguments. ``--json FILE``
writes the figures (the keys of :data:`RESULT_KEYS`; a scenario not run is null).
Numbers are Azurite-on-this-machine numbers, not Azure numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.scenarios import FULL, QUICK, SCENARIOS, SMOKE, Scenario, Sizes
from bench.workers import BenchError
from durable_azure import azurite as azurite_tool

#: The keys of the results, in order; the scenario that produces each.
RESULT_KEYS: dict[str, str] = {
    "hello_sequence5": "hello_sequence5",
    "storage_ops_per_orchestration": "hello_sequence5",
    "cpu_s_per_orchestration": "hello_sequence5",
    "single": "single",
    "fanout_1000": "fanout_1000",
    "fanout_10000": "fanout_10000",
    "external_events": "external_events",
    "idle": "idle",
    "workers_3_vs_1": "workers_3_vs_1",
    "machine": "",
}
SCENARIO_BY_NAME = {s.name: s for s in SCENARIOS}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, no fanout_10000")
    size.add_argument("--smoke", action="store_true", help="tiny sizes (a CI smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--connection", help="use this storage instead of a fresh Azurite")
    parser.add_argument("--only", metavar="NAMES", help="comma-separated scenarios to run")
    parser.add_argument("--instances", type=int, help="HelloSequence5 instances (1000)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIO_BY_NAME)
    unknown = sorted(set(names) - set(SCENARIO_BY_NAME))
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIO_BY_NAME)}"
        )
    if args.instances is not None and args.instances < 1:
        parser.error("--instances must be at least 1")
    args.only = names
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.instances is not None:
        sizes = dataclasses.replace(sizes, hello_instances=args.instances)
    return sizes


def skip_reason(scenario: Scenario, args: argparse.Namespace, sizes: Sizes) -> str | None:
    if scenario.name not in args.only:
        return "skipped (--only)"
    if scenario.name == "fanout_10000" and sizes.fanout_large is None:
        return "skipped (--smoke)" if args.smoke else "skipped (--quick)"
    return None


class ScenarioFailed(RuntimeError):
    """A scenario failed; the message names it."""


async def run_scenario(scenario: Scenario, connection: str, sizes: Sizes) -> dict[str, Any]:
    """Run one scenario within its time limit; raise :class:`ScenarioFailed` if it fails."""
    limit = scenario.timeout(sizes)
    started = time.monotonic()
    print(f"running {scenario.name}...", file=sys.stderr, flush=True)
    try:
        async with asyncio.timeout(limit) as deadline:
            figures = await scenario.run(connection, sizes)
    except Exception as exc:
        if isinstance(exc, TimeoutError) and deadline.expired():
            message = f"did not finish within its time limit of {limit:.0f} s"
            raise ScenarioFailed(f"scenario {scenario.name} {message}") from None
        if not isinstance(exc, BenchError):
            traceback.print_exc(file=sys.stderr)
        raise ScenarioFailed(f"scenario {scenario.name} failed: {exc}") from exc
    print(f"  {scenario.name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return figures


async def run_all(
    connection: str, args: argparse.Namespace, sizes: Sizes
) -> tuple[dict[str, Any], dict[str, str], bool]:
    """Every scenario in turn: the results, a note per key not filled, and whether one failed."""
    results: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    notes: dict[str, str] = {}
    failed = False
    for scenario in SCENARIOS:
        owned = [key for key, owner in RESULT_KEYS.items() if owner == scenario.name]
        reason = skip_reason(scenario, args, sizes)
        if reason is None:
            try:
                results.update(await run_scenario(scenario, connection, sizes))
                continue
            except ScenarioFailed as exc:
                print(str(exc), file=sys.stderr, flush=True)
                failed = True
                reason = f"FAILED: {exc}"
        notes.update(dict.fromkeys(owned, reason))
    return results, notes, failed


@contextlib.contextmanager
def storage(connection: str | None) -> Iterator[str]:
    """The given connection string, or that of an Azurite started for the run."""
    if connection:
        yield connection
        return
    host = azurite_tool.DEFAULT_HOST
    ports = azurite_tool.AzuritePorts.from_base(azurite_tool.find_free_port_base(host))
    with azurite_tool.AzuriteProcess(host=host, ports=ports) as emulator:
        yield emulator.connection_string


def azurite_version(connection: str) -> str | None:
    """Azurite's version from its ``Server`` header (None if it is not Azurite)."""
    parts = dict(p.split("=", 1) for p in connection.split(";") if "=" in p)
    endpoint = parts.get("BlobEndpoint")
    if endpoint is None and parts.get("UseDevelopmentStorage") == "true":
        endpoint = f"http://127.0.0.1:{azurite_tool.DEFAULT_BLOB_PORT}/devstoreaccount1"
    if endpoint is None or not endpoint.startswith("http"):
        return None
    try:
        with urllib.request.urlopen(endpoint.rstrip("/") + "?comp=list", timeout=5) as answer:
            server = answer.headers.get("Server", "")
    except urllib.error.HTTPError as error:  # no credentials: 403, but with the header
        server = error.headers.get("Server", "")
    except OSError:
        return None
    return server.split("/", 1)[1] if server.startswith("Azurite") and "/" in server else None


def machine(connection: str) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "azurite": azurite_version(connection),
    }


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so the worker processes and Azurite are stopped.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_for(args)
    signal.signal(signal.SIGTERM, _interrupt)
    with storage(args.connection) as connection:
        results, notes, failed = asyncio.run(run_all(connection, args, sizes))
        results["machine"] = machine(connection)
    print()
    print(report.render(results, notes))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
