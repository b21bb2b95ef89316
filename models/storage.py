"""Result storage: upscaled images go to an S3 bucket and are handed out as presigned GET URLs.

Works with any S3-compatible endpoint (AWS S3, Cloudflare R2, MinIO, SeaweedFS). Objects are
private: nothing gets a public ACL, so a URL is only good with its signature and until it expires.

Every failure that means "storage is down, unreachable, forbidden or has no bucket" becomes
``StorageUnavailableError`` (the API answers 503). No broken state is cached: the next call tries
the server again, so the store heals by itself when storage comes back.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

MAX_URL_TTL_S = 604_800  # 7 days: the longest a SigV4 presigned URL may live

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_EXTENSION = re.compile(r"^[a-z0-9]{1,10}$")
_METADATA_KEY = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_NO_BUCKET = frozenset({"404", "NoSuchBucket"})  # head_bucket answers a bare 404
_BUCKET_TAKEN = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_FORBIDDEN_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
    }
)
_WRONG_REGION_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed"})
# Server-side trouble, whatever the HTTP status says.
_UNAVAILABLE_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
)
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


class StorageUnavailableError(Exception):
    """Storage is down, unreachable, refuses our credentials or has no bucket: retry later."""


@dataclass(frozen=True)
class StoredResult:
    key: str
    url: str  # presigned GET URL
    expires_at: datetime  # UTC; the URL is refused from then on
    bytes: int
    content_type: str


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


class ResultStore:
    """Puts result bytes into the bucket and presigns GET URLs. Safe to share across threads."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=settings.connect_timeout_s,
            read_timeout=settings.read_timeout_s,
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
            # boto3's default CRC checksums (since 1.36) are refused by some S3-compatible servers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        secret = settings.secret_access_key
        # A session of our own: boto3's default session is not safe to share across threads.
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            region_name=settings.region,
        )
        self._client: Any = session.client("s3", endpoint_url=settings.endpoint_url, config=config)
        # Presigning is offline; a second client only changes the host written into the URL.
        self._presigner: Any = (
            session.client("s3", endpoint_url=settings.public_endpoint_url, config=config)
            if settings.public_endpoint_url
            else self._client
        )

    def ensure_bucket(self) -> None:
        """Make sure the bucket exists, creating it when allowed. Idempotent."""
        bucket = self.settings.bucket
        try:
            self._call("head_bucket", allow=_NO_BUCKET, Bucket=bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _NO_BUCKET:
                raise
        if not self.settings.create_bucket:
            raise StorageUnavailableError(
                f"bucket {bucket!r} does not exist at {self._where()} and create_bucket is off: "
                "create the bucket or allow the service to create it"
            )
        params: dict[str, Any] = {"Bucket": bucket}
        if self.settings.endpoint_url is None and self.settings.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        try:
            self._call("create_bucket", allow=_BUCKET_TAKEN, **params)
        except ClientError as exc:
            if _code(exc) == "BucketAlreadyExists":
                raise StorageUnavailableError(
                    f"bucket name {bucket!r} is taken by another account: choose another bucket"
                ) from exc
            if _code(exc) != "BucketAlreadyOwnedByYou":  # that one: another replica was faster
                raise

    def put(
        self, data: bytes, *, content_type: str, extension: str, metadata: Mapping[str, str]
    ) -> StoredResult:
        """Store ``data`` under a new unique key and return it with a presigned GET URL."""
        if not _EXTENSION.match(extension):
            raise ValueError(f"extension {extension!r} must be 1-10 lowercase letters or digits")
        meta = _checked_metadata(metadata)
        now = datetime.now(UTC)
        key = f"{self.settings.prefix}{now:%Y/%m/%d}/{uuid.uuid4().hex}.{extension}"
        params: dict[str, Any] = {
            "Bucket": self.settings.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
            "Metadata": meta,
        }
        allow = _NO_BUCKET if self.settings.create_bucket else frozenset()
        try:
            self._call("put_object", allow=allow, **params)
        except ClientError as exc:
            if _code(exc) not in allow:
                raise
            # The bucket vanished (e.g. a wiped dev server): recreate it once and retry.
            self.ensure_bucket()
            self._call("put_object", **params)
        url, expires_at = self.presign(key)
        return StoredResult(
            key=key, url=url, expires_at=expires_at, bytes=len(data), content_type=content_type
        )

    def presign(self, key: str) -> tuple[str, datetime]:
        """A GET URL for ``key`` valid for ``url_ttl_s``, and when it expires (UTC). Offline."""
        ttl = self.settings.url_ttl_s
        # SigV4 dates have whole seconds: truncating keeps expires_at at or before the real end.
        signed_at = datetime.now(UTC).replace(microsecond=0)
        try:
            url: str = self._presigner.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.settings.bucket, "Key": key},
                ExpiresIn=ttl,
            )
        except _CREDENTIAL_ERRORS as exc:
            raise StorageUnavailableError(f"cannot sign result URLs: {exc}") from exc
        return url, signed_at + timedelta(seconds=ttl)

    # --- helpers ------------------------------------------------------------------------------

    def _call(self, operation: str, *, allow: frozenset[str] = frozenset(), **params: Any) -> Any:
        """Run one S3 operation; failures meaning "unavailable" become StorageUnavailableError.

        ClientErrors whose code is in ``allow`` are re-raised for the caller to handle; other
        ClientErrors that do not mean "unavailable" (a bug of ours) are re-raised unchanged.
        """
        try:
            return getattr(self._client, operation)(**params)
        except ClientError as exc:
            if _code(exc) in allow:
                raise
            error = self._unavailable(exc, operation)
            if error is None:
                raise
            raise error from exc
        except (BotoConnectionError, HTTPClientError) as exc:
            raise StorageUnavailableError(
                f"S3 storage at {self._where()} is unreachable ({operation}): {exc}"
            ) from exc
        except _CREDENTIAL_ERRORS as exc:
            raise StorageUnavailableError(f"no usable S3 credentials: {exc}") from exc

    def _unavailable(self, exc: ClientError, operation: str) -> StorageUnavailableError | None:
        code, status = _code(exc), _status(exc)
        where = f"bucket {self.settings.bucket!r} at {self._where()}"
        if status == 403 or code in _FORBIDDEN_CODES:
            return StorageUnavailableError(
                f"{operation} on {where} was refused ({code or status}): check the access key, "
                "the secret and the key's permissions"
            )
        if code in _NO_BUCKET:
            return StorageUnavailableError(f"{where} does not exist ({operation})")
        if status == 301 or code in _WRONG_REGION_CODES:
            return StorageUnavailableError(
                f"{operation} on {where} answered {code or status}: the bucket lives in another "
                f"region than {self.settings.region!r}; set the region (or endpoint) to the bucket's"
            )
        if (status is not None and status >= 500) or code in _UNAVAILABLE_CODES:
            return StorageUnavailableError(f"{operation} on {where} failed: {code or status}")
        return None

    def _where(self) -> str:
        return self.settings.endpoint_url or f"AWS S3 ({self.settings.region})"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _checked_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """S3 user metadata travels as HTTP headers: lowercase ASCII keys, printable ASCII values."""
    checked = {}
    for key, value in metadata.items():
        if not _METADATA_KEY.match(key):
            raise ValueError(f"metadata key {key!r} must be lowercase letters, digits and '-'")
        if not (value.isascii() and value.isprintable()):
            raise ValueError(f"metadata value for {key!r} must be printable ASCII: {value!r}")
        checked[key] = value
    return checked
