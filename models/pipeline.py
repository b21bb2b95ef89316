"""One request from bytes to bytes, without Ray: read header → limits → plan → decode → run → encode.

Every limit is checked here, once, before the step it protects: bytes before parsing, input pixels
from the header before decoding, every canvas (the network's own output, at its scale, and the
requested result) and the output format's side limit before a model is loaded or a pixel decoded.
The model is a plain async callable (``Runner``), so a test, a benchmark or the CLI runs the same
pipeline a Ray deployment runs; the deployment only adds batching, multiplexing and the device.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from models.errors import InvalidOptionError
from models.face.pipeline import paste_faces, prepare_faces, resize_background
from models.face.types import FaceDetector
from models.formats import check_encodable, content_type, output_format
from models.image import Image, to_float
from models.imageio import (
    PNG_COMPRESS_LEVEL,
    ImageHeader,
    decode_pixels,
    encode_image,
    read_header,
)
from models.inference import output_size
from models.limits import Limits
from models.results import EncodedImage, FaceBox
from superres_client.options import FaceEnhanceOptions, UpscaleOptions

RunUpscale = Callable[[Image, float], Awaitable[Image]]
"""A decoded image and the output scale → the upscaled image (the network's scale, then resized)."""

RestoreCrop = Callable[[np.ndarray], Awaitable[np.ndarray]]
"""One 3 x 512 x 512 face crop in [0, 1] → the restored crop (batched by the caller, if it likes)."""


@dataclass(frozen=True)
class Runner:
    """A loaded upscaling network as the pipeline sees it."""

    scale: int
    run: RunUpscale


LoadRunner = Callable[[], Awaitable[Runner]]


@dataclass(frozen=True)
class Plan:
    """What a request will compute and write, decided before any pixel is decoded."""

    network_scale: int
    outscale: float
    width: int
    height: int
    format: str
    quality: int | None


def header_of(image: Image) -> ImageHeader:
    """The header of an already decoded image (for composed calls that pass pixels, not bytes)."""
    return ImageHeader(image.format, image.width, image.height, image.has_alpha)


def plan(
    header: ImageHeader,
    limits: Limits,
    *,
    network_scale: int,
    options: UpscaleOptions | FaceEnhanceOptions,
) -> Plan:
    """Check every canvas and the output format against ``limits``; ImageTooLargeError or
    InvalidOptionError when the request cannot be served. ``options.scale`` None means the
    network's own scale."""
    limits.check_output(
        header.width * network_scale,
        header.height * network_scale,
        what=f"the {network_scale}x network's output",
    )
    factor = float(network_scale if options.scale is None else options.scale)
    height, width = output_size(header.height, header.width, factor)
    limits.check_output(width, height)
    fmt = output_format(options.format, header.format)
    check_encodable(fmt, width, height, has_alpha=header.has_alpha)
    return Plan(network_scale, factor, width, height, fmt, options.quality)


def inspect(data: bytes, limits: Limits, *, face: bool = False) -> ImageHeader:
    """The header of ``data`` once its bytes and input pixels are within ``limits``."""
    limits.check_bytes(len(data))
    header = read_header(data)
    limits.check_input(header.width, header.height, face=face)
    return header


async def prepare(
    header: ImageHeader,
    options: UpscaleOptions,
    limits: Limits,
    *,
    known_scale: int | None,
    load: LoadRunner,
) -> tuple[Runner, Plan]:
    """Plan (before a possibly slow model load when the scale is known), load, plan again exactly."""
    if known_scale is not None:
        plan(header, limits, network_scale=known_scale, options=options)
    runner = await load()
    return runner, plan(header, limits, network_scale=runner.scale, options=options)


async def upscale_bytes(
    data: bytes,
    options: UpscaleOptions,
    limits: Limits,
    *,
    known_scale: int | None,
    load: LoadRunner,
    png_level: int = PNG_COMPRESS_LEVEL,
) -> EncodedImage:
    """Encoded bytes in, the encoded upscaled image out. ``known_scale`` is the network's scale
    when the registry knows it (None for a user model, read once loaded)."""
    header = inspect(data, limits)
    runner, chosen = await prepare(header, options, limits, known_scale=known_scale, load=load)
    started = time.perf_counter()
    image = await asyncio.to_thread(decode_pixels, data, header)
    decoded = time.perf_counter()
    result = await runner.run(image, chosen.outscale)
    timings = {"decode_s": decoded - started, "upscale_s": time.perf_counter() - decoded}
    return await encode(
        result, chosen, model=_model_name(options), timings=timings, png_level=png_level
    )


async def face_enhance_bytes(
    data: bytes,
    options: FaceEnhanceOptions,
    limits: Limits,
    *,
    detector: FaceDetector,
    restore: RestoreCrop,
    background: RunUpscale | None,
    background_scale: int | None,
) -> EncodedImage:
    """Restore the faces of encoded bytes over a background: ``background`` (an upscaler whose
    network scale is ``background_scale``, when known) or, when None, a plain Lanczos resize."""
    started = time.perf_counter()
    header = inspect(data, limits, face=True)
    chosen = plan(
        header,
        limits,
        network_scale=background_scale or 1,
        options=options,
    )
    image = await asyncio.to_thread(decode_pixels, data, header)
    t0 = time.perf_counter()
    pending = asyncio.ensure_future(_background(image, chosen.outscale, background))
    pixels = await asyncio.to_thread(to_float, image.color)
    try:
        job = await asyncio.to_thread(
            prepare_faces,
            pixels,
            detector,
            only_center_face=options.only_center_face,
            max_faces=options.max_faces,
        )
        t1 = time.perf_counter()
        restored = await asyncio.gather(*(restore(crop) for crop in job.crops))
        t2 = time.perf_counter()
        upscaled = (await pending).as_float()
    finally:
        pending.cancel()  # no-op when done; stops the background if a stage above failed
    t3 = time.perf_counter()
    color = await asyncio.to_thread(
        paste_faces, upscaled.color, job, restored, weight=options.weight
    )
    result = upscaled.with_pixels(color, upscaled.alpha)
    timings = {
        "decode_s": t0 - started,
        "detect_s": t1 - t0,
        "restore_s": t2 - t1,
        "background_wait_s": t3 - t2,
        "paste_s": time.perf_counter() - t3,
    }
    faces = job.output_faces(result.height, result.width)
    return await encode(
        result,
        chosen,
        model=f"gfpgan-v1.4+{options.background_model or 'none'}",
        timings=timings,
        faces=tuple(FaceBox(box=f.box, score=f.score) for f in faces),
    )


async def encode(
    result: Image,
    chosen: Plan,
    *,
    model: str,
    timings: dict[str, float],
    faces: tuple[FaceBox, ...] | None = None,
    png_level: int = PNG_COMPRESS_LEVEL,
) -> EncodedImage:
    """Encode ``result`` as planned; ``encode_s`` joins the stage ``timings`` (seconds)."""
    started = time.perf_counter()
    data = await asyncio.to_thread(
        encode_image, result, chosen.format, chosen.quality, png_level=png_level
    )
    timings = {**timings, "encode_s": time.perf_counter() - started}
    return EncodedImage(
        data=data,
        content_type=content_type(chosen.format),
        format=chosen.format,
        width=result.width,
        height=result.height,
        model=model,
        scale=chosen.outscale,
        timings={name: round(value, 4) for name, value in timings.items()},
        faces=faces,
    )


async def _background(image: Image, scale: float, upscale: RunUpscale | None) -> Image:
    if upscale is not None:
        return await upscale(image, scale)
    image = await asyncio.to_thread(image.as_float)
    color = await asyncio.to_thread(resize_background, image.color, scale)
    alpha = None
    if image.alpha is not None:
        plane = await asyncio.to_thread(resize_background, image.alpha[..., None], scale)
        alpha = plane[..., 0]
    return image.with_pixels(color, alpha)


def _model_name(options: UpscaleOptions) -> str:
    if options.model is None:
        raise InvalidOptionError("the model must be named by the time a request runs")
    return options.model
