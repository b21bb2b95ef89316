"""ResultStore and the local S3 server, against a real SeaweedFS (presigned-URL security included)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import SecretStr, ValidationError

from devtools.local_s3 import (
    CREDENTIALS_FILE,
    ENV_FILE,
    LocalS3,
    LocalS3Error,
    MiniPorts,
    load_or_create_credentials,
    start_local_s3,
)
from models.s3 import ResultStore
from models.storage import StorageSettings, StorageUnavailableError
from tests.s3server import s3_down, start_test_s3

BUCKET = "results-test"
pytestmark = pytest.mark.timeout(180)

KEY_PATTERN = re.compile(r"^results/(\d{4})/(\d{2})/(\d{2})/[0-9a-f]{32}\.png$")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    server = start_test_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def raw(s3: LocalS3) -> Any:
    """A plain boto3 client to inspect what the store wrote."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="module")
def store(s3: LocalS3) -> ResultStore:
    result_store = ResultStore(s3.settings(bucket=BUCKET))
    result_store.ensure_bucket()
    return result_store


def _payload(seed: int, size: int = 50_000) -> bytes:
    return random.Random(seed).randbytes(size)


def _put(store: ResultStore, data: bytes) -> Any:
    return store.put(
        data,
        content_type="image/png",
        extension="png",
        metadata={"model": "realesrgan-x4plus", "scale": "4"},
    )


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- settings -------------------------------------------------------------------------------------


def test_settings_defaults_and_normalisation() -> None:
    settings = StorageSettings(
        endpoint_url="http://127.0.0.1:8333/",
        access_key_id="key",
        secret_access_key=SecretStr("very-secret"),
        prefix="out",
    )
    assert settings.endpoint_url == "http://127.0.0.1:8333"
    assert settings.prefix == "out/"
    assert settings.url_ttl_s == 3600
    assert settings.bucket == "superres-results"
    assert "very-secret" not in repr(settings)
    assert StorageSettings(prefix="").prefix == ""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url_ttl_s": 0}, "between 1 and 604800"),
        ({"url_ttl_s": 604_801}, "between 1 and 604800"),
        ({"bucket": "Results_Bucket"}, "not a valid S3 bucket name"),
        ({"bucket": "ab"}, "not a valid S3 bucket name"),
        ({"endpoint_url": "127.0.0.1:8333"}, "http(s)://host"),
        ({"public_endpoint_url": "http://h:1/?a=b"}, "no query string"),
        ({"access_key_id": "key"}, "together"),
        ({"access_key_id": " ", "secret_access_key": "s"}, "must not be empty"),
        ({"prefix": "/results/"}, "relative key prefix"),
        ({"prefix": "a/../b/"}, "relative key prefix"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"connect_timeout_s": 0}, "timeouts"),
        ({"region": " "}, "region must not be empty"),
        ({"bukket": "typo"}, "Extra inputs are not permitted"),
    ],
)
def test_settings_reject_bad_values(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        StorageSettings(**fields)


def test_put_validates_extension_and_metadata_before_any_request() -> None:
    # The endpoint is closed: only validation can answer.
    store = ResultStore(
        StorageSettings(
            endpoint_url="http://127.0.0.1:9", access_key_id="k", secret_access_key=SecretStr("s")
        )
    )
    with pytest.raises(ValueError, match="extension"):
        store.put(b"x", content_type="image/png", extension=".png", metadata={})
    with pytest.raises(ValueError, match="printable ASCII"):
        store.put(b"x", content_type="image/png", extension="png", metadata={"model": "modèle"})
    with pytest.raises(ValueError, match="lowercase"):
        store.put(b"x", content_type="image/png", extension="png", metadata={"Model": "m"})


# --- buckets --------------------------------------------------------------------------------------


def test_ensure_bucket_creates_it_once(s3: LocalS3, raw: Any) -> None:
    store = ResultStore(s3.settings(bucket="ensure-test"))
    with pytest.raises(ClientError):
        raw.head_bucket(Bucket="ensure-test")
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.ensure_bucket()
    raw.head_bucket(Bucket="ensure-test")
    assert "ensure-test" in {b["Name"] for b in raw.list_buckets()["Buckets"]}


def test_missing_bucket_without_create_is_unavailable(s3: LocalS3) -> None:
    store = ResultStore(s3.settings(bucket="never-created", create_bucket=False))
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        store.ensure_bucket()
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        _put(store, b"data")


def test_put_recreates_a_vanished_bucket(s3: LocalS3, raw: Any) -> None:
    store = ResultStore(s3.settings(bucket="vanishing-test"))
    store.ensure_bucket()
    raw.delete_bucket(Bucket="vanishing-test")
    result = _put(store, b"after the bucket vanished")
    assert raw.get_object(Bucket="vanishing-test", Key=result.key)["Body"].read() == (
        b"after the bucket vanished"
    )


def test_wrong_credentials_are_unavailable(s3: LocalS3) -> None:
    store = ResultStore(s3.settings(bucket=BUCKET, secret_access_key="wrong-secret"))
    with pytest.raises(StorageUnavailableError, match="refused"):
        store.ensure_bucket()
    with pytest.raises(StorageUnavailableError, match="refused"):
        _put(store, b"data")


# --- put and presigned URLs -----------------------------------------------------------------------


def test_put_then_presigned_get_without_credentials(store: ResultStore, raw: Any) -> None:
    data = _payload(1)
    digest = hashlib.sha256(data).hexdigest()
    before = datetime.now(UTC)
    result = store.put(
        data,
        content_type="image/png",
        extension="png",
        metadata={"model": "realesrgan-x4plus", "scale": "4", "input-sha256": digest},
    )
    match = KEY_PATTERN.match(result.key)
    assert match, result.key
    year, month, day = map(int, match.groups())
    key_day = datetime(year, month, day, tzinfo=UTC)
    assert before - timedelta(days=1) < key_day <= before
    assert result.bytes == len(data)
    assert result.content_type == "image/png"
    assert result.expires_at.tzinfo is not None
    ttl = (result.expires_at - before).total_seconds()
    assert 3598 <= ttl <= 3601
    assert result.url.startswith(f"{store.settings.endpoint_url}/{BUCKET}/{result.key}?")

    response = httpx.get(result.url)  # no credentials: the signature alone grants access
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"

    head = raw.head_object(Bucket=BUCKET, Key=result.key)
    assert head["Metadata"] == {
        "model": "realesrgan-x4plus",
        "scale": "4",
        "input-sha256": digest,
    }
    assert head["ContentLength"] == len(data)


def test_keys_are_unique(store: ResultStore) -> None:
    keys = {_put(store, b"same bytes").key for _ in range(5)}
    assert len(keys) == 5


def test_tampered_urls_are_refused(store: ResultStore) -> None:
    first, second = _put(store, _payload(2)), _put(store, _payload(3))
    assert httpx.get(first.url).status_code == 200

    signature = dict(parse_qsl(urlsplit(first.url).query))["X-Amz-Signature"]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert httpx.get(_with_query(first.url, **{"X-Amz-Signature": flipped})).status_code == 403
    # The signature of one object does not open another.
    other = first.url.replace(first.key, second.key)
    assert other != first.url
    assert httpx.get(other).status_code == 403
    # Nor can the lifetime be stretched.
    assert httpx.get(_with_query(first.url, **{"X-Amz-Expires": "604800"})).status_code == 403


def test_anonymous_access_is_refused(store: ResultStore) -> None:
    result = _put(store, _payload(4))
    endpoint = store.settings.endpoint_url
    assert httpx.get(f"{endpoint}/{BUCKET}/{result.key}").status_code == 403
    assert httpx.get(f"{endpoint}/{BUCKET}?list-type=2").status_code == 403


def test_expired_url_is_refused(s3: LocalS3, store: ResultStore) -> None:
    short = ResultStore(s3.settings(bucket=BUCKET, url_ttl_s=3))
    result = _put(short, b"short-lived")
    assert httpx.get(result.url).status_code == 200
    deadline = time.monotonic() + 15
    status = 200
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.25)
        status = httpx.get(result.url).status_code
    refused_at = datetime.now(UTC)
    assert status == 403
    assert refused_at >= result.expires_at  # not before the promised time
    # The object itself is still there: a fresh URL works.
    assert httpx.get(store.presign(result.key)[0]).content == b"short-lived"


def test_public_endpoint_url_is_used_for_presigning(s3: LocalS3) -> None:
    public = f"http://localhost:{s3.ports.s3}"
    store = ResultStore(s3.settings(bucket=BUCKET, public_endpoint_url=public))
    result = _put(store, _payload(5))  # written through 127.0.0.1
    assert result.url.startswith(f"{public}/{BUCKET}/")
    response = httpx.get(result.url)
    assert response.status_code == 200
    assert response.content == _payload(5)


# --- storage down and back ------------------------------------------------------------------------


def test_storage_down_is_unavailable_then_recovers(s3: LocalS3, store: ResultStore) -> None:
    before = _put(store, _payload(6))
    tmp = Path(os.environ.get("TMPDIR") or "/tmp")  # where weed puts its gRPC sockets
    grpc_socket = tmp / f"seaweedfs-s3-grpc-{s3.ports.grpc('s3')}.sock"
    with s3_down(s3):
        assert not s3.running
        assert not grpc_socket.exists()
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="unreachable"):
            store.ensure_bucket()
        with pytest.raises(StorageUnavailableError, match="unreachable"):
            _put(store, b"while down")
        assert time.monotonic() - started < 10
    assert s3.running
    store.ensure_bucket()  # the same store object, no restart of ours
    after = _put(store, _payload(7))
    assert httpx.get(after.url).content == _payload(7)
    assert httpx.get(before.url).content == _payload(6)  # data survived the restart


# --- the local server itself ----------------------------------------------------------------------


def test_start_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(LocalS3Error, match=f"port {port} .* in use"):
            start_local_s3(tmp_path, s3_port=port, access_key_id="key", secret_access_key="secret")


def test_start_reports_a_binary_that_exits(tmp_path: Path) -> None:
    server = LocalS3(
        data_dir=tmp_path,
        access_key_id="key",
        secret_access_key="secret",
        ports=MiniPorts.pick(),
        binary=Path("/bin/false"),
    )
    with pytest.raises(LocalS3Error, match="exited with status 1"):
        server.start()
    assert not server.running


def test_credentials_are_generated_private_and_reused(tmp_path: Path) -> None:
    key, secret = load_or_create_credentials(tmp_path)
    path = tmp_path / CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 30
    assert load_or_create_credentials(tmp_path) == (key, secret)


def test_cli_runs_in_the_foreground_until_sigterm(tmp_path: Path) -> None:
    port = MiniPorts.pick().s3
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERRES_S3_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.local_s3",
            "run",
            "--data-dir",
            str(tmp_path),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("# local S3"):  # the last line, printed once ready
                break
        printed = dict(
            line.strip().split("=", 1)
            for line in lines
            if "=" in line and line.startswith("SUPERRES_S3_")
        )
        assert printed["SUPERRES_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{port}", lines
        key, secret = load_or_create_credentials(tmp_path)
        assert (printed["SUPERRES_S3_ACCESS_KEY_ID"], printed["SUPERRES_S3_SECRET_ACCESS_KEY"]) == (
            key,
            secret,
        )
        assert (tmp_path / ENV_FILE).exists()
        store = ResultStore(
            StorageSettings(
                endpoint_url=printed["SUPERRES_S3_ENDPOINT_URL"],
                access_key_id=key,
                secret_access_key=SecretStr(secret),
                bucket="cli-test",
            )
        )
        assert httpx.get(_put(store, b"cli").url).content == b"cli"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
        assert not (tmp_path / ENV_FILE).exists()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/")
    finally:
        if process.poll() is None:  # SIGTERM lets the CLI stop its weed child
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_large_objects_go_up_in_parts_from_a_stream(store: ResultStore, raw: Any) -> None:
    from models.s3 import MULTIPART_THRESHOLD

    data = os.urandom(2 * MULTIPART_THRESHOLD + 12345)
    calls: list[str] = []
    original = store._client.upload_part

    def counting(**params: Any) -> Any:
        calls.append(params["PartNumber"])
        return original(**params)

    store._client.upload_part = counting
    try:
        result = store.put(
            io.BytesIO(data), content_type="image/png", extension="png", metadata={}, key="big.png"
        )
    finally:
        store._client.upload_part = original
    assert calls == [1, 2, 3] and result.bytes == len(data) and result.key == "big.png"
    assert httpx.get(result.url).content == data
    uploads = raw.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert uploads == []  # completed, nothing left behind


def test_head_exists_and_delete(store: ResultStore) -> None:
    result = _put(store, b"some result bytes")
    info = store.head(result.key)
    assert info is not None and info.bytes == len(b"some result bytes")
    assert store.exists(result.key)
    store.delete(result.key)
    assert not store.exists(result.key) and store.head(result.key) is None
    store.delete(result.key)  # deleting twice is fine


def test_read_and_list_keys(store: ResultStore) -> None:
    keys = [f"listing/{i:04d}.json" for i in range(3)]
    for i, key in enumerate(keys):
        store.put(b"x" * i, content_type="application/json", extension="json", metadata={}, key=key)
    assert store.keys("listing/") == keys
    assert store.read(keys[2]) == b"xx"
    assert store.read("listing/missing.json") is None
    assert store.keys("nothing-here/") == []
