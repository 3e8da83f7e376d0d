"""Install, start and stop the Azurite storage emulator for tests, examples and benchmarks.

This module is **standard library only**: it can be loaded by file path (see
``azurite/azurite.py``) on a machine where the Azure SDK, and therefore the rest of
``durable_azure``, is not installed yet.

Azurite comes from npm, pinned to :data:`AZURITE_VERSION` (3.36 and later need Node 22).
It always runs with ``--silent --skipApiVersionCheck --disableTelemetry`` and on disk in
its own workspace (``--location``), never with ``--inMemoryPersistence``, whose queue
garbage collector stalls the whole emulator for seconds once a few thousand messages
have been consumed.

Ports default to 10000 (blob), 10001 (queue) and 10002 (table). They can be changed with
the environment variables ``AZURITE_PORT_BASE`` (base, base+1, base+2) or
``AZURITE_BLOB_PORT`` / ``AZURITE_QUEUE_PORT`` / ``AZURITE_TABLE_PORT``, and by
arguments, which win over the environment.

Command line (``python3 azurite/azurite.py --help``)::

    install                     npm-install the pinned Azurite if it is missing
    run                         run in the foreground until Ctrl-C or SIGTERM
    start --pidfile F           start in the background; returns once it answers
    stop --pidfile F            stop what ``start --pidfile F`` started
    status                      say whether Azurite answers on the ports
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, NamedTuple

logger = logging.getLogger(__name__)

__all__ = [
    "ACCOUNT_KEY",
    "ACCOUNT_NAME",
    "AZURITE_VERSION",
    "DEFAULT_BLOB_PORT",
    "DEFAULT_HOST",
    "DEFAULT_QUEUE_PORT",
    "DEFAULT_TABLE_PORT",
    "AzuriteEndpoint",
    "AzuriteError",
    "AzuritePortInUseError",
    "AzuritePorts",
    "AzuriteProcess",
    "azurite_dir",
    "connection_string",
    "ensure_installed",
    "find_free_port_base",
    "is_answering",
    "main",
    "resolve_ports",
    "start_on_free_ports",
]

#: The Azurite release installed from npm. 3.36+ require Node >= 22.
AZURITE_VERSION = "3.35.0"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_BLOB_PORT = 10000
DEFAULT_QUEUE_PORT = 10001
DEFAULT_TABLE_PORT = 10002

#: Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

#: The flags every Azurite started here gets (see docs in the module docstring).
BASE_FLAGS = ("--silent", "--skipApiVersionCheck", "--disableTelemetry")

ENV_DIR = "DURABLE_AZURITE_DIR"
ENV_HOST = "AZURITE_HOST"
ENV_PORT_BASE = "AZURITE_PORT_BASE"
ENV_BLOB_PORT = "AZURITE_BLOB_PORT"
ENV_QUEUE_PORT = "AZURITE_QUEUE_PORT"
ENV_TABLE_PORT = "AZURITE_TABLE_PORT"
PORT_ENV_VARS = (ENV_PORT_BASE, ENV_BLOB_PORT, ENV_QUEUE_PORT, ENV_TABLE_PORT)

_TEMP_PREFIX = "durable-azure-azurite-"
_LOG_NAME = "azurite.log"
_NPM_TIMEOUT = 900.0

PACKAGE_JSON: dict[str, Any] = {
    "name": "durable-azure-azurite",
    "version": "0.0.0",
    "private": True,
    "description": (
        "Pinned Azurite (Azure Storage emulator) for durable-azure tests and examples. "
        "Azurite 3.36+ needs Node >= 22."
    ),
    "license": "MIT",
    "dependencies": {"azurite": AZURITE_VERSION},
}


class AzuriteError(RuntimeError):
    """Azurite could not be installed, started or stopped; the message says why."""


class AzuritePortInUseError(AzuriteError):
    """A port Azurite needs is already taken by another process."""

    def __init__(self, host: str, port: int, detail: str = "") -> None:
        message = f"port {port} on {host} is already in use, so Azurite cannot listen there"
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message)
        self.host = host
        self.port = port


# --- ports, endpoints and connection strings ----------------------------------------------


class AzuritePorts(NamedTuple):
    """The three TCP ports of one Azurite instance."""

    blob: int = DEFAULT_BLOB_PORT
    queue: int = DEFAULT_QUEUE_PORT
    table: int = DEFAULT_TABLE_PORT

    @classmethod
    def from_base(cls, base: int) -> AzuritePorts:
        """Return ``(base, base + 1, base + 2)``."""
        return cls(base, base + 1, base + 2)


def _port_value(name: str, raw: str | int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise AzuriteError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise AzuriteError(f"{name}={value} is outside 1..65535")
    return value


def resolve_ports(
    *,
    port_base: int | None = None,
    blob_port: int | None = None,
    queue_port: int | None = None,
    table_port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> AzuritePorts:
    """Work out the three ports from arguments, then the environment, then the defaults.

    Precedence, lowest first: defaults 10000/10001/10002, ``AZURITE_PORT_BASE``,
    ``AZURITE_{BLOB,QUEUE,TABLE}_PORT``, the ``port_base`` argument, the per-service
    arguments.
    """
    env = os.environ if env is None else env
    blob, queue, table = AzuritePorts()
    if env.get(ENV_PORT_BASE):
        blob, queue, table = AzuritePorts.from_base(_port_value(ENV_PORT_BASE, env[ENV_PORT_BASE]))
    if env.get(ENV_BLOB_PORT):
        blob = _port_value(ENV_BLOB_PORT, env[ENV_BLOB_PORT])
    if env.get(ENV_QUEUE_PORT):
        queue = _port_value(ENV_QUEUE_PORT, env[ENV_QUEUE_PORT])
    if env.get(ENV_TABLE_PORT):
        table = _port_value(ENV_TABLE_PORT, env[ENV_TABLE_PORT])
    if port_base is not None:
        blob, queue, table = AzuritePorts.from_base(_port_value("port_base", port_base))
    if blob_port is not None:
        blob = _port_value("blob_port", blob_port)
    if queue_port is not None:
        queue = _port_value("queue_port", queue_port)
    if table_port is not None:
        table = _port_value("table_port", table_port)
    ports = AzuritePorts(blob, queue, table)
    if len(set(ports)) != 3:
        raise AzuriteError(f"the blob, queue and table ports must differ, got {tuple(ports)}")
    return ports


def ports_configured_in_env(env: Mapping[str, str] | None = None) -> bool:
    """True if any of the ``AZURITE_*PORT*`` environment variables is set."""
    env = os.environ if env is None else env
    return any(env.get(name) for name in PORT_ENV_VARS)


def resolve_host(host: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Return ``host``, else ``$AZURITE_HOST``, else 127.0.0.1."""
    env = os.environ if env is None else env
    return host or env.get(ENV_HOST) or DEFAULT_HOST


def _client_host(host: str) -> str:
    """The address a client should connect to for a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url_host(host: str) -> str:
    host = _client_host(host)
    return f"[{host}]" if ":" in host else host


def connection_string(host: str = DEFAULT_HOST, ports: Sequence[int] | None = None) -> str:
    """Return the explicit ``devstoreaccount1`` connection string for these endpoints."""
    blob, queue, table = AzuritePorts(*ports) if ports is not None else AzuritePorts()
    h = _url_host(host)
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={ACCOUNT_NAME};"
        f"AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{h}:{blob}/{ACCOUNT_NAME};"
        f"QueueEndpoint=http://{h}:{queue}/{ACCOUNT_NAME};"
        f"TableEndpoint=http://{h}:{table}/{ACCOUNT_NAME};"
    )


@dataclasses.dataclass(frozen=True)
class AzuriteEndpoint:
    """Where an Azurite instance answers."""

    host: str = DEFAULT_HOST
    ports: AzuritePorts = dataclasses.field(default_factory=AzuritePorts)

    @property
    def connection_string(self) -> str:
        """The explicit connection string for this endpoint."""
        return connection_string(self.host, self.ports)


def _http_answers(host: str, port: int, timeout: float, tls: bool = False) -> bool:
    conn: http.client.HTTPConnection
    if tls:
        # Only "does it answer?": the certificate is the caller's business.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(
            _client_host(host), port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(_client_host(host), port, timeout=timeout)
    try:
        conn.request("GET", f"/{ACCOUNT_NAME}?comp=list")
        response = conn.getresponse()
        response.read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def is_answering(
    host: str = DEFAULT_HOST,
    ports: Sequence[int] | None = None,
    timeout: float = 1.0,
    *,
    tls: bool = False,
) -> bool:
    """True if all three ports accept a connection and answer an HTTP request.

    Any HTTP status counts (an unauthenticated list request gets 403 or 400 from
    Azurite); a refused connection, a timeout or a non-HTTP reply does not.
    """
    ports = AzuritePorts(*ports) if ports is not None else AzuritePorts()
    return all(_http_answers(host, port, timeout, tls) for port in ports)


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Node/libuv listens with SO_REUSEADDR, so do the same: TIME_WAIT leftovers of a
        # previous instance must not count as busy, while a live listener still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _check_ports_free(host: str, ports: Sequence[int]) -> None:
    for port in ports:
        if not _port_is_free(host, port):
            raise AzuritePortInUseError(host, port)


def find_free_port_base(
    host: str = DEFAULT_HOST, start: int = 20000, stop: int = 30000, step: int = 3
) -> int:
    """Return the first ``base`` in ``range(start, stop, step)`` whose three ports are free.

    This only probes; another process can still take the ports before Azurite binds them,
    so callers should retry on :class:`AzuritePortInUseError`.
    """
    for base in range(start, stop, step):
        if all(_port_is_free(host, port) for port in AzuritePorts.from_base(base)):
            return base
    raise AzuriteError(f"no three free consecutive ports on {host} in {start}..{stop}")


# --- installation -------------------------------------------------------------------------


def _package_json_text() -> str:
    return json.dumps(PACKAGE_JSON, indent=2) + "\n"


def _cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else Path.home() / ".cache"


def _write_package_json(directory: Path) -> None:
    package_json = directory / "package.json"
    if package_json.is_file():
        try:
            deps = json.loads(package_json.read_text()).get("dependencies", {})
        except (OSError, ValueError):
            deps = {}
        if deps.get("azurite") == AZURITE_VERSION:
            return
    directory.mkdir(parents=True, exist_ok=True)
    package_json.write_text(_package_json_text())
    logger.info("wrote %s", package_json)


def azurite_dir() -> Path:
    """Return the npm project directory that holds (or will hold) Azurite.

    In order: ``$DURABLE_AZURITE_DIR``; the repository's ``azurite/`` folder next to the
    package, if it has a ``package.json``; else ``~/.cache/durable-azure/azurite`` (or
    under ``$XDG_CACHE_HOME``). A ``package.json`` pinning :data:`AZURITE_VERSION` is
    written there if missing.
    """
    env_dir = os.environ.get(ENV_DIR)
    if env_dir:
        directory = Path(env_dir).expanduser().resolve()
        _write_package_json(directory)
        return directory
    repo_dir = Path(__file__).resolve().parent.parent / "azurite"
    if (repo_dir / "package.json").is_file():
        return repo_dir
    directory = _cache_home() / "durable-azure" / "azurite"
    _write_package_json(directory)
    return directory


def azurite_binary(directory: Path | None = None) -> Path:
    """The path of ``node_modules/.bin/azurite`` (which may not exist yet)."""
    directory = azurite_dir() if directory is None else directory
    return directory / "node_modules" / ".bin" / "azurite"


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextlib.contextmanager
def _install_lock(directory: Path) -> Iterator[None]:
    """Serialise concurrent installs into the same directory (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"durable-azure-azurite-install-{digest}.lock"
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def ensure_installed(directory: Path | None = None) -> Path:
    """Make sure the pinned Azurite is installed and return the path of its binary.

    Runs ``npm ci`` (``npm install`` when there is no lock file) only when
    ``node_modules/.bin/azurite`` is missing. Raises :class:`AzuriteError` when node or npm
    is missing or the install fails, with the tail of npm's output.
    """
    directory = azurite_dir() if directory is None else Path(directory)
    binary = azurite_binary(directory)
    if binary.exists():
        return binary
    if not (directory / "package.json").is_file():
        _write_package_json(directory)
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        raise AzuriteError(
            f"cannot install Azurite {AZURITE_VERSION}: {missing} not found on PATH. "
            "Install Node.js 18-20 with npm (e.g. `apt-get install nodejs npm`), or run "
            "Azurite yourself (azurite/docker-compose.yml) and point AZURITE_PORT_BASE "
            "or AZURITE_{BLOB,QUEUE,TABLE}_PORT at it."
        )
    with _install_lock(directory):
        if binary.exists():  # another process installed it while we waited
            return binary
        verb = "ci" if (directory / "package-lock.json").is_file() else "install"
        cmd = [npm, verb, "--no-audit", "--no-fund", "--loglevel=error"]
        logger.info("installing Azurite %s: %s (in %s)", AZURITE_VERSION, cmd, directory)
        try:
            result = subprocess.run(
                cmd,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_NPM_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AzuriteError(
                f"`npm {verb}` in {directory} did not finish within {_NPM_TIMEOUT:.0f} s"
            ) from exc
        except OSError as exc:
            raise AzuriteError(f"could not run `npm {verb}` in {directory}: {exc}") from exc
        if result.returncode != 0:
            output = (result.stderr or "") + (result.stdout or "")
            raise AzuriteError(
                f"`npm {verb}` in {directory} failed with exit code {result.returncode}; "
                f"npm said:\n{_tail(output)}"
            )
    if not binary.exists():
        raise AzuriteError(f"`npm {verb}` in {directory} succeeded but {binary} is missing")
    return binary


# --- running Azurite ----------------------------------------------------------------------


_live: set[AzuriteProcess] = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        processes = list(_live)
    for process in processes:
        with contextlib.suppress(Exception):
            process.stop(grace=5.0)


atexit.register(_stop_all_at_exit)


class AzuriteProcess:
    """One Azurite child process in a workspace directory of its own.

    ``location=None`` (the default) creates a fresh temporary workspace at :meth:`start`
    and removes it at :meth:`stop`; a given ``location`` is used as is and kept.
    Processes still running when the interpreter exits are stopped, unless
    :meth:`detach` was called.

    Use it as a context manager::

        with AzuriteProcess(ports=AzuritePorts.from_base(20000)) as azurite:
            use(azurite.connection_string)
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        ports: Sequence[int] | None = None,
        *,
        location: str | os.PathLike[str] | None = None,
        directory: Path | None = None,
        startup_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.ports = AzuritePorts(*ports) if ports is not None else resolve_ports()
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self._directory = directory
        self._location: Path | None = Path(location).resolve() if location else None
        self._owns_location = location is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def __repr__(self) -> str:
        return (
            f"AzuriteProcess(host={self.host!r}, ports={tuple(self.ports)}, "
            f"pid={self.pid}, location={str(self._location)!r})"
        )

    # -- properties

    @property
    def endpoint(self) -> AzuriteEndpoint:
        """Host and ports as an :class:`AzuriteEndpoint`."""
        return AzuriteEndpoint(self.host, self.ports)

    @property
    def connection_string(self) -> str:
        """The explicit connection string for this instance."""
        return connection_string(self.host, self.ports)

    @property
    def uses_https(self) -> bool:
        """True when ``extra_args`` give Azurite a certificate (``--cert``): it serves HTTPS."""
        return "--cert" in self.extra_args

    @property
    def pid(self) -> int | None:
        """The process id while running, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def location(self) -> Path | None:
        """The workspace directory (None before the first start)."""
        return self._location

    @property
    def log_path(self) -> Path | None:
        """The file that receives Azurite's stdout and stderr."""
        return self._location / _LOG_NAME if self._location is not None else None

    @property
    def running(self) -> bool:
        """True while the child process has not exited."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle

    def start(self) -> AzuriteProcess:
        """Spawn Azurite and wait until all three services answer.

        Raises :class:`AzuritePortInUseError` if a port is taken, and :class:`AzuriteError`
        with the tail of Azurite's log if it exits early or does not answer within
        ``startup_timeout`` seconds.
        """
        if self.running:
            raise AzuriteError(f"{self!r} is already running")
        self._proc = None
        binary = ensure_installed(self._directory)
        _check_ports_free(self.host, self.ports)
        if self._location is None:
            self._location = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
        self._location.mkdir(parents=True, exist_ok=True)
        log_path = self._location / _LOG_NAME
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in _terminate()
        log_offset = log_file.tell()
        cmd = [
            str(binary),
            *BASE_FLAGS,
            "--location",
            str(self._location),
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
            *self.extra_args,
        ]
        logger.debug("starting Azurite: %s", cmd)
        try:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self._location,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: Ctrl-C in a shell skips it
            )
        except OSError as exc:
            log_file.close()
            self._remove_location()
            raise AzuriteError(f"could not run {binary}: {exc}") from exc
        self._log_file = log_file
        with _live_lock:
            _live.add(self)
        try:
            self._wait_until_answering(log_path, log_offset)
        except BaseException:
            self.stop(grace=5.0)
            raise
        logger.info(
            "Azurite pid %s answers on %s ports %s (workspace %s)",
            self._proc.pid,
            self.host,
            tuple(self.ports),
            self._location,
        )
        return self

    def _wait_until_answering(self, log_path: Path, log_offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                log = _read_log(log_path, log_offset)
                message = (
                    f"Azurite exited with code {code} before answering on {self.host} "
                    f"ports {tuple(self.ports)}; its log ({log_path}) ends with:\n{_tail(log)}"
                )
                for port in self.ports:
                    if "EADDRINUSE" in log and f":{port}" in log:
                        raise AzuritePortInUseError(self.host, port, message)
                raise AzuriteError(message)
            if (
                is_answering(self.host, self.ports, timeout=0.5, tls=self.uses_https)
                and self._proc.poll() is None
            ):
                return
            if time.monotonic() > deadline:
                log = _read_log(log_path, log_offset)
                raise AzuriteError(
                    f"Azurite (pid {self._proc.pid}) did not answer on {self.host} ports "
                    f"{tuple(self.ports)} within {self.startup_timeout:.0f} s; its log "
                    f"({log_path}) ends with:\n{_tail(log)}"
                )
            time.sleep(0.05)

    def _terminate(self, grace: float) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                # Only the process group this object created (start_new_session=True).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "Azurite pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, grace
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            else:
                # The leader is gone; make sure nothing it left in its group lingers.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        with _live_lock:
            _live.discard(self)

    def _remove_location(self) -> None:
        if self._owns_location and self._location is not None:
            shutil.rmtree(self._location, ignore_errors=True)
            self._location = None

    def stop(self, grace: float = 10.0) -> None:
        """Stop the process this object started (SIGTERM, then SIGKILL after ``grace``).

        Removes the workspace if it was a temporary one created by :meth:`start`.
        Safe to call more than once, and on an instance that never started.
        """
        self._terminate(grace)
        self._remove_location()

    def restart(self, grace: float = 10.0) -> AzuriteProcess:
        """Stop gracefully and start again in the same workspace, keeping its data.

        Messages, table rows and blobs survive a graceful restart; blob and container
        leases come back expired.
        """
        self._terminate(grace)
        return self.start()

    def detach(self) -> None:
        """Leave the process running after this interpreter exits (used by ``start``)."""
        with _live_lock:
            _live.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._owns_location = False

    def wait(self) -> int:
        """Block until the process exits and return its exit code."""
        if self._proc is None:
            raise AzuriteError("Azurite is not running")
        return self._proc.wait()

    def __enter__(self) -> AzuriteProcess:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_on_free_ports(
    host: str = DEFAULT_HOST,
    *,
    first_base: int = 20000,
    attempts: int = 10,
    location: str | os.PathLike[str] | None = None,
    directory: Path | None = None,
    startup_timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> AzuriteProcess:
    """Start an :class:`AzuriteProcess` on the first free port base from ``first_base``.

    Retries further up when another process takes the probed ports before Azurite binds
    them (several test runs on one machine).
    """
    start = first_base
    for _ in range(attempts):
        base = find_free_port_base(host, start=start)
        process = AzuriteProcess(
            host,
            AzuritePorts.from_base(base),
            location=location,
            directory=directory,
            startup_timeout=startup_timeout,
            extra_args=extra_args,
        )
        try:
            return process.start()
        except AzuritePortInUseError:
            start = base + 3
    raise AzuriteError(f"{attempts} port bases from {first_base} were all taken meanwhile")


def _read_log(path: Path, offset: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


# --- pidfile helpers for the CLI -----------------------------------------------------------


def _state_path(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + ".json")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists" for kill(0); treat it as gone.
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _looks_like_azurite(pid: int) -> bool:
    """Guard against a recycled pid: on Linux, check the command line mentions azurite."""
    if not Path("/proc/self").exists():
        return True  # no procfs; trust the pidfile
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return b"azurite" in cmdline.read_bytes()
    except OSError:
        return False


def _stop_pid(pid: int, grace: float) -> bool:
    """SIGTERM ``pid``'s process group (it leads one), SIGKILL after ``grace``."""
    if not _pid_alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


# --- command line -------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default=None, help=f"listen address (default {DEFAULT_HOST})")
    common.add_argument("--port-base", type=int, default=None, help="blob=B, queue=B+1, table=B+2")
    common.add_argument("--blob-port", type=int, default=None)
    common.add_argument("--queue-port", type=int, default=None)
    common.add_argument("--table-port", type=int, default=None)
    common.add_argument(
        "--location", default=None, help="workspace directory (default: a fresh temp dir)"
    )
    common.add_argument(
        "--dir", default=None, help="npm project holding Azurite (default: auto, see docs)"
    )

    parser = argparse.ArgumentParser(
        prog="azurite.py",
        description=f"Install and run the Azurite {AZURITE_VERSION} storage emulator.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", parents=[common], help="npm-install the pinned Azurite")
    sub.add_parser("run", parents=[common], help="run in the foreground until Ctrl-C")
    start = sub.add_parser("start", parents=[common], help="start in the background")
    start.add_argument("--pidfile", required=True, type=Path)
    stop = sub.add_parser("stop", parents=[common], help="stop a background Azurite")
    stop.add_argument("--pidfile", required=True, type=Path)
    stop.add_argument("--grace", type=float, default=10.0, help="seconds before SIGKILL")
    status = sub.add_parser("status", parents=[common], help="does Azurite answer?")
    status.add_argument("--pidfile", type=Path, default=None)
    return parser


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _cmd_run(process: AzuriteProcess) -> int:
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        process.start()
        print(f"Azurite {AZURITE_VERSION} pid {process.pid}, workspace {process.location}")
        print(process.connection_string, flush=True)
        print("Press Ctrl-C to stop.", file=sys.stderr, flush=True)
        code = process.wait()
        print(f"Azurite exited with code {code}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        print("stopping Azurite...", file=sys.stderr, flush=True)
        return 0
    finally:
        process.stop()
        signal.signal(signal.SIGTERM, previous)


def _cmd_start(process: AzuriteProcess, pidfile: Path) -> int:
    if is_answering(process.host, process.ports):
        print(
            f"Azurite (or something speaking HTTP) already answers on {process.host} "
            f"ports {tuple(process.ports)}; not starting another.",
            file=sys.stderr,
        )
        print(process.connection_string)
        return 0
    owns_location = process.location is None
    process.start()
    assert process.pid is not None
    pidfile = pidfile.resolve()
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{process.pid}\n")
    state = {
        "pid": process.pid,
        "host": process.host,
        "ports": list(process.ports),
        "location": str(process.location),
        "owns_location": owns_location,
        "log": str(process.log_path),
        "connection_string": process.connection_string,
    }
    _state_path(pidfile).write_text(json.dumps(state, indent=2) + "\n")
    process.detach()
    print(
        f"Azurite {AZURITE_VERSION} started, pid {process.pid}, workspace {process.location}",
        file=sys.stderr,
    )
    print(process.connection_string)
    return 0


def _cmd_stop(pidfile: Path, grace: float) -> int:
    state_file = _state_path(pidfile)
    try:
        pid = int(pidfile.read_text().split()[0])
    except FileNotFoundError:
        print(f"no pidfile {pidfile}; nothing to stop", file=sys.stderr)
        return 0
    except (ValueError, IndexError, OSError) as exc:
        raise AzuriteError(f"unreadable pidfile {pidfile}: {exc}") from exc
    state: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(state_file.read_text())
    if state.get("pid") not in (None, pid):
        state = {}
    if _pid_alive(pid) and not _looks_like_azurite(pid):
        print(f"pid {pid} from {pidfile} is not Azurite any more; not signalling it")
    elif _stop_pid(pid, grace):
        print(f"stopped Azurite pid {pid}")
    else:
        print(f"Azurite pid {pid} was not running")
    if state.get("owns_location") and state.get("location"):
        location = Path(state["location"])
        if location.name.startswith(_TEMP_PREFIX):
            shutil.rmtree(location, ignore_errors=True)
    pidfile.unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)
    return 0


def _cmd_status(host: str, ports: AzuritePorts, pidfile: Path | None) -> int:
    if pidfile is not None:
        try:
            pid = int(pidfile.read_text().split()[0])
            alive = "running" if _pid_alive(pid) else "not running"
            print(f"pidfile {pidfile}: pid {pid} {alive}")
        except (OSError, ValueError, IndexError):
            print(f"pidfile {pidfile}: missing or unreadable")
    if is_answering(host, ports):
        print(f"Azurite answers on {host} ports {tuple(ports)}")
        print(connection_string(host, ports))
        return 0
    print(f"nothing answers on {host} ports {tuple(ports)}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = _build_parser().parse_args(argv)
    try:
        host = resolve_host(args.host)
        ports = resolve_ports(
            port_base=args.port_base,
            blob_port=args.blob_port,
            queue_port=args.queue_port,
            table_port=args.table_port,
        )
        directory = Path(args.dir).resolve() if args.dir else None
        if args.command == "install":
            binary = ensure_installed(directory)
            print(f"Azurite {AZURITE_VERSION}: {binary}")
            return 0
        if args.command == "status":
            return _cmd_status(host, ports, args.pidfile)
        if args.command == "stop":
            return _cmd_stop(args.pidfile, args.grace)
        process = AzuriteProcess(host, ports, location=args.location, directory=directory)
        if args.command == "run":
            return _cmd_run(process)
        if args.command == "start":
            return _cmd_start(process, args.pidfile)
    except AzuriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
