"""Forward passes that survive running out of device memory.

Out of memory, a batch is split in halves; a single tile is upscaled in tiles of half its side
(blended as any tiling is), halving down to ``MIN_SIDE``. Only then does the caller get
``DeviceOutOfMemoryError`` (HTTP 503): the replica stays up, and tiles of other requests that
shared the batch are retried on their own, not failed with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from models.canvas import TiledJob
from models.errors import DeviceOutOfMemoryError
from models.tiling import TileConfig

log = logging.getLogger(__name__)

MIN_SIDE = 64

Forward = Callable[[torch.Tensor], torch.Tensor]


@torch.inference_mode()
def forward_or_split(forward: Forward, batch: torch.Tensor, *, scale: int) -> torch.Tensor:
    """``forward(batch)``, retried in smaller pieces when the device runs out of memory."""
    try:
        return forward(batch)
    except torch.OutOfMemoryError:
        _release(batch.device)
    if batch.shape[0] > 1:
        half = batch.shape[0] // 2
        log.warning("out of device memory: splitting a batch of %d", batch.shape[0])
        parts = (batch[:half], batch[half:])
        return torch.cat([forward_or_split(forward, part, scale=scale) for part in parts])
    side = max(batch.shape[-2:]) // 2
    if side < MIN_SIDE:
        raise DeviceOutOfMemoryError(f"out of device memory even for {side * 2}-px tiles")
    log.warning("out of device memory: retrying a tile in %d-px tiles", side)
    job = TiledJob(batch[0], scale, TileConfig.for_tile(side))
    for index, tile in enumerate(job.tiles):
        job.put(index, forward_or_split(forward, tile[None], scale=scale)[0])
    return job.result()[None]


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
