"""Face restoration through Serve: the 503 path without weights, and the whole composed pipeline
(detect → align → GFPGAN → paste over the Upscaler's background → S3) with random real-layout
GFPGAN v1.4 weights and a detector that knows where the astronaut's face is."""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from ray import cloudpickle
from skimage import data as skdata
from spandrel.architectures.GFPGAN import GFPGAN

from models.face.restore import GFPGAN_V14_CONFIG
from models.face.types import DetectedFace
from tests.conftest import TEST_LIMITS
from tests.test_face_pipeline import ASTRONAUT_BOX, ASTRONAUT_LANDMARKS

pytestmark = pytest.mark.serve

HALF = 0.5  # the test images are the astronaut at 256x256


class AstronautDetector:
    """Finds the astronaut's face (at half size) in every image it is shown."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        box = tuple(v * HALF for v in ASTRONAUT_BOX)
        return [DetectedFace(box=box, score=0.99, landmarks=ASTRONAUT_LANDMARKS * HALF)]  # type: ignore[arg-type]


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def astronaut(variant: int) -> bytes:
    img = PILImage.fromarray(skdata.astronaut()).resize((256, 256), PILImage.LANCZOS)
    arr = np.asarray(img)
    return png(arr if variant == 0 else np.ascontiguousarray(arr[:, :, ::-1]))  # BGR-swapped twin


def test_face_endpoints_answer_503_without_weights(serve_app) -> None:
    with serve_app.client() as client:
        r = client.post("/v1/face-enhance", content=astronaut(0))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "model_unavailable"
        assert "gfpgan-v1.4" in r.json()["error"]["message"] and r.headers["retry-after"]
        r = client.post("/v1/upscale", params={"face_enhance": "true"}, content=astronaut(0))
        assert r.status_code == 503
        models = {m["name"]: m for m in client.get("/v1/models").json()}
        assert not models["gfpgan-v1.4"]["ready"] and models["gfpgan-v1.4"]["error"]
        assert models["tiny-x4"]["ready"]  # upscaling is unaffected
        assert client.get("/readyz").json()["checks"]["face"] == {
            "gfpgan-v1.4": False,
            "retinaface-r50": False,
        }


@pytest.fixture(scope="module")
def face_app(serve_app, tiny_weights, tmp_path_factory) -> Iterator[str]:
    from ray import serve

    from serve_app.app import AppArgs, build

    torch.manual_seed(0)
    path = Path(tmp_path_factory.mktemp("gfpgan")) / "GFPGANv1.4-random.pth"
    torch.save({"params_ema": GFPGAN(**GFPGAN_V14_CONFIG).state_dict()}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    args = AppArgs(
        default_model="tiny-x4",
        models=[],
        preload=["tiny-x4"],
        custom_models=[{"name": "tiny-x4", **tiny_weights["tiny-x4"]}],
        face_weights={"gfpgan-v1.4": {"path": str(path), "sha256": sha}},
        limits=TEST_LIMITS,
        jobs=False,  # one JobRunner per bucket: the session app's
    )
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # replicas cannot import tests/
    app = build(args, serve_app.settings, face_detector=AstronautDetector())
    serve.run(app, name="faces-test", route_prefix="/faces-test")
    yield f"{serve_app.url}/faces-test"
    serve.delete("faces-test")


def enhance(url: str, data: bytes) -> dict:
    r = httpx.post(f"{url}/v1/face-enhance", content=data, params={"weight": 0.5}, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()


def result_pixels(body: dict) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(httpx.get(body["url"]).content))).astype(np.int16)


def test_faces_restored_over_the_upscaled_background_and_never_swapped(face_app) -> None:
    images = [astronaut(0), astronaut(1)]
    alone = [enhance(face_app, data) for data in images]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda d: enhance(face_app, d), images))
    for body in alone + together:
        assert (body["width"], body["height"], body["scale"]) == (512, 512, 2)
        assert len(body["faces"]) == 1
        x0, y0, x1, y1 = body["faces"][0]["box"]
        assert (x0, y0, x1, y1) == pytest.approx(ASTRONAUT_BOX, abs=0.01)  # output pixels
    a = [result_pixels(b) for b in alone]
    b = [result_pixels(b) for b in together]
    face = (slice(100, 150), slice(190, 260))  # inside the face (output coordinates)
    corner = (slice(440, 512), slice(0, 60))
    for i in range(2):
        assert np.abs(a[i] - b[i]).max() <= 1, "a concurrent result differs from its own"
        assert np.abs(a[i][face] - b[1 - i][face]).mean() > 5, "faces were swapped"
    # Half of the face is GFPGAN's (weight 0.5); far from it, the background is the upscaler's.
    with httpx.Client(base_url=face_app, timeout=300) as client:
        r = client.post("/v1/upscale", content=images[0], params={"scale": 2})
        background = result_pixels(r.json())
    assert np.abs(a[0][face] - background[face]).mean() > 5
    assert np.abs(a[0][corner] - background[corner]).max() <= 1


def test_the_handle_api_honours_face_enhance(face_app) -> None:
    from ray import serve

    handle = serve.get_app_handle("faces-test")
    result = handle.upscale.remote(astronaut(0), face_enhance=True, scale=1).result()
    assert (result.width, result.height, result.model) == (256, 256, "gfpgan-v1.4+tiny-x4")
    assert result.faces and len(result.faces) == 1


def test_face_output_cap_without_a_background_model(face_app) -> None:
    # Under the 20 MP output cap of TEST_LIMITS: 256x256 at scale 8; over it: 1100x900 at scale 5.
    r = httpx.post(
        f"{face_app}/v1/face-enhance",
        content=astronaut(0),
        params={"background_model": "none", "scale": 8},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    big = np.zeros((1100, 900, 3), np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(big).save(buf, "PNG")
    r = httpx.post(
        f"{face_app}/v1/face-enhance",
        content=buf.getvalue(),
        params={"background_model": "none", "scale": 5},
        timeout=60,
    )
    assert (r.status_code, r.json()["error"]["code"]) == (413, "too_large")
