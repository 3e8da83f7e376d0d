"""Helpers for ``test_oauth.py``: TLS files, an HTTPS + OAuth Azurite, JWT credentials.

* :func:`make_tls_files` writes a throw-away CA and a server certificate for 127.0.0.1 /
  localhost signed by it (``cryptography``).
* :class:`HttpsAzurite` runs Azurite with ``--oauth basic --cert --key``. It is started
  here rather than with :class:`durable_azure.azurite.AzuriteProcess`, whose readiness
  probe speaks plain HTTP and so never sees an HTTPS Azurite answer.
* :class:`JwtCredential` / :class:`AsyncJwtCredential` are ``azure-core`` token
  credentials (``get_token(*scopes) -> AccessToken``) that mint a JWT for the requested
  scope. Azurite's basic OAuth decodes the token without checking its signature and
  checks ``iat``/``nbf``/``exp``, the issuer (an Entra ID ``https://sts.windows.net/``
  prefix) and the audience (``https://storage.azure.com`` or the service's
  ``https://<account>.<service>.core.windows.net``); the token is HS256-signed with a
  random key, so it is well formed but trusted by nobody else.
* ``python -m tests.integration.oauth_support --blob-url ... --queue-url ...
  --table-url ... --task-hub ... [--credential sync]`` runs one orchestration end to end
  with ``AzureStorageAccount.from_credential`` and prints a JSON summary. The test runs it in a
  child process whose ``SSL_CERT_FILE`` names the test CA: aiohttp builds its default TLS
  context when it is imported, so the variable must be set before the process starts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from durable_azure import DurableApp, DurableClient, OrchestrationContext, Worker
from durable_azure import azurite as az
from durable_azure.storage.azure_primitives import AzureStorageAccount

#: The scope every Azure Storage SDK asks a credential for.
STORAGE_SCOPE = "https://storage.azure.com/.default"
#: An Entra ID issuer: Azurite only checks the ``https://sts.windows.net/`` prefix.
ISSUER = "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/"


# --- TLS ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    ca: Path
    """The CA certificate (PEM) clients must trust."""
    cert: Path
    """The server certificate (PEM) for 127.0.0.1 and localhost, signed by the CA."""
    key: Path
    """The server's private key (PEM, unencrypted)."""


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a one-day CA and a server certificate for 127.0.0.1/localhost into ``directory``."""
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "durable-azure test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def client_tls_context(ca: Path) -> ssl.SSLContext:
    """A verifying TLS context that trusts only the test CA."""
    return ssl.create_default_context(cafile=str(ca))


# --- tokens ---------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_jwt(audience: str, *, lifetime: int = 3600, issuer: str = ISSUER) -> AccessToken:
    """A JWT shaped like an Entra ID access token for ``audience`` (HS256, random key)."""
    now = int(time.time())
    expires_on = now + lifetime
    claims = {
        "aud": audience,
        "iss": issuer,
        "iat": now - 60,
        "nbf": now - 60,
        "exp": expires_on,
        "oid": str(uuid.uuid4()),
        "tid": issuer.rstrip("/").rsplit("/", 1)[-1],
        "sub": "durable-azure-oauth-test",
        "ver": "1.0",
    }
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(secrets.token_bytes(32), signing_input.encode(), hashlib.sha256)
    return AccessToken(f"{signing_input}.{_b64url(signature.digest())}", expires_on)


def _audience(scopes: tuple[str, ...]) -> str:
    if len(scopes) != 1:
        raise ValueError(f"expected exactly one scope, got {scopes!r}")
    return scopes[0].removesuffix("/.default")


class JwtCredential:
    """A synchronous ``azure.core.credentials.TokenCredential``."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return mint_jwt(_audience(scopes))


class AsyncJwtCredential:
    """An ``azure.core.credentials_async.AsyncTokenCredential`` for the ``.aio`` clients."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return mint_jwt(_audience(scopes))

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> AsyncJwtCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# --- Azurite over HTTPS with OAuth ------------------------------------------------------


def service_urls(host: str, ports: az.AzuritePorts) -> dict[str, str]:
    """``blob_url``/``queue_url``/``table_url`` for an HTTPS Azurite (path-style account)."""
    return {
        f"{service}_url": f"https://{host}:{port}/{az.ACCOUNT_NAME}"
        for service, port in zip(("blob", "queue", "table"), ports, strict=True)
    }


def https_status(
    url: str,
    ca: Path,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    """GET ``url`` over TLS trusting ``ca``; return the HTTP status (any status is fine)."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(
        parsed.hostname or "", parsed.port, timeout=10, context=client_tls_context(ca)
    )
    sent = {"x-ms-version": "2021-12-02", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    try:
        target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        conn.request("GET", target, headers=sent)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class HttpsAzurite:
    """Azurite on three free ports, HTTPS only, ``--oauth basic``, in its own workspace.

    Stops only the process group it started.
    """

    def __init__(self, tls: TlsFiles, workspace: Path, *, first_port_base: int = 28000) -> None:
        self.tls = tls
        self.workspace = workspace
        self.first_port_base = first_port_base
        self.host = az.DEFAULT_HOST
        self.ports = az.AzuritePorts()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> dict[str, str]:
        return service_urls(self.host, self.ports)

    @property
    def log_path(self) -> Path:
        return self.workspace / "azurite.log"

    def start(self, startup_timeout: float = 60.0) -> HttpsAzurite:
        binary = az.ensure_installed()
        start = self.first_port_base
        for _ in range(10):
            self.ports = az.AzuritePorts.from_base(az.find_free_port_base(self.host, start=start))
            if self._spawn(binary, startup_timeout):
                return self
            start = self.ports.blob + 3
        raise az.AzuriteError(f"could not start an HTTPS Azurite; see {self.log_path}")

    def _spawn(self, binary: Path, startup_timeout: float) -> bool:
        """Start on ``self.ports``; False when a port was taken meanwhile."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(binary),
            *az.BASE_FLAGS,
            "--location",
            str(self.workspace),
            "--blobHost",
            self.host,
            "--queueHost",
            self.host,
            "--tableHost",
            self.host,
            "--blobPort",
            str(self.ports.blob),
            "--queuePort",
            str(self.ports.queue),
            "--tablePort",
            str(self.ports.table),
            "--oauth",
            "basic",
            "--cert",
            str(self.tls.cert),
            "--key",
            str(self.tls.key),
        ]
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.workspace,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + startup_timeout
        while True:
            if self._proc.poll() is not None:
                text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
                self._proc = None
                if "EADDRINUSE" in text:
                    return False
                raise az.AzuriteError(f"Azurite exited early:\n{text[-3000:]}")
            if all(self._answers(url) for url in self.urls.values()):
                return True
            if time.monotonic() > deadline:
                self.stop()
                raise az.AzuriteError(
                    f"HTTPS Azurite did not answer within {startup_timeout:.0f} s; "
                    f"see {self.log_path}"
                )
            time.sleep(0.1)

    def _answers(self, url: str) -> bool:
        try:
            https_status(url + "?comp=list", self.tls.ca)
        except (OSError, http.client.HTTPException):
            return False
        return True

    def stop(self, grace: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> HttpsAzurite:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- the tiny app and one end-to-end run --------------------------------------------------


def make_app(task_hub: str) -> DurableApp:
    """One activity, one orchestrator calling it twice (chained) and once more (fan-out)."""
    app = DurableApp(task_hub=task_hub, partition_count=2)

    @app.activity
    def greet(name: str) -> str:
        return f"Hello {name}!"

    @app.orchestrator
    def greetings(ctx: OrchestrationContext) -> Generator[Any, Any, list[str]]:
        first = yield ctx.call_activity(greet, "Tokyo")
        rest = yield ctx.task_all([ctx.call_activity(greet, c) for c in ctx.get_input()])
        return [first, *rest]

    return app


async def run_orchestration(account: AzureStorageAccount, task_hub: str) -> dict[str, Any]:
    """Run a worker and one ``greetings`` instance on ``account``; return what happened."""
    app = make_app(task_hub)
    worker = Worker(app, account=account)
    await worker.start()
    try:
        async with DurableClient.from_settings(app.settings(), account=account) as client:
            instance_id = await client.start_new("greetings", client_input=["Lima", "Cairo"])
            status = await client.wait_for_completion(instance_id, timeout=60)
    finally:
        await worker.stop()
    return {
        "runtime_status": status.runtime_status.name,
        "output": status.output,
        "storage_requests": account.stats.snapshot(),
    }


async def _main_async(args: argparse.Namespace) -> dict[str, Any]:
    credential = AsyncJwtCredential() if args.credential == "async" else JwtCredential()
    account = AzureStorageAccount.from_credential(
        credential, blob_url=args.blob_url, queue_url=args.queue_url, table_url=args.table_url
    )
    try:
        result = await run_orchestration(account, args.task_hub)
    finally:
        await account.close()
    result["scopes"] = sorted(set(credential.scopes))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("--blob-url", "--queue-url", "--table-url", "--task-hub"):
        parser.add_argument(name, required=True)
    parser.add_argument("--credential", choices=("async", "sync"), default="async")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_main_async(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
