"""The Python SDK (superres_client) against the real service, and its retries against a stub."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image as PILImage

import superres_client
from superres_client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    InvalidOptions,
    JobCancelled,
    JobFailed,
    NotFound,
    Overloaded,
    Result,
    Retry,
    SuperresError,
)
from tests.test_api import encode, noise

pytestmark = pytest.mark.serve


def size_of(data: bytes) -> tuple[int, int]:
    return PILImage.open(io.BytesIO(data)).size


def test_upscale_bytes_and_path(serve_app, tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(encode(noise(12, 20, seed=51)))
    with Client(serve_app.url) as sr:
        from_bytes = sr.upscale(path.read_bytes(), scale=2, format="webp")
        from_path = sr.upscale(path, scale=3)
    assert isinstance(from_bytes, Result)
    assert (from_bytes.width, from_bytes.height, from_bytes.format) == (40, 24, "webp")
    assert from_bytes.model == "tiny-x4" and from_bytes.scale == 2
    assert size_of(from_bytes.read()) == (40, 24)
    saved = from_path.save(tmp_path / "out.png")
    assert size_of(saved.read_bytes()) == (60, 36) and from_path.format == "png"


def test_async_upscale_and_job(serve_app) -> None:
    async def go() -> tuple[Result, Result, bytes]:
        async with AsyncClient(serve_app.url) as sr:
            direct, job = await asyncio.gather(
                sr.upscale(encode(noise(10, 10, seed=52)), scale=2),
                sr.submit(encode(noise(10, 10, seed=53)), scale=3),
            )
            return direct, await job.wait(timeout=120), await direct.aread()

    direct, waited, data = asyncio.run(go())
    assert (direct.width, waited.width) == (20, 30)
    assert size_of(data) == (20, 20)


def test_submit_wait_reports_tile_progress(serve_app) -> None:
    calls: list[tuple[int, int]] = []
    with Client(serve_app.url) as sr:
        job = sr.submit(encode(noise(256, 256, seed=54)), scale=2)
        assert job.id.startswith("job_") and job.status() in ("queued", "running", "succeeded")
        result = job.wait(progress=lambda done, total: calls.append((done, total)), timeout=180)
        assert job.result == result and job.view.status == "succeeded"
    assert (result.width, result.height) == (512, 512)
    assert calls, "the progress callback was never called"
    done, total = calls[-1]
    assert done == total >= 1
    assert all(d <= t for d, t in calls) and calls == sorted(calls)


def test_cancel(serve_app) -> None:
    with Client(serve_app.url) as sr:
        job = sr.submit(encode(noise(900, 900, seed=55)), scale=4)
        view = job.cancel()
        assert view.status == "cancelled", view
        with pytest.raises(JobCancelled) as caught:
            job.wait(timeout=30)
        assert caught.value.job.id == job.id
        with pytest.raises(Conflict) as again:
            job.cancel()
        assert (again.value.status, again.value.code) == (409, "job_finished")


def test_typed_errors(serve_app) -> None:
    with Client(serve_app.url) as sr:
        # refused by the server's own option models before anything is sent
        with pytest.raises(InvalidOptions) as bad_scale:
            sr.upscale(b"never sent", scale=99)
        assert bad_scale.value.status is None and "scale" in bad_scale.value.message
        with pytest.raises(InvalidOptions):
            sr.submit(b"never sent", colour="red")
        # refused by the server
        with pytest.raises(BadRequest) as not_image:
            sr.upscale(b"this is not an image")
        assert (not_image.value.status, not_image.value.code) == (415, "unsupported_media_type")
        with pytest.raises(BadRequest) as unknown_model:
            sr.upscale(encode(noise(8, 8)), model="no-such-model")
        assert unknown_model.value.status == 400 and unknown_model.value.message
        with pytest.raises(NotFound) as missing:
            sr.job("job_nothing")
        assert missing.value.status == 404


def test_models_stats_and_jobs(serve_app) -> None:
    with Client(serve_app.url) as sr:
        models = {m["name"]: m for m in sr.models()}
        assert models["tiny-x4"]["ready"]
        assert "upscaler" in sr.stats()
        job = sr.submit(encode(noise(8, 8, seed=56)), scale=2)
        job.wait(timeout=120)
        assert job.id in {j.id for j in sr.jobs("all")}


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` on 127.0.0.1, in threads; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stub() -> Iterator[tuple[str, list[float], list[str]]]:
    """A server on 127.0.0.1: ``/v1/models`` answers 503 (Retry-After: 1) then 200;
    ``/v1/stats`` always 503 with Retry-After: 0. Yields its URL, the request times and the
    User-Agent of each request."""
    seen: list[float] = []
    agents: list[str] = []

    class Handler(Quiet):
        def do_GET(self) -> None:
            seen.append(time.monotonic())
            agents.append(self.headers.get("user-agent", ""))
            ok = self.path == "/v1/models" and len(seen) > 1
            body = b"[]" if ok else b'{"error": {"code": "overloaded", "message": "busy"}}'
            self.send_response(200 if ok else 503)
            if not ok:
                self.send_header("Retry-After", "1" if self.path == "/v1/models" else "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as url:
        yield url, seen, agents


def test_retries_503_after_retry_after(stub) -> None:
    url, seen, agents = stub
    with Client(url) as sr:
        assert sr.models() == []
    assert len(seen) == 2 and seen[1] - seen[0] >= 0.9
    assert agents == [f"superres-client/{superres_client.__version__} (python)"] * 2
    assert superres_client.__version__ == "0.1.0"  # from the installed distribution


def test_retries_are_bounded(stub) -> None:
    url, seen, _ = stub
    with Client(url, retry=Retry(attempts=3)) as sr, pytest.raises(Overloaded) as caught:
        sr.stats()
    assert len(seen) == 3
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (
        503,
        "overloaded",
        0,
    )


@pytest.fixture
def dropping() -> Iterator[tuple[str, list[str], list[str]]]:
    """A server on 127.0.0.1 that reads each request and hangs up without an answer, except a
    repeated ``GET /v1/models``, answered ``[]``. Yields its URL, the requests ("GET /path") and
    the Idempotency-Key of each ("" without)."""
    seen: list[str] = []
    keys: list[str] = []

    class Handler(Quiet):
        def handle_one_request(self) -> None:
            super().handle_one_request()
            self.close_connection = True

        def answer(self) -> None:
            seen.append(f"{self.command} {self.path.partition('?')[0]}")
            keys.append(self.headers.get("idempotency-key", ""))
            self.rfile.read(int(self.headers.get("content-length") or 0))
            if seen.count("GET /v1/models") > 1 and self.path == "/v1/models":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

        do_GET = do_POST = answer

    with serving(Handler) as url:
        yield url, seen, keys


def test_a_lost_connection_repeats_only_what_is_safe_to_repeat(dropping) -> None:
    url, seen, keys = dropping
    retry = Retry(attempts=3, backoff_s=0.01)
    with Client(url, retry=retry) as sr:
        assert sr.models() == []  # the first GET's connection was dropped
        with pytest.raises(SuperresError) as caught:
            sr.upscale(encode(noise(8, 8)))  # a plain POST may have arrived: sent once
        assert caught.value.code == "connection_error"
        with pytest.raises(SuperresError):
            sr.submit(encode(noise(8, 8)))  # with its Idempotency-Key: again, up to 3 times
    assert seen == ["GET /v1/models"] * 2 + ["POST /v1/upscale"] + ["POST /v1/jobs"] * 3
    assert keys[:3] == ["", "", ""] and len(set(keys[3:])) == 1 and len(keys[3]) == 32

    async def in_asyncio() -> None:
        async with AsyncClient(url, retry=retry) as sr:
            assert await sr.models() == []
            with pytest.raises(SuperresError):
                await sr.upscale(encode(noise(8, 8)))
            with pytest.raises(SuperresError):
                await sr.submit(encode(noise(8, 8)), idempotency_key="mine")

    seen.clear()
    keys.clear()
    asyncio.run(in_asyncio())
    assert seen == ["GET /v1/models"] * 2 + ["POST /v1/upscale"] + ["POST /v1/jobs"] * 3
    assert keys[3:] == ["mine"] * 3


def test_submitting_again_with_the_same_idempotency_key_is_the_same_job(serve_app) -> None:
    image = encode(noise(8, 8, seed=58))
    with Client(serve_app.url) as sr:
        first = sr.submit(image, idempotency_key="sdk-repeat-58")
        again = sr.submit(image, idempotency_key="sdk-repeat-58")
        other = sr.submit(image)  # a key of its own
        assert first.id == again.id != other.id
        first.wait(timeout=120)
        other.wait(timeout=120)


def test_a_refused_connection_is_retried_then_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    calls: list[float] = []
    retry = Retry(attempts=3, backoff_s=0.2)
    with Client(url, retry=retry) as sr, pytest.raises(SuperresError) as caught:
        calls.append(time.monotonic())
        sr.submit(encode(noise(8, 8)))
    assert caught.value.code == "connection_error"
    assert time.monotonic() - calls[0] >= 0.2 + 0.4  # two waits: the POST was never sent, so again


def test_a_failed_job_raises_job_failed_carrying_it(serve_app) -> None:
    with Client(serve_app.url) as sr:
        job = sr.submit(encode(noise(8, 8, seed=57)), model="no-such-model")
        with pytest.raises(JobFailed) as caught:
            job.wait(timeout=120)
    assert caught.value.code == "unknown_model" and "no-such-model" in caught.value.message
    assert caught.value.job.id == job.id and caught.value.job.status == "failed"
