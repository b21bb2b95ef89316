"""Credentials and configuration files of the local S3 server.

Credentials are always configured: without them SeaweedFS accepts any signature, which would hide
presigned-URL bugs. Generated ones are kept in ``data_dir/credentials.env`` (mode 0600) and reused
by the next start.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

from devtools.local_s3.errors import LocalS3Error

CREDENTIALS_FILE = "credentials.env"  # generated credentials, reused by the next start
ENV_FILE = "s3.env"  # written once ready, removed on stop: endpoint + credentials for `make run`
ACCESS_KEY_ENV = "SUPERRES_S3_ACCESS_KEY_ID"
SECRET_KEY_ENV = "SUPERRES_S3_SECRET_ACCESS_KEY"
ENDPOINT_ENV = "SUPERRES_S3_ENDPOINT_URL"
_KEY_CHARS = re.compile(r"^[A-Za-z0-9+/=._-]{3,128}$")


def generate_credentials() -> tuple[str, str]:
    return "LOCAL" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)


def load_or_create_credentials(data_dir: Path) -> tuple[str, str]:
    """Credentials from ``data_dir/credentials.env``; generated (mode 0600) when it is missing."""
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        values = read_env_file(path)
        try:
            return values[ACCESS_KEY_ENV], values[SECRET_KEY_ENV]
        except KeyError as exc:
            raise LocalS3Error(f"{path} lacks {exc.args[0]}: fix it or delete it") from exc
    key, secret = generate_credentials()
    data_dir.mkdir(parents=True, exist_ok=True)
    write_private(path, f"{ACCESS_KEY_ENV}={key}\n{SECRET_KEY_ENV}={secret}\n")
    return key, secret


def check_key(value: str, what: str) -> None:
    if not _KEY_CHARS.match(value):
        raise LocalS3Error(
            f"the {what} must be 3-128 characters of letters, digits and + / = . _ -"
        )


def identities(access_key_id: str, secret_access_key: str) -> dict[str, Any]:
    """SeaweedFS's ``-s3.config``: one identity with these keys, allowed everything."""
    return {
        "identities": [
            {
                "name": "superres",
                "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values
