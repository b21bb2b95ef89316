"""Session-wide real components: a SeaweedFS S3 server and a Ray Serve instance running the app.

Ray starts once per test session (it costs seconds); tests talk to the app over HTTP on a free
port, or through handles. Models are tiny random networks of the real architectures, registered as
custom models pinned by sha256, plus the real x4plus (converted from the ncnn wheel) for one test.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.s3server import start_test_s3
from tests.tiny_models import save_tiny_compact, save_tiny_rrdb

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / ".run"

UPSCALER_TEST_CONFIG = {
    "max_batch_size": 16,
    "batch_wait_timeout_s": 0.05,
    "tile": 64,
    "tile_pad": 8,
    "tile_blend": 8,
}
UPSCALER_CPUS = 2
TEST_LIMITS = {
    "max_upload_bytes": 3_000_000,
    "max_input_pixels": 1_000_000,
    "max_face_input_pixels": 1_000_000,
    "max_output_pixels": 20_000_000,
    "upload_timeout_s": 3.0,
}


def tiny_app_args(tiny_weights: dict[str, dict[str, Any]], **args: Any) -> Any:
    """An app serving only the tiny x4 model (preloaded, the default), without faces; ``args``
    override. Apps beside the session's: jobs=False, or a bucket of their own (one runner each)."""
    from serve_app.app import AppArgs

    base = {
        "default_model": "tiny-x4",
        "models": [],
        "preload": ["tiny-x4"],
        "custom_models": [{"name": "tiny-x4", **tiny_weights["tiny-x4"]}],
        "face_enhance": False,
    }
    return AppArgs(**{**base, **args})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServeApp:
    url: str
    s3: Any  # devtools.local_s3.LocalS3
    settings: Any  # models.settings.Settings
    ray_address: str

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_test_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("tiny-weights")
    compact = folder / "tiny-compact-x4.safetensors"
    rrdb = folder / "tiny-rrdb-x2.pth"
    return {
        "tiny-x4": {"path": str(compact), "sha256": save_tiny_compact(compact, scale=4)},
        "tiny-rrdb-x2": {"path": str(rrdb), "sha256": save_tiny_rrdb(rrdb, scale=2)},
    }


@pytest.fixture(scope="session")
def serve_app(
    s3_server: Any,
    tiny_weights: dict[str, dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServeApp]:
    """The whole application on a real Ray Serve instance, started once per session."""
    os.environ.setdefault("RAY_TMPDIR", str(RUN_DIR / "ray-tests"))
    Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
    import ray
    from ray import serve

    from models.settings import Settings
    from serve_app.app import APP_NAME, AppArgs, build

    storage = s3_server.settings(bucket="superres-test")
    settings = Settings(
        weights_dir=tmp_path_factory.mktemp("weights-cache"),
        allow_download=False,
        s3_endpoint_url=storage.endpoint_url,
        s3_access_key_id=storage.access_key_id,
        s3_secret_access_key=storage.secret_access_key,
        s3_bucket=storage.bucket,
        s3_url_ttl_s=600,
    )
    args = AppArgs(
        default_model="tiny-x4",
        models=["realesrgan-x4plus", "realesr-general-x4v3"],
        preload=["tiny-x4"],
        custom_models=[{"name": name, **spec} for name, spec in tiny_weights.items()],
        limits=TEST_LIMITS,
    )
    port = free_port()
    context = ray.init(
        num_cpus=8, include_dashboard=False, log_to_driver=False, namespace="superres-tests"
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build(
            args,
            settings,
            {
                "Upscaler": {
                    "user_config": UPSCALER_TEST_CONFIG,
                    "ray_actor_options": {"num_cpus": UPSCALER_CPUS},
                }
            },
        ),
        name=APP_NAME,
        route_prefix="/",
    )
    yield ServeApp(
        url=f"http://127.0.0.1:{port}",
        s3=s3_server,
        settings=settings,
        ray_address=context.address_info["address"],
    )
    serve.shutdown()
    ray.shutdown()
