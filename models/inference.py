"""Upscale an ``Image`` with a tile-level model callable: the sync and async drivers.

The image goes to the model's device once (as it was decoded: 8- or 16-bit integers), its tiles
are cut there, and their outputs blend into a canvas on the device when it fits the memory budget
(else on the host); the result is clipped and quantised where the canvas is and copied back once,
as integers at the image's depth. The same code runs on the CPU with torch tensors.

The model is only ever a function of a batch of equal-size tiles, so precision, device and batching
across requests live elsewhere. Gray images and alpha go through the colour model as replicated
3-channel planes (as upstream Real-ESRGAN does) and come back as the channel mean. Any ``outscale``
is the network's scale followed by a high-quality resize. Everything per request is local:
concurrent calls share nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from models.canvas import TiledJob
from models.errors import InvalidOptionError, UnsupportedModelError
from models.image import Image
from models.tiling import DEFAULT_TILE, TileConfig

Forward = Callable[[torch.Tensor], torch.Tensor]
"""N x 3 x H x W float RGB in [0, 1] -> N x 3 x H*scale x W*scale float, on the model's device."""

AsyncTileForward = Callable[[torch.Tensor], Awaitable[torch.Tensor]]
"""One 3 x H x W tile -> its 3 x H*scale x W*scale output."""

MIN_OUTSCALE = 1.0
MAX_OUTSCALE = 8.0
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Placement:
    """Where a request's pixels live: ``device`` holds the input and its tiles; the output canvas
    goes there too unless it would take more than ``canvas_budget_bytes`` (then the host).
    ``fixed_tiles``: every tile has the tile's full shape (for compiled models)."""

    device: torch.device = CPU
    canvas_budget_bytes: int | None = None  # None: no limit
    fixed_tiles: bool = False

    def canvas_device(self, height: int, width: int, scale: int) -> torch.device:
        budget = self.canvas_budget_bytes
        if budget is not None and TiledJob.canvas_bytes(height, width, scale) > budget:
            return CPU
        return self.device


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


def _on_device(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """A 3 x H x W float32 plane in [0, 1] on ``device`` from H x W[, C] pixels: the integers
    travel as they are (one copy of the smallest form), the conversion happens on the device."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.dtype == np.uint16:  # torch has no uint16 arithmetic everywhere: widen first
        pixels = pixels.astype(np.int32)
    # from_numpy needs a writable array; decoded pixels are often read-only views (a cheap copy).
    host = np.require(pixels, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    tensor = torch.from_numpy(host).to(device, non_blocking=True)
    plane = tensor.permute(2, 0, 1).float()
    if not np.issubdtype(pixels.dtype, np.floating):
        plane /= 65535.0 if tensor.dtype == torch.int32 else 255.0
    return plane.expand(3, -1, -1) if plane.shape[0] == 1 else plane


def _plan(
    image: Image, scale: int, outscale: float | None, tile: TileConfig, placement: Placement
) -> _Plan:
    _check_positive("scale", scale)
    size = output_size(image.height, image.width, scale if outscale is None else outscale)
    canvas = placement.canvas_device(image.height, image.width, scale)
    fixed = placement.fixed_tiles
    plane = _on_device(image.color, placement.device)
    color = TiledJob(plane, scale, tile, canvas_device=canvas, fixed=fixed)
    alpha = None
    if image.alpha is not None:
        plane = _on_device(image.alpha, placement.device)
        alpha = TiledJob(plane, scale, tile, canvas_device=canvas, fixed=fixed)
    return _Plan(image, size, color, alpha)


def _work(plan: _Plan) -> list[tuple[TiledJob, int]]:
    """Every (job, tile index) of a request."""
    return [(job, index) for job in plan.jobs for index in range(len(job.tiles))]


def _quantized(plane: torch.Tensor, top: int) -> np.ndarray:
    """C x H x W floats → H x W x C integers at ``top`` (255 or 65535), computed where the plane
    is; only the integers cross to the host."""
    scaled = plane.mul(top).add_(0.5).clamp_(0, top)
    ints = scaled.to(torch.uint8 if top == 255 else torch.int32)
    host = ints.permute(1, 2, 0).contiguous().cpu().numpy()
    return host if top == 255 else host.astype(np.uint16)


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if pixels.shape[:2] == size:
        return pixels
    enlarge = height * width > pixels.shape[0] * pixels.shape[1]
    interpolation = cv2.INTER_LANCZOS4 if enlarge else cv2.INTER_AREA
    resized = cv2.resize(pixels, (width, height), interpolation=interpolation)
    return resized.reshape(height, width, *pixels.shape[2:])  # cv2 drops a single channel axis


@torch.inference_mode()
def _finish(plan: _Plan) -> Image:
    top = plan.image.top
    color = plan.color.result()
    if plan.image.is_gray:
        color = color.mean(dim=0, keepdim=True)
    alpha = None
    if plan.alpha is not None:
        alpha = _resize(_quantized(plan.alpha.result().mean(dim=0, keepdim=True), top), plan.size)
        alpha = alpha.reshape(plan.size)
    return plan.image.with_pixels(_resize(_quantized(color, top), plan.size), alpha)


def upscale_image(
    image: Image,
    forward: Forward,
    *,
    scale: int,
    outscale: float | None = None,
    tile: TileConfig = DEFAULT_TILE,
    batch_size: int = 4,
    placement: Placement = Placement(),
) -> Image:
    """Upscale ``image`` by running its tiles through ``forward`` in batches of ``batch_size``."""
    _check_positive("batch_size", batch_size)
    with torch.inference_mode():
        plan = _plan(image, scale, outscale, tile, placement)
        work = _work(plan)  # colour and alpha tiles have the same shape: they share batches
        for first in range(0, len(work), batch_size):
            chunk = work[first : first + batch_size]
            outputs = forward(torch.stack([job.tiles[index] for job, index in chunk]))
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
    placement: Placement = Placement(),
    on_progress: Callable[[int, int], None] | None = None,
) -> Image:
    """Upscale ``image`` submitting each tile on its own, up to ``max_in_flight`` at once, so a
    batching layer can merge them with tiles of concurrent requests. ``on_progress(done, total)``
    is called after each tile (tiles are the natural unit of progress)."""
    _check_positive("max_in_flight", max_in_flight)
    with torch.inference_mode():
        plan = _plan(image, scale, outscale, tile, placement)
    slots = asyncio.Semaphore(max_in_flight)
    work = _work(plan)
    done = 0

    async def run(job: TiledJob, index: int) -> None:
        nonlocal done
        async with slots:  # outputs are blended as they come: a big image never holds them all
            output = await forward_tile(job.tiles[index])
            with torch.inference_mode():
                job.put(index, output)
        done += 1
        if on_progress is not None:
            on_progress(done, len(work))

    tasks = [asyncio.ensure_future(run(job, index)) for job, index in work]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # a failed (or cancelled) request stops submitting tiles
            task.cancel()
        raise
    return await asyncio.to_thread(_finish, plan)
