"""What the HTTP benchmarks share: a local S3, a fresh Ray with Serve on a free port, readiness.

Imported as ``from stack import ...``: a benchmark runs as ``python bench/NAME.py``, which puts
``bench/`` first on ``sys.path``. Ray and the app are imported lazily, so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import httpx

    from models.settings import Settings

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / ".run"
if str(REPO) not in sys.path:  # devtools/ and tests/ are not installed; the benches import them
    sys.path.insert(0, str(REPO))

PlanT = TypeVar("PlanT")


class BenchError(RuntimeError):
    """The stack did not come up or answered a request with an error."""


def progress(message: str) -> None:
    """A timestamped line on stderr, so stdout keeps only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Services:
    url: str  # where Serve's HTTP proxy listens; nothing is deployed yet
    settings: Settings  # the app's settings: the local S3, weights from .cache, no downloads
    work: Path  # a scratch folder, removed on the way out


@contextlib.contextmanager
def services(name: str, scratch: Path, prefix: str) -> Iterator[Services]:
    """A local S3 (bucket ``superres-{name}``) and a fresh Ray (``.run/ray-{name}``, namespace
    ``superres-{name}``) with Serve on 127.0.0.1; the scratch folder is made under ``scratch``.
    Everything is stopped and removed on the way out."""
    with contextlib.ExitStack() as cleanup:
        scratch.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        settings = start_s3(cleanup, work / "s3", bucket=f"superres-{name}")
        url = start_serve(cleanup, name)
        yield Services(url, settings, work)


def start_s3(cleanup: contextlib.ExitStack, folder: Path, bucket: str) -> Settings:
    """SeaweedFS with fresh credentials, stopped by ``cleanup``; returns the app's settings."""
    from devtools.local_s3 import generate_credentials, start_local_s3
    from models.settings import Settings

    progress("starting local S3")
    key, secret = generate_credentials()
    s3 = start_local_s3(folder, access_key_id=key, secret_access_key=secret, stop_timeout_s=10)
    cleanup.callback(s3.stop)
    storage = s3.settings(bucket=bucket)
    return Settings(
        weights_dir=REPO / ".cache" / "weights",
        allow_download=False,
        s3_endpoint_url=storage.endpoint_url,
        s3_access_key_id=storage.access_key_id,
        s3_secret_access_key=storage.secret_access_key,
        s3_bucket=storage.bucket,
    )


def start_serve(cleanup: contextlib.ExitStack, name: str) -> str:
    """A Ray instance of our own and Serve on a free port, shut down by ``cleanup``; the URL."""
    progress("starting Ray")
    os.environ["RAY_TMPDIR"] = str(RUN_DIR / f"ray-{name}")
    # Ray runs its workers at nice 15: on a shared machine the replicas would get less CPU than
    # this process (an in-process baseline, the HTTP clients) for reasons that have nothing to
    # do with Serve.
    os.environ["RAY_worker_niceness"] = str(os.nice(0))  # noqa: SIM112  (Ray's spelling)
    # Otherwise num_cpus idle workers start with the driver; on 2 cores that costs seconds.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
    import ray
    from ray import serve

    # "local": always a fresh instance of our own, never a cluster that happens to be running.
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        namespace=f"superres-{name}",
    )
    cleanup.callback(ray.shutdown)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cleanup.callback(serve.shutdown)
    return f"http://127.0.0.1:{port}"


def answered_200(r: httpx.Response) -> bool:
    return r.status_code == 200


def wait_ready(
    url: str, timeout_s: float, ready: Callable[[httpx.Response], bool] = answered_200
) -> None:
    """Polls ``GET /readyz`` until ``ready`` accepts the answer, or raises BenchError with the
    last answer after ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=10)
            if ready(r):
                return
            last = f"{r.status_code} {r.text[:300]}"
        except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON
            last = repr(exc)
        time.sleep(0.5)
    raise BenchError(f"the app was not ready after {timeout_s:.0f} s: {last}")


def post_png(
    client: httpx.Client, path: str, data: bytes, params: dict[str, str]
) -> tuple[float, dict[str, Any]]:
    """Uploads a PNG to ``path``; the latency in seconds and the JSON answer. BenchError unless
    the answer is a 200."""
    started = time.perf_counter()
    r = client.post(path, params=params, files={"file": ("image.png", data, "image/png")})
    latency = time.perf_counter() - started
    if r.status_code != 200:
        raise BenchError(f"POST {path}: {r.status_code} {r.text[:500]}")
    body: dict[str, Any] = r.json()
    return latency, body


def run_bench(name: str, bench: Callable[[PlanT], None], plan: PlanT) -> int:
    """``bench(plan)``; a BenchError is printed as ``name: message``. The exit status."""
    try:
        bench(plan)
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0
