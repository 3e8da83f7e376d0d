"""Shared fixtures: one Azurite per test session and a fresh task hub per test.

The ``azurite`` fixture reuses an Azurite that already answers, or starts one itself:

* if ``AZURITE_PORT_BASE`` or ``AZURITE_{BLOB,QUEUE,TABLE}_PORT`` is set, those ports
  are used (an Azurite is started there if none answers);
* otherwise an Azurite on 10000-10002 is reused if it answers, else one is started on
  the first free port base from 20000 up.

Only an Azurite started here is stopped at the end. When Azurite cannot be started the
tests that need it **fail** (they are never skipped).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from azure.core.exceptions import AzureError
from azure.storage.queue import QueueServiceClient

from durable_azure import azurite as az
from durable_azure.testing.hub_cleanup import delete_hub_resources

logger = logging.getLogger(__name__)

# A failing test's report then includes the library's INFO records too (lease changes,
# hand-overs, worker start and stop), not only its warnings.
logging.getLogger("durable_azure").setLevel(logging.INFO)

_FIRST_PORT_BASE = 20000
_HUB_MAX_LENGTH = 45


@dataclass(frozen=True)
class AzuriteSession:
    """The Azurite the test session talks to."""

    connection_string: str
    host: str
    ports: az.AzuritePorts
    process: az.AzuriteProcess | None
    """The process this session started, or None when an existing Azurite is reused."""

    @property
    def started_here(self) -> bool:
        """True if this test session started (and will stop) this Azurite."""
        return self.process is not None


def _check_sdk_can_talk_to(connection_string: str, where: str) -> None:
    """Fail early if the Azurite found rejects the SDK (e.g. no --skipApiVersionCheck)."""
    try:
        with QueueServiceClient.from_connection_string(connection_string) as service:
            next(iter(service.list_queues(results_per_page=1).by_page()), None)
    except AzureError as exc:
        pytest.fail(
            f"the Azurite at {where} answers but the queue SDK cannot use it ({exc}). "
            "If you started it yourself, run it with --skipApiVersionCheck "
            "(`python3 azurite/azurite.py run` does), or unset AZURITE_* so the tests "
            "start their own.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteSession]:
    """One Azurite for the whole session: reused if one answers, else started here."""
    host = az.resolve_host()
    process: az.AzuriteProcess | None = None
    problem: az.AzuriteError | None = None
    try:
        if az.ports_configured_in_env():
            ports = az.resolve_ports()
            if not az.is_answering(host, ports):
                process = az.AzuriteProcess(host, ports).start()
        else:
            ports = az.AzuritePorts()
            if not az.is_answering(host, ports):
                process = az.start_on_free_ports(host, first_base=_FIRST_PORT_BASE)
                ports = process.ports
    except az.AzuriteError as exc:
        problem = exc
    if problem is not None:
        pytest.fail(
            f"Azurite is required for these tests and could not be started: {problem}\n"
            "Run `bash scripts/setup.sh` (needs Node.js and npm), or start Azurite yourself "
            "and set AZURITE_PORT_BASE.",
            pytrace=False,
        )
    session = AzuriteSession(az.connection_string(host, ports), host, ports, process)
    logger.info(
        "%s Azurite on %s ports %s",
        "started" if process else "reusing",
        host,
        tuple(ports),
    )
    try:
        _check_sdk_can_talk_to(session.connection_string, f"{host} ports {tuple(ports)}")
        yield session
    finally:
        if process is not None:
            process.stop()


def _hub_name(test_name: str) -> str:
    """``t`` + 12 hex chars + the test's name reduced to lowercase letters and digits."""
    stem = re.sub(r"[^a-z0-9]", "", test_name.lower())
    stem = stem.removeprefix("test")
    name = f"t{uuid.uuid4().hex[:12]}{stem}"
    return name[:_HUB_MAX_LENGTH]


@pytest.fixture
def task_hub(request: pytest.FixtureRequest, azurite: AzuriteSession) -> Iterator[str]:
    """A task hub name unique to this test; its queues, tables and containers are deleted
    afterwards (leftover messages would slow every later Azurite queue operation)."""
    name = _hub_name(request.node.name)
    yield name
    delete_hub_resources(azurite.connection_string, name)
