"""Record the golden histories: run the orchestrators of ``tests/golden/apps.py`` for real.

    python tests/golden/record.py [--connection CS] [--out DIR]

Storage: ``--connection``, else ``$AZURE_STORAGE_CONNECTION_STRING``, else an Azurite
answering on the default ports, else an Azurite started for this run (and stopped after).
Each orchestration runs on an in-process worker in a fresh task hub (deleted afterwards);
its committed history is saved to ``DIR/<name>.json`` (default: next to this script) and
replayed at once with ``check_golden`` as a sanity check. Run it by hand when an
orchestrator in ``apps.py`` changes on purpose, and commit the files it writes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


async def record(connection: str, task_hub: str, out_dir: Path) -> int:
    from durable_azure import DurableClient, Worker, WorkerOptions
    from durable_azure.testing.golden import check_golden, record_history, save_history
    from tests.golden.apps import RECORDINGS, WAITING, app

    worker = Worker(
        app,
        connection_string=connection,
        task_hub=task_hub,
        options=WorkerOptions(max_poll_interval=0.5),
    )
    await worker.start()
    try:
        async with DurableClient.from_app(
            app, connection_string=connection, task_hub=task_hub
        ) as client:
            for recording in RECORDINGS.values():
                await client.start_new(
                    recording.orchestrator, recording.instance_id, recording.input
                )
            for recording in RECORDINGS.values():
                if recording.events:
                    await _wait_for_custom_status(client, recording.instance_id, WAITING)
                for name, data in recording.events:
                    await client.raise_event(recording.instance_id, name, data)
            for stem, recording in RECORDINGS.items():
                instance_id = recording.instance_id
                status = await client.wait_for_completion(instance_id, timeout=120)
                events = await record_history(client.provider, instance_id)
                path = out_dir / f"{stem}.json"
                save_history(path, events, orchestrator_name=recording.orchestrator)
                orchestrator = app.get_orchestrator(recording.orchestrator)
                assert orchestrator is not None, recording.orchestrator
                outcome = check_golden(orchestrator, path)
                print(
                    f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
                    f"{status.runtime_status.name}, {len(events)} events, "
                    f"{len(outcome.episodes)} episodes"
                )
    finally:
        await worker.stop()
    return 0


async def _wait_for_custom_status(client: Any, instance_id: str, expected: Any) -> None:
    for _ in range(1200):  # up to a minute
        status = await client.get_status(instance_id)
        if status.custom_status == expected:
            return
        if status.is_terminal:
            break
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{instance_id} never reached custom status {expected!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connection", default=os.environ.get("AZURE_STORAGE_CONNECTION_STRING"))
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(ROOT))  # so ``tests.golden.apps`` imports from a plain checkout

    from durable_azure import azurite as azurite_tool
    from durable_azure.testing.hub_cleanup import delete_hub_resources

    task_hub = f"golden{uuid.uuid4().hex[:12]}"
    args.out.mkdir(parents=True, exist_ok=True)

    def run(connection: str) -> int:
        try:
            return asyncio.run(record(connection, task_hub, args.out))
        finally:
            delete_hub_resources(connection, task_hub)

    if args.connection:
        return run(args.connection)
    host, ports = azurite_tool.DEFAULT_HOST, azurite_tool.resolve_ports()
    if azurite_tool.is_answering(host, ports):
        return run(azurite_tool.connection_string(host, ports))
    print("starting Azurite ...", file=sys.stderr)
    with azurite_tool.AzuriteProcess(host=host, ports=ports) as emulator:
        return run(emulator.connection_string)


if __name__ == "__main__":
    sys.exit(main())
