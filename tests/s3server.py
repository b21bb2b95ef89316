"""The real local S3 server (SeaweedFS) for tests: free ports, random credentials, stop and restart.

server = start_test_s3(tmp_path_factory.mktemp("s3"))
store = ResultStore(server.settings(bucket="results-test"))
with s3_down(server):  # stopped here, started again on the same ports and data afterwards
    ...
server.stop()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devtools.local_s3 import LocalS3, generate_credentials, start_local_s3

# SeaweedFS keeps its data through SIGKILL, so tests need not wait out a slow SIGTERM.
STOP_TIMEOUT_S = 10.0


def start_test_s3(tmp_dir: Path, *, ready_timeout_s: float = 60.0) -> LocalS3:
    """Start SeaweedFS with its data under ``tmp_dir`` on free ports, with fresh credentials."""
    key, secret = generate_credentials()
    return start_local_s3(
        tmp_dir,
        access_key_id=key,
        secret_access_key=secret,
        ready_timeout_s=ready_timeout_s,
        stop_timeout_s=STOP_TIMEOUT_S,
    )


@contextmanager
def s3_down(server: LocalS3) -> Iterator[LocalS3]:
    """Stop ``server`` for the block, then start it again on the same ports and data."""
    server.stop()
    try:
        yield server
    finally:
        server.start()
