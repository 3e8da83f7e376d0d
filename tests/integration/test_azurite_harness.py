"""The Azurite harness itself, against real Azurite processes (no mocks)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, QueueServiceClient

from durable_azure import azurite as az
from durable_azure.testing.hub_cleanup import delete_hub_resources

if TYPE_CHECKING:
    from tests.conftest import AzuriteSession

pytestmark = pytest.mark.azurite

REPO = Path(__file__).resolve().parents[2]


FIRST_BASE = 24000


def _free_ports(host: str = az.DEFAULT_HOST) -> az.AzuritePorts:
    return az.AzuritePorts.from_base(az.find_free_port_base(host, start=FIRST_BASE))


def _start_second(**kwargs: Any) -> az.AzuriteProcess:
    return az.start_on_free_ports(first_base=FIRST_BASE, **kwargs)


@pytest.fixture
def second() -> Iterator[az.AzuriteProcess]:
    """A second Azurite (besides the session one), stopped at teardown."""
    process = _start_second()
    try:
        yield process
    finally:
        process.stop()


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def test_second_instance_serves_queues_tables_and_blobs(
    azurite: AzuriteSession, second: az.AzuriteProcess
) -> None:
    assert second.ports != azurite.ports
    assert az.is_answering(second.host, second.ports)
    cs = second.connection_string
    assert f"http://127.0.0.1:{second.ports.queue}/devstoreaccount1" in cs

    queue_name, table_name, container_name = _name("q-"), _name("tbl"), _name("c-")
    with QueueServiceClient.from_connection_string(cs) as queues:
        queue = queues.create_queue(queue_name)
        queue.send_message("hello")
        assert [m.content for m in queue.peek_messages()] == ["hello"]
    with TableServiceClient.from_connection_string(cs) as tables:
        table = tables.create_table(table_name)
        table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "Value": 7})
        assert table.get_entity("p", "r")["Value"] == 7
    with BlobServiceClient.from_connection_string(cs) as blobs:
        container = blobs.create_container(container_name)
        container.upload_blob("b", b"payload")
        assert container.download_blob("b").readall() == b"payload"

    # The resources exist only in the second instance, not in the session's.
    with QueueServiceClient.from_connection_string(azurite.connection_string) as queues:
        assert not list(queues.list_queues(name_starts_with=queue_name))


def test_stop_stops_only_its_own_process_and_removes_its_location(
    azurite: AzuriteSession,
) -> None:
    process = _start_second()
    location = process.location
    assert location is not None
    assert location.is_dir()
    pid = process.pid
    assert pid is not None

    process.stop()

    assert process.pid is None
    assert not process.running
    assert not location.exists()
    assert not az.is_answering(process.host, process.ports)
    assert az.is_answering(azurite.host, azurite.ports)
    with QueueServiceClient.from_connection_string(azurite.connection_string) as queues:
        list(queues.list_queues())
    process.stop()  # idempotent


def test_starting_on_a_port_taken_by_the_session_azurite_names_the_port(
    azurite: AzuriteSession,
) -> None:
    process = az.AzuriteProcess(azurite.host, azurite.ports)
    with pytest.raises(az.AzuritePortInUseError, match=str(azurite.ports.blob)) as info:
        process.start()
    assert info.value.port == azurite.ports.blob
    assert process.pid is None
    assert az.is_answering(azurite.host, azurite.ports)


def test_starting_on_a_busy_queue_port_raises_naming_that_port() -> None:
    ports = _free_ports()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((az.DEFAULT_HOST, ports.queue))
        squatter.listen()
        process = az.AzuriteProcess(ports=ports)
        with pytest.raises(az.AzuriteError, match=rf"\b{ports.queue}\b"):
            process.start()
    assert process.pid is None
    assert process.location is None  # nothing was created


def test_early_exit_raises_with_the_log_tail() -> None:
    # Azurite refuses --inMemoryPersistence together with --location and exits at once.
    with pytest.raises(az.AzuriteError, match="inMemoryPersistence") as info:
        _start_second(extra_args=["--inMemoryPersistence"])
    assert "exited with code" in str(info.value)
    log = re.search(r"its log \((.+?)\)", str(info.value))
    assert log is not None
    assert not Path(log.group(1)).parent.exists()  # the temporary workspace was removed


def test_restart_keeps_queue_messages_and_location(second: az.AzuriteProcess) -> None:
    cs = second.connection_string
    location, pid = second.location, second.pid
    queue_name = _name("restart-")
    with QueueClient.from_connection_string(cs, queue_name) as queue:
        queue.create_queue()
        queue.send_message("survives")

    second.restart()

    assert second.location == location
    assert second.pid is not None
    assert second.pid != pid
    with QueueClient.from_connection_string(cs, queue_name) as queue:
        received = [m.content for m in queue.receive_messages(messages_per_page=32)]
    assert received == ["survives"]


def test_context_manager_starts_and_stops() -> None:
    with _start_second() as process:
        assert az.is_answering(process.host, process.ports)
        location = process.location
        assert location is not None
    assert not az.is_answering(process.host, process.ports)
    assert not location.exists()


def test_resolve_ports_precedence() -> None:
    env = {"AZURITE_PORT_BASE": "30000", "AZURITE_TABLE_PORT": "31000"}
    assert az.resolve_ports(env={}) == (10000, 10001, 10002)
    assert az.resolve_ports(env=env) == (30000, 30001, 31000)
    assert az.resolve_ports(env=env, port_base=40000) == (40000, 40001, 40002)
    assert az.resolve_ports(env=env, queue_port=41001) == (30000, 41001, 31000)
    with pytest.raises(az.AzuriteError):
        az.resolve_ports(env={"AZURITE_PORT_BASE": "nope"})


def test_cli_start_status_stop_from_a_plain_interpreter(
    azurite: AzuriteSession, tmp_path: Path
) -> None:
    base = az.find_free_port_base(start=25000)
    pidfile = tmp_path / "azurite.pid"
    cli = [sys.executable, str(REPO / "azurite" / "azurite.py")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURITE_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args, "--port-base", str(base)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
            cwd=tmp_path,
        )

    started = run("start", "--pidfile", str(pidfile))
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == az.connection_string(
            az.DEFAULT_HOST, az.AzuritePorts.from_base(base)
        )
        state = json.loads(pidfile.with_name(pidfile.name + ".json").read_text())
        assert state["pid"] == int(pidfile.read_text())
        location = Path(state["location"])
        assert location.is_dir()

        again = run("start", "--pidfile", str(tmp_path / "other.pid"))
        assert again.returncode == 0, again.stderr
        assert "already answers" in again.stderr
        assert not (tmp_path / "other.pid").exists()

        status = run("status", "--pidfile", str(pidfile))
        assert status.returncode == 0, status.stdout
        assert "running" in status.stdout
    finally:
        stopped = run("stop", "--pidfile", str(pidfile))
    assert stopped.returncode == 0, stopped.stderr
    assert not pidfile.exists()
    assert not location.exists()
    assert not az.is_answering(az.DEFAULT_HOST, az.AzuritePorts.from_base(base))
    assert run("status").returncode == 1
    assert az.is_answering(azurite.host, azurite.ports)


def test_delete_hub_resources_removes_only_that_hub(azurite: AzuriteSession) -> None:
    cs = azurite.connection_string
    hub = _name("Hub")
    other = hub + "Cities"  # a hub whose name extends this one's must keep its tables
    with QueueServiceClient.from_connection_string(cs) as queues:
        for h in (hub, other):
            queues.create_queue(f"{h.lower()}-control-00").send_message("x")
            queues.create_queue(f"{h.lower()}-workitems")
    with TableServiceClient.from_connection_string(cs) as tables:
        for h in (hub, other):
            tables.create_table(f"{h}History")
            tables.create_table(f"{h}Instances")
    with BlobServiceClient.from_connection_string(cs) as blobs:
        for h in (hub, other):
            blobs.create_container(f"{h.lower()}-largemessages")
        blobs.get_container_client(f"{hub.lower()}-largemessages").acquire_lease(-1)
    try:
        deleted = delete_hub_resources(cs, hub)
        assert sorted(deleted.queues) == [f"{hub.lower()}-control-00", f"{hub.lower()}-workitems"]
        assert sorted(deleted.tables) == [f"{hub}History", f"{hub}Instances"]
        assert deleted.containers == [f"{hub.lower()}-largemessages"]
        assert not delete_hub_resources(cs, hub)  # idempotent

        with QueueServiceClient.from_connection_string(cs) as queues:
            assert not list(queues.list_queues(name_starts_with=hub.lower() + "-"))
            assert len(list(queues.list_queues(name_starts_with=other.lower()))) == 2
        with TableServiceClient.from_connection_string(cs) as tables:
            names = {t.name for t in tables.list_tables()}
            assert {f"{other}History", f"{other}Instances"} <= names
            assert not {f"{hub}History", f"{hub}Instances"} & names
        with BlobServiceClient.from_connection_string(cs) as blobs:
            assert [c.name for c in blobs.list_containers(name_starts_with=other.lower())] == [
                f"{other.lower()}-largemessages"
            ]
    finally:
        delete_hub_resources(cs, other)


def test_task_hub_fixture_gives_a_valid_unique_name(task_hub: str) -> None:
    assert 3 <= len(task_hub) <= 45
    assert task_hub[0].isalpha()
    assert task_hub.isalnum()
    assert task_hub == task_hub.lower()
