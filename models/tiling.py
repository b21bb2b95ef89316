"""How to split one image plane into equal model-input tiles and blend their outputs seamlessly.

Each tile is a window of ``tile`` x ``tile`` input pixels. Near an edge shared with a neighbour a
tile's output is wrong (its convolutions see the tile's zero padding, not the image), so neighbours
overlap and cross-fade through a cosine ramp ``blend`` pixels wide, centred in the middle of their
overlap: every output pixel then comes from tiles where it lies at least ``pad`` pixels inside. The
overlap is at least ``2*pad + blend``; windows are spread evenly, the first and last flush with the
image edges (any extra overlap only adds context). An image smaller than a tile is one window of its
own size. All windows of a job have the same shape, so a batching layer can stack them.

The blend weights of a window are the outer product of two 1-D ramps, and the windows form a grid,
so normalising each axis's ramps to sum to one makes the 2-D weights sum to one everywhere: the
output canvas is a plain sum, with no weight canvas beside it.

This module is the geometry (no torch, so configuration can be validated anywhere); the canvas
the tiles blend into is ``models.canvas.TiledJob``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.errors import InvalidOptionError

MIN_TILE = 16
MAX_TILE = 4096
DEFAULT_PAD = 32
DEFAULT_BLEND = 16


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(f"{name} must be an integer (got {value!r})")
    if value < minimum:
        raise InvalidOptionError(f"{name} must be at least {minimum} (got {value})")
    return value


@dataclass(frozen=True)
class TileConfig:
    """How to tile: ``tile`` is the model-input window, ``pad`` the least context kept between a
    used output pixel and an inner tile edge, ``blend`` the cross-fade width (all input pixels).

    Defaults measured by ``bench/tiling_error.py`` on Real-ESRGAN x4plus.
    """

    tile: int = 256
    pad: int = DEFAULT_PAD
    blend: int = DEFAULT_BLEND

    def __post_init__(self) -> None:
        _check_int("tile", self.tile, MIN_TILE)
        _check_int("pad", self.pad, 0)
        _check_int("blend", self.blend, 0)
        if self.tile > MAX_TILE:
            raise InvalidOptionError(f"tile must be at most {MAX_TILE} (got {self.tile})")
        least = max(8, self.tile // 4)
        if self.stride < least:
            raise InvalidOptionError(
                f"pad and blend leave too little of each tile: tile - 2*pad - blend must be at "
                f"least {least} (tile={self.tile}, pad={self.pad}, blend={self.blend}); raise tile "
                f"or lower pad or blend"
            )

    @classmethod
    def for_tile(cls, tile: int, *, pad: int | None = None, blend: int | None = None) -> TileConfig:
        """A config for ``tile`` whose pad and blend, unless given, keep the default's proportions
        (capped at the default's values), so any tile from ``MIN_TILE`` up is valid on its own."""
        return cls(
            tile=tile,
            pad=min(DEFAULT_PAD, tile // 8) if pad is None else pad,
            blend=min(DEFAULT_BLEND, tile // 16) if blend is None else blend,
        )

    @property
    def stride(self) -> int:
        """Largest distance between neighbouring windows that still leaves ``blend`` of overlap."""
        return self.tile - 2 * self.pad - self.blend


DEFAULT_TILE = TileConfig()

# What a forward pass really holds per pixel, over the largest layer's input + output (residuals,
# cuDNN workspaces, the allocator's slack): measured ~3x on an H200 (x4plus, 1080p, fp16: 24 GiB).
ACTIVATION_SAFETY = 3
TILE_LADDER = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
"""Tile sides ``tile_for_budget`` picks from: few shapes, so batches and compiled graphs repeat."""


def tile_for_budget(
    height: int,
    width: int,
    *,
    bytes_per_pixel: int,
    budget_bytes: int,
    batch: int = 1,
    whole: bool = True,
) -> TileConfig:
    """The largest tiling whose forward passes fit ``budget_bytes``: the whole image as one tile
    when it fits (and ``whole``), else the largest ``TILE_LADDER`` side of which ``batch`` tiles
    fit; pad and blend follow the tile (``TileConfig.for_tile``)."""
    per_pixel = max(1, bytes_per_pixel) * ACTIVATION_SAFETY
    fits_whole = height * width * per_pixel <= budget_bytes
    if whole and max(height, width) <= MAX_TILE and fits_whole:
        return TileConfig.for_tile(max(height, width, MIN_TILE))
    fitting = [t for t in TILE_LADDER if batch * t * t * per_pixel <= budget_bytes]
    return TileConfig.for_tile(fitting[-1] if fitting else TILE_LADDER[0])


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Evenly spread window starts over ``length``: the first at 0, the last flush with the end."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return [round(i * (length - window) / (count - 1)) for i in range(count)]


def _rise(distance: np.ndarray, width: float) -> np.ndarray:
    """0 up to ``-width/2``, a cosine ramp to 1 at ``+width/2`` (a step at 0 when width is 0)."""
    if width == 0:
        return (distance >= 0).astype(np.float64)
    ramp = np.clip(distance / width + 0.5, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * ramp)


def axis_weights(
    length: int, window: int, config: TileConfig, scale: int
) -> tuple[list[int], list[np.ndarray]]:
    """Window starts along one axis and each window's normalised output-space weights.

    Neighbours cross-fade around the middle of their overlap, so each output pixel comes from the
    window where it lies deepest, at least ``pad`` from any inner edge.
    """
    starts = window_starts(length, window, config.stride)
    centres = np.arange(window * scale) + 0.5
    total = np.zeros(length * scale)
    raw = []
    for i, start in enumerate(starts):
        weight = np.ones(window * scale)
        if i > 0:
            middle = (starts[i - 1] + window + start) / 2 - start
            weight = np.minimum(weight, _rise(centres - middle * scale, config.blend * scale))
        if i < len(starts) - 1:
            middle = (start + window + starts[i + 1]) / 2 - start
            weight = np.minimum(weight, _rise(middle * scale - centres, config.blend * scale))
        raw.append(weight)
        total[start * scale : (start + window) * scale] += weight
    if not np.all(total > 0):  # the stride bound in TileConfig rules this out
        raise RuntimeError(f"tiles leave a gap: length={length}, window={window}, {config}")
    weights = [
        (w / total[s * scale : (s + window) * scale]).astype(np.float32)
        for s, w in zip(starts, raw, strict=True)
    ]
    return starts, weights


def support(weight: np.ndarray) -> slice:
    """The part of a window whose weight is not zero (the pad zones drop out)."""
    nonzero = np.flatnonzero(weight)
    return slice(int(nonzero[0]), int(nonzero[-1]) + 1)


def cheapest_tile(height: int, width: int, tiles: list[TileConfig]) -> TileConfig:
    """Of fixed-shape tilings (a smaller image is padded up to the tile), the one that computes
    the fewest pixels for an image of this size."""

    def computed(config: TileConfig) -> int:
        rows = len(window_starts(max(height, config.tile), config.tile, config.stride))
        cols = len(window_starts(max(width, config.tile), config.tile, config.stride))
        return rows * cols * config.tile**2

    return min(tiles, key=lambda config: (computed(config), -config.tile))


def tiles_per_pass(shape: tuple[int, ...], bytes_per_pixel: int, budget_bytes: int) -> int:
    """How many tiles of ``shape`` (C x H x W) one forward pass may take within the budget."""
    pixels = shape[-1] * shape[-2]
    return max(1, budget_bytes // max(1, pixels * bytes_per_pixel * ACTIVATION_SAFETY))
