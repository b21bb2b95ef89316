"""``python -m devtools.local_s3 run``: the local S3 server in the foreground until Ctrl+C/SIGTERM.

Once ready it prints (and writes to ``data_dir/s3.env``) the environment that points a client at
it; the file is removed again on stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from devtools.local_s3.credentials import (
    ACCESS_KEY_ENV,
    ENV_FILE,
    SECRET_KEY_ENV,
    load_or_create_credentials,
    write_private,
)
from devtools.local_s3.errors import LocalS3Error
from devtools.local_s3.ports import DEFAULT_S3_PORT
from devtools.local_s3.server import start_local_s3


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
        write_private(env_file, lines)
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
    parser = argparse.ArgumentParser(prog="python -m devtools.local_s3", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the local S3 server in the foreground")
    run.add_argument("--data-dir", type=Path, default=Path(".run/s3"))
    run.add_argument("--port", type=int, default=DEFAULT_S3_PORT, help="S3 port (default 8333)")
    run.add_argument("--ready-timeout", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return _run(args)
