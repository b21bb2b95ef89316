"""The request pipeline without Ray: every limit on every path, checked before the step it guards."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from models import pipeline
from models.errors import ImageTooLargeError, InvalidOptionError
from models.face.types import DetectedFace
from models.image import Image
from models.inference import upscale_image
from models.limits import Limits
from superres_client.options import FaceEnhanceOptions, UpscaleOptions
from tests.test_face_pipeline import ASTRONAUT_BOX, ASTRONAUT_LANDMARKS

BIG = Limits(max_output_pixels=10**9)


def png(h: int, w: int, c: int = 3, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(pixels[..., 0] if c == 1 else pixels).save(buf, "PNG")
    return buf.getvalue()


def nearest(batch: torch.Tensor, scale: int = 4) -> torch.Tensor:
    return batch.repeat_interleave(scale, 2).repeat_interleave(scale, 3)


class Model:
    """A nearest-neighbour 'network' that records whether it was loaded and what it ran."""

    def __init__(self, scale: int = 4) -> None:
        self.scale = scale
        self.loads = 0
        self.runs: list[tuple[int, int, float]] = []

    async def load(self) -> pipeline.Runner:
        self.loads += 1

        async def run(image: Image, outscale: float) -> Image:
            self.runs.append((image.height, image.width, outscale))
            forward = lambda batch: nearest(batch, self.scale)  # noqa: E731
            return upscale_image(image, forward, scale=self.scale, outscale=outscale)

        return pipeline.Runner(self.scale, run)


def upscale(
    data: bytes, model: Model, limits: Limits = BIG, *, known: int | None = 4, **options: object
):
    opts = UpscaleOptions(model="m", **options)  # type: ignore[arg-type]
    return asyncio.run(
        pipeline.upscale_bytes(data, opts, limits, known_scale=known, load=model.load)
    )


def test_upscale_bytes_to_bytes() -> None:
    model = Model()
    result = upscale(png(10, 12), model, format="webp")
    assert (result.width, result.height, result.format, result.scale) == (48, 40, "webp", 4.0)
    assert result.content_type == "image/webp" and result.data[8:12] == b"WEBP"
    assert set(result.timings) == {"decode_s", "upscale_s", "encode_s"}
    assert PILImage.open(io.BytesIO(result.data)).size == (48, 40)


def test_requested_scale_after_the_networks() -> None:
    result = upscale(png(10, 12), Model(), scale=1.5)
    assert (result.width, result.height, result.scale) == (18, 15, 1.5)


@pytest.mark.parametrize(
    ("limits", "options", "match"),
    [
        (Limits(max_upload_bytes=100), {}, "bytes"),
        (Limits(max_input_pixels=119), {}, "120 pixels"),
        # scale=1 asks for a 10x12 result, but a 4x network computes a 40x48 canvas first
        (Limits(max_output_pixels=1919), {"scale": 1}, "4x network"),
        (Limits(max_output_pixels=4000), {"scale": 8}, "the output"),
    ],
    ids=["bytes", "input-pixels", "network-canvas", "result"],
)
def test_limits_refuse_before_loading_or_decoding(limits, options, match) -> None:
    model = Model()
    with pytest.raises(ImageTooLargeError, match=match):
        upscale(png(10, 12), model, limits, **options)
    assert model.loads == 0 and model.runs == []


def test_a_user_models_scale_is_checked_once_loaded() -> None:
    model = Model(scale=4)
    with pytest.raises(ImageTooLargeError, match="4x network"):
        upscale(png(10, 12), model, Limits(max_output_pixels=1919), known=None, scale=1)
    assert model.loads == 1 and model.runs == []


@pytest.mark.parametrize(
    ("fmt", "size", "alpha", "match"),
    [
        ("webp", (1, 4100), False, "16383 px per side"),
        ("jpeg", (8, 8), True, "transparency"),
    ],
)
def test_output_format_limits_come_from_the_header(fmt, size, alpha, match) -> None:
    model = Model()
    data = png(*size, c=4 if alpha else 3)
    with pytest.raises(InvalidOptionError, match=match):
        upscale(data, model, format=fmt)
    assert model.runs == []


class Detector:
    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        self.calls += 1
        return [DetectedFace(ASTRONAUT_BOX, 0.99, ASTRONAUT_LANDMARKS)]


async def darker(crop: np.ndarray) -> np.ndarray:
    return crop * 0.5


def face(
    data: bytes,
    limits: Limits = BIG,
    *,
    background: pipeline.RunUpscale | None = None,
    bg_scale: int | None = None,
    detector: Detector | None = None,
    **options: object,
):
    return asyncio.run(
        pipeline.face_enhance_bytes(
            data,
            FaceEnhanceOptions(**options),  # type: ignore[arg-type]
            limits,
            detector=detector or Detector(),
            restore=darker,
            background=background,
            background_scale=bg_scale,
        )
    )


def astronaut_png() -> bytes:
    import skimage.data

    buf = io.BytesIO()
    PILImage.fromarray(skimage.data.astronaut()).save(buf, "PNG")
    return buf.getvalue()


def test_face_enhance_without_a_background_model() -> None:
    result = face(astronaut_png(), scale=2.0, background_model="none")
    assert (result.width, result.height) == (1024, 1024)
    assert result.faces is not None and len(result.faces) == 1
    x0, y0, x1, y1 = result.faces[0].box
    assert (x0, y0, x1, y1) == pytest.approx([2 * v for v in ASTRONAUT_BOX])


def test_face_enhance_over_an_upscaled_background() -> None:
    model = Model(scale=4)
    runner = asyncio.run(model.load())
    result = face(astronaut_png(), background=runner.run, bg_scale=4, scale=2.0)
    assert (result.width, result.height) == (1024, 1024)
    assert model.runs == [(512, 512, 2.0)]


@pytest.mark.parametrize(
    ("limits", "kwargs", "match"),
    [
        (Limits(max_face_input_pixels=512 * 512 - 1), {}, "pixels"),
        # background_model=none: the plain resize is the canvas
        (Limits(max_output_pixels=1024 * 1024 - 1), {"background_model": "none"}, "the output"),
        # a 4x background computes 2048x2048 for a 2x result
        (Limits(max_output_pixels=2048 * 2048 - 1), {"bg_scale": 4}, "4x network"),
    ],
    ids=["face-input-pixels", "no-background-output", "background-canvas"],
)
def test_face_limits_refuse_before_detection(limits, kwargs, match) -> None:
    detector = Detector()
    with pytest.raises(ImageTooLargeError, match=match):
        face(astronaut_png(), limits, detector=detector, **kwargs)
    assert detector.calls == 0
