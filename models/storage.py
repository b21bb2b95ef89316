"""Where results go: the storage contract every layer uses, and its settings.

``ObjectStore`` is the seam (put bytes or a stream, presign, head, delete, exists); ``models.s3``
implements it for any S3-compatible endpoint (AWS S3, Cloudflare R2, MinIO, SeaweedFS). Objects are
private: a URL is only good with its signature and until it expires.

Every failure that means "storage is down, unreachable, forbidden or has no bucket" is
``StorageUnavailableError`` (the API answers 503).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

MAX_URL_TTL_S = 604_800  # 7 days: the longest a SigV4 presigned URL may live

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StorageUnavailableError(Exception):
    """Storage is down, unreachable, refuses our credentials or has no bucket: retry later."""


@dataclass(frozen=True)
class StoredResult:
    key: str
    url: str  # presigned GET URL
    expires_at: datetime  # UTC; the URL is refused from then on
    bytes: int
    content_type: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    bytes: int
    content_type: str
    metadata: dict[str, str]


class ObjectStore(Protocol):
    """The storage seam: results now, job inputs and records later."""

    def ensure_bucket(self) -> None: ...

    def put(
        self,
        data: bytes | BinaryIO,
        *,
        content_type: str,
        extension: str,
        metadata: Mapping[str, str],
        key: str | None = None,
    ) -> StoredResult:
        """Store ``data`` (bytes, or a binary stream read to its end) under ``key`` (default: a
        new unique key) and return it with a presigned GET URL."""
        ...

    def presign(self, key: str) -> tuple[str, datetime]: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (all pages)."""
        ...


class StorageSettings(BaseModel):
    """Where results go and how long their URLs live."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_url: str | None = None  # None: AWS S3 of ``region``
    # The endpoint clients reach when it differs from what replicas use (e.g. in Kubernetes).
    public_endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None  # None (with the secret): boto3's default credential chain
    secret_access_key: SecretStr | None = None
    bucket: str = "superres-results"
    prefix: str = "results/"
    url_ttl_s: int = 3600
    create_bucket: bool = True
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 30.0
    max_attempts: int = 2

    @field_validator("endpoint_url", "public_endpoint_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{value!r} is not an endpoint URL: write it as http(s)://host[:port], "
                "e.g. http://127.0.0.1:8333"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r}: an endpoint URL takes no query string or fragment")
        return value.strip().rstrip("/")

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "region must not be empty (use us-east-1 for MinIO/SeaweedFS, auto for R2)"
            )
        return value.strip()

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        if not _BUCKET_NAME.match(value) or ".." in value:
            raise ValueError(
                f"bucket {value!r} is not a valid S3 bucket name: use 3-63 characters of lowercase "
                "letters, digits, '-' and '.', starting and ending with a letter or digit"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError(
                f"prefix {value!r} must be a relative key prefix such as 'results/' "
                "(no leading '/', no '..')"
            )
        if value and not value.endswith("/"):
            value += "/"
        return value

    @field_validator("url_ttl_s")
    @classmethod
    def _check_ttl(cls, value: int) -> int:
        if not 1 <= value <= MAX_URL_TTL_S:
            raise ValueError(
                f"url_ttl_s must be between 1 and {MAX_URL_TTL_S} seconds (7 days, the SigV4 "
                f"maximum); got {value}"
            )
        return value

    @field_validator("connect_timeout_s", "read_timeout_s")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if not 0 < value <= 600:
            raise ValueError(f"timeouts must be in (0, 600] seconds; got {value}")
        return value

    @field_validator("max_attempts")
    @classmethod
    def _check_attempts(cls, value: int) -> int:
        if not 1 <= value <= 10:
            raise ValueError(f"max_attempts must be between 1 and 10 (1 = no retry); got {value}")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> StorageSettings:
        key = self.access_key_id
        secret = self.secret_access_key.get_secret_value() if self.secret_access_key else None
        if (key is None) != (secret is None):
            raise ValueError(
                "set access_key_id and secret_access_key together, or leave both unset to use "
                "boto3's default credential chain (environment, profile, instance role)"
            )
        if key is not None and (not key.strip() or not (secret or "").strip()):
            raise ValueError("access_key_id and secret_access_key must not be empty")
        return self
