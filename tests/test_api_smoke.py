from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

pytestmark = pytest.mark.serve


def png_bytes(w: int, h: int, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr.squeeze() if channels == 1 else arr, mode).save(buf, "PNG")
    return buf.getvalue()


def test_upscale_png_roundtrip(serve_app) -> None:
    with serve_app.client() as client:
        r = client.post("/v1/upscale", files={"file": ("a.png", png_bytes(40, 30), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["width"], body["height"]) == (160, 120)
        got = httpx.get(body["url"])
        assert got.status_code == 200
        img = PILImage.open(io.BytesIO(got.content))
        assert img.size == (160, 120)
