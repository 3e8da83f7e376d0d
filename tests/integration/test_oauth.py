"""Microsoft Entra ID (OAuth) access, end to end, against an Azurite that enforces it.

The module starts its own Azurite with ``--oauth basic`` over HTTPS (a throw-away CA and
server certificate made here), so bearer tokens are actually checked: a request without
one, or with one for another audience, is refused, while the storage SDKs driven by a
token credential work. See ``oauth_support.py`` for what Azurite's basic mode checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from durable_azure import azurite as az
from durable_azure.storage.azure_primitives import AzureStorageAccount
from tests.integration.oauth_support import (
    STORAGE_SCOPE,
    AsyncJwtCredential,
    HttpsAzurite,
    JwtCredential,
    TlsFiles,
    https_status,
    make_tls_files,
    mint_jwt,
    run_orchestration,
)

pytestmark = pytest.mark.azurite

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_OUTPUT = ["Hello Tokyo!", "Hello Lima!", "Hello Cairo!"]


@dataclass(frozen=True)
class OAuthAzurite:
    tls: TlsFiles
    urls: dict[str, str]
    """``blob_url``, ``queue_url``, ``table_url``: https://127.0.0.1:<port>/devstoreaccount1"""


@pytest.fixture(scope="module")
def oauth_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthAzurite]:
    directory = tmp_path_factory.mktemp("oauth-azurite")
    tls = make_tls_files(directory)
    try:
        process = HttpsAzurite(tls, directory / "workspace", first_port_base=28000).start()
    except az.AzuriteError as exc:
        pytest.fail(f"could not start an HTTPS + OAuth Azurite: {exc}", pytrace=False)
    try:
        yield OAuthAzurite(tls, process.urls)
    finally:
        process.stop()


# Listing requests that need no resource to exist, one per service.
LIST_REQUESTS = {
    "blob": ("blob_url", "?comp=list", {}),
    "queue": ("queue_url", "?comp=list", {}),
    "table": ("table_url", "/Tables", {"Accept": "application/json;odata=nometadata"}),
}


@pytest.mark.parametrize("service", sorted(LIST_REQUESTS))
def test_only_a_valid_bearer_token_is_accepted(oauth_azurite: OAuthAzurite, service: str) -> None:
    url_key, suffix, headers = LIST_REQUESTS[service]
    url = oauth_azurite.urls[url_key] + suffix
    ca = oauth_azurite.tls.ca

    no_token = https_status(url, ca, headers=headers)
    wrong_audience = https_status(
        url, ca, token=mint_jwt("https://vault.azure.net").token, headers=headers
    )
    expired = https_status(
        url, ca, token=mint_jwt("https://storage.azure.com", lifetime=-3600).token, headers=headers
    )
    valid = https_status(
        url, ca, token=mint_jwt("https://storage.azure.com").token, headers=headers
    )

    assert no_token in (401, 403)
    assert wrong_audience in (401, 403)
    assert expired in (401, 403)
    assert valid == 200


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_from_credential_runs_an_orchestration_over_oauth(
    oauth_azurite: OAuthAzurite, kind: str
) -> None:
    """A worker and a client on ``AzureStorageAccount.from_credential`` (explicit endpoint
    URLs; an ``AsyncTokenCredential``, or a sync ``TokenCredential``, which the ``.aio``
    clients also accept) run an orchestration to completion.

    It runs in a child process whose ``SSL_CERT_FILE`` names the test CA: today the only
    way to make the ``.aio`` clients that ``from_credential`` builds trust a private CA.
    """
    urls = oauth_azurite.urls
    env = {**os.environ, "SSL_CERT_FILE": str(oauth_azurite.tls.ca)}
    env.pop("SSL_CERT_DIR", None)
    task_hub = f"OAuth{kind.capitalize()}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.oauth_support",
            "--blob-url",
            urls["blob_url"],
            "--queue-url",
            urls["queue_url"],
            "--table-url",
            urls["table_url"],
            "--task-hub",
            task_hub,
            "--credential",
            kind,
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["runtime_status"] == "Completed", result
    assert result["output"] == EXPECTED_OUTPUT
    # Every token the SDK asked for was for Azure Storage (the bearer path was used).
    assert result["scopes"] == [STORAGE_SCOPE]

    # The task hub is there, read back with the sync SDK and a sync token credential.
    credential = JwtCredential()
    ca = str(oauth_azurite.tls.ca)
    hub = task_hub.lower()
    with QueueServiceClient(
        urls["queue_url"], credential=credential, connection_verify=ca
    ) as queues:
        queue_names = {q.name for q in queues.list_queues(name_starts_with=hub)}
    with TableServiceClient(
        urls["table_url"], credential=credential, connection_verify=ca
    ) as tables:
        table_names = {t.name for t in tables.list_tables()}
    with BlobServiceClient(urls["blob_url"], credential=credential, connection_verify=ca) as blobs:
        container_names = {c.name for c in blobs.list_containers(name_starts_with=hub)}
    assert queue_names == {f"{hub}-control-00", f"{hub}-control-01", f"{hub}-workitems"}
    assert {f"{task_hub}History", f"{task_hub}Instances"} <= table_names
    assert f"{hub}-largemessages" in container_names
    assert set(credential.scopes) == {STORAGE_SCOPE}


async def test_from_credential_with_a_ca_bundle_in_process(oauth_azurite: OAuthAzurite) -> None:
    credential = AsyncJwtCredential()
    account = AzureStorageAccount.from_credential(
        credential, connection_verify=str(oauth_azurite.tls.ca), **oauth_azurite.urls
    )
    try:
        result = await run_orchestration(account, "OAuthInProcess")
    finally:
        await account.close()
    assert result["runtime_status"] == "Completed", result
    assert result["output"] == EXPECTED_OUTPUT
    assert set(credential.scopes) == {STORAGE_SCOPE}


def test_azurite_process_starts_an_https_azurite(
    oauth_azurite: OAuthAzurite, tmp_path: Path
) -> None:
    tls = oauth_azurite.tls
    base = az.find_free_port_base(start=28000)
    process = az.AzuriteProcess(
        ports=az.AzuritePorts.from_base(base),
        location=tmp_path / "workspace",
        startup_timeout=5,
        extra_args=["--oauth", "basic", "--cert", str(tls.cert), "--key", str(tls.key)],
    )
    with process:
        queue_url = f"https://127.0.0.1:{process.ports.queue}/{az.ACCOUNT_NAME}?comp=list"
        assert https_status(queue_url, tls.ca) in (401, 403)
