"""Upscale an ``Image`` with a tile-level model callable: the sync and async drivers.

The model is only ever a function of a batch of equal-size tiles, so precision, device and batching
across requests live elsewhere. Gray images and alpha go through the colour model as replicated
3-channel planes (as upstream Real-ESRGAN does) and come back as the channel mean. Any
``outscale`` is the network's scale followed by a high-quality resize. Everything per request is
local: concurrent calls share nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import cv2
import numpy as np

from models.errors import InvalidOptionError, UnsupportedModelError
from models.image import Image
from models.tiling import DEFAULT_TILE, TileConfig, TiledJob

Forward = Callable[[np.ndarray], np.ndarray]
"""N x 3 x H x W float32 RGB in [0, 1] -> N x 3 x H*scale x W*scale float32."""

AsyncTileForward = Callable[[np.ndarray], Awaitable[np.ndarray]]
"""One 3 x H x W tile -> its 3 x H*scale x W*scale output."""

MIN_OUTSCALE = 1.0
MAX_OUTSCALE = 8.0


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(f"{name} must be a positive integer (got {value!r})")


def check_outscale(outscale: float) -> float:
    """``outscale`` as a float, or InvalidOptionError when it is not a finite number in [1, 8]."""
    if isinstance(outscale, bool) or not isinstance(outscale, int | float):
        raise InvalidOptionError(f"outscale must be a number (got {outscale!r})")
    value = float(outscale)
    if not math.isfinite(value) or not MIN_OUTSCALE <= value <= MAX_OUTSCALE:
        raise InvalidOptionError(
            f"outscale must be between {MIN_OUTSCALE:g} and {MAX_OUTSCALE:g} (got {outscale!r})"
        )
    return value


def output_size(height: int, width: int, outscale: float) -> tuple[int, int]:
    """The (height, width) of the result for an input of ``height`` x ``width``."""
    factor = check_outscale(outscale)
    return max(1, math.floor(height * factor + 0.5)), max(1, math.floor(width * factor + 0.5))


@dataclass(frozen=True)
class _Plan:
    """One request's work: a job for the colour plane and one for alpha, if any."""

    image: Image
    size: tuple[int, int]
    color: TiledJob
    alpha: TiledJob | None

    @property
    def jobs(self) -> list[TiledJob]:
        return [self.color] if self.alpha is None else [self.color, self.alpha]


def _as_rgb(plane: np.ndarray) -> np.ndarray:
    """An H x W x 3 float32 plane from H x W, H x W x 1 or H x W x 3."""
    if plane.ndim == 2:
        plane = plane[:, :, None]
    if plane.shape[2] == 1:
        plane = np.repeat(plane, 3, axis=2)
    return plane.astype(np.float32, copy=False)


def _plan(image: Image, scale: int, outscale: float | None, tile: TileConfig) -> _Plan:
    _check_positive("scale", scale)
    size = output_size(image.height, image.width, scale if outscale is None else outscale)
    color = TiledJob(_as_rgb(image.color), scale, tile)
    alpha = None if image.alpha is None else TiledJob(_as_rgb(image.alpha), scale, tile)
    return _Plan(image, size, color, alpha)


def _work(plan: _Plan) -> list[tuple[TiledJob, int]]:
    """Every (job, tile index) of a request."""
    return [(job, index) for job in plan.jobs for index in range(len(job.tiles))]


def _resize(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if plane.shape[:2] != size:
        enlarge = height * width > plane.shape[0] * plane.shape[1]
        interpolation = cv2.INTER_LANCZOS4 if enlarge else cv2.INTER_AREA
        plane = cv2.resize(plane, (width, height), interpolation=interpolation)
    return np.clip(plane, 0.0, 1.0, out=plane)


def _finish(plan: _Plan) -> Image:
    color = plan.color.result()
    np.clip(color, 0.0, 1.0, out=color)
    if plan.image.is_gray:
        color = color.mean(axis=2, keepdims=True)
    color = _resize(color, plan.size)
    if color.ndim == 2:  # cv2 drops a single channel axis
        color = color[:, :, None]
    alpha = None
    if plan.alpha is not None:
        alpha = _resize(plan.alpha.result().mean(axis=2), plan.size)
    return plan.image.with_pixels(color, alpha)


def upscale_image(
    image: Image,
    forward: Forward,
    *,
    scale: int,
    outscale: float | None = None,
    tile: TileConfig = DEFAULT_TILE,
    batch_size: int = 4,
) -> Image:
    """Upscale ``image`` by running its tiles through ``forward`` in batches of ``batch_size``."""
    _check_positive("batch_size", batch_size)
    plan = _plan(image, scale, outscale, tile)
    work = _work(plan)  # colour and alpha tiles have the same shape: they share batches
    for first in range(0, len(work), batch_size):
        chunk = work[first : first + batch_size]
        outputs = forward(np.stack([job.tiles[index] for job, index in chunk]))
        if len(outputs) != len(chunk):
            raise UnsupportedModelError(
                f"the model returned {len(outputs)} outputs for a batch of {len(chunk)}"
            )
        for (job, index), output in zip(chunk, outputs, strict=True):
            job.put(index, output)
    return _finish(plan)


async def upscale_image_async(
    image: Image,
    forward_tile: AsyncTileForward,
    *,
    scale: int,
    outscale: float | None = None,
    tile: TileConfig = DEFAULT_TILE,
    max_in_flight: int = 64,
) -> Image:
    """Upscale ``image`` submitting each tile on its own, up to ``max_in_flight`` at once, so a
    batching layer can merge them with tiles of concurrent requests."""
    _check_positive("max_in_flight", max_in_flight)
    plan = _plan(image, scale, outscale, tile)
    slots = asyncio.Semaphore(max_in_flight)

    async def run(job: TiledJob, index: int) -> None:
        async with slots:  # outputs are blended as they come: a big image never holds them all
            job.put(index, await forward_tile(job.tiles[index]))

    tasks = [asyncio.ensure_future(run(job, index)) for job, index in _work(plan)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # a failed (or cancelled) request stops submitting tiles
            task.cancel()
        raise
    return _finish(plan)
