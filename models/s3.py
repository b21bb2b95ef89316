"""The S3 implementation of ``models.storage.ObjectStore``: boto3, presigned URLs, multipart uploads
for large objects, and the sorting of S3's failures into "unavailable" (503) versus our own bugs.

No broken state is cached: the next call tries the server again, so the store heals by itself when
storage comes back.
"""

from __future__ import annotations

import contextlib
import io
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

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

from models.storage import ObjectInfo, StorageSettings, StorageUnavailableError, StoredResult

_EXTENSION = re.compile(r"^[a-z0-9]{1,10}$")
_METADATA_KEY = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_NO_BUCKET = frozenset({"404", "NoSuchBucket"})  # head_bucket answers a bare 404
_NO_KEY = frozenset({"404", "NoSuchKey"})
MULTIPART_THRESHOLD = 8 << 20  # S3's smallest part is 5 MiB; boto3's own threshold is 8 MiB
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
        self,
        data: bytes | BinaryIO,
        *,
        content_type: str,
        extension: str,
        metadata: Mapping[str, str],
        key: str | None = None,
    ) -> StoredResult:
        """Store ``data`` under ``key`` (default: a new unique key under the prefix) and return
        it with a presigned GET URL. Bytes or streams over ``MULTIPART_THRESHOLD`` go up in parts,
        so a large result never needs a second copy in memory."""
        if not _EXTENSION.match(extension):
            raise ValueError(f"extension {extension!r} must be 1-10 lowercase letters or digits")
        stream = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
        if key is None:
            key = (
                f"{self.settings.prefix}{datetime.now(UTC):%Y/%m/%d}/{uuid.uuid4().hex}.{extension}"
            )
        params: dict[str, Any] = {
            "Bucket": self.settings.bucket,
            "Key": key,
            "ContentType": content_type,
            "Metadata": _checked_metadata(metadata),
        }
        first = stream.read(MULTIPART_THRESHOLD)
        allow = _NO_BUCKET if self.settings.create_bucket else frozenset()
        try:
            size = self._upload(first, stream, params, allow)
        except ClientError as exc:
            if _code(exc) not in allow:
                raise
            # The bucket vanished (e.g. a wiped dev server): recreate it once and retry.
            self.ensure_bucket()
            stream.seek(len(first))
            size = self._upload(first, stream, params, frozenset())
        url, expires_at = self.presign(key)
        return StoredResult(
            key=key, url=url, expires_at=expires_at, bytes=size, content_type=content_type
        )

    def _upload(
        self, first: bytes, stream: BinaryIO, params: dict[str, Any], allow: frozenset[str]
    ) -> int:
        """One PUT for what fits in a part; else a multipart upload, aborted if a part fails."""
        if len(first) < MULTIPART_THRESHOLD:
            self._call("put_object", allow=allow, Body=first, **params)
            return len(first)
        upload = self._call("create_multipart_upload", allow=allow, **params)["UploadId"]
        where = {"Bucket": params["Bucket"], "Key": params["Key"], "UploadId": upload}
        parts: list[dict[str, Any]] = []
        size, chunk = 0, first
        try:
            while chunk:
                number = len(parts) + 1
                done = self._call("upload_part", Body=chunk, PartNumber=number, **where)
                parts.append({"ETag": done["ETag"], "PartNumber": number})
                size += len(chunk)
                chunk = stream.read(MULTIPART_THRESHOLD)
            self._call("complete_multipart_upload", MultipartUpload={"Parts": parts}, **where)
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(**where)
            raise
        return size

    def head(self, key: str) -> ObjectInfo | None:
        """Size, type and metadata of ``key``, or None when there is no such object."""
        try:
            got = self._call("head_object", allow=_NO_KEY, Bucket=self.settings.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _NO_KEY:
                return None
            raise
        return ObjectInfo(
            key=key,
            bytes=int(got["ContentLength"]),
            content_type=str(got.get("ContentType", "")),
            metadata=dict(got.get("Metadata", {})),
        )

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""
        try:
            got = self._call("get_object", allow=_NO_KEY, Bucket=self.settings.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _NO_KEY:
                return None
            raise
        data: bytes = got["Body"].read()
        return data

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (all pages)."""
        found: list[str] = []
        params: dict[str, Any] = {"Bucket": self.settings.bucket, "Prefix": prefix}
        while True:
            page = self._call("list_objects_v2", **params)
            found += [item["Key"] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return found
            params["ContinuationToken"] = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing object is not an error (S3 says so too)."""
        self._call("delete_object", Bucket=self.settings.bucket, Key=key)

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
