"""The canvas tiles of one image blend into, on the model's device.

Tiles are views of a torch plane on the device, so cutting them copies nothing to the host; the
canvas lives where the caller puts it (the device when it fits a memory budget, else the host).
The geometry and blend weights come from ``models.tiling``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.errors import UnsupportedModelError
from models.tiling import TileConfig, axis_weights, support


class TiledJob:
    """Tiles of one 3 x H x W float plane (a torch tensor on any device) and the canvas their
    upscaled outputs blend into.

    ``tiles[i]`` is a 3 x th x tw view of the plane (all the same shape); give its model output,
    3 x th*scale x tw*scale on any device, to ``put(i, output)``; after every tile is in,
    ``result()`` is the 3 x H*scale x W*scale float32 canvas, on ``canvas_device`` (default: the
    plane's). One job serves one request: it is not shared.
    """

    def __init__(
        self,
        plane: torch.Tensor,
        scale: int,
        config: TileConfig,
        *,
        canvas_device: torch.device | None = None,
        fixed: bool = False,
    ) -> None:
        if plane.ndim != 3 or plane.shape[0] != 3:
            raise ValueError(f"expected a 3 x H x W plane, got shape {tuple(plane.shape)}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        # The result's size; with ``fixed`` a plane smaller than a tile is padded (edge pixels
        # repeated) so every tile has the tile's shape, as compiled models require.
        self._size = (int(plane.shape[1]) * scale, int(plane.shape[2]) * scale)
        if fixed:
            grow_h, grow_w = (max(0, config.tile - n) for n in plane.shape[1:])
            if grow_h or grow_w:
                plane = F.pad(plane[None], (0, grow_w, 0, grow_h), mode="replicate")[0]
        height, width = int(plane.shape[1]), int(plane.shape[2])
        device = canvas_device or plane.device
        self.scale = scale
        self.tile_height = min(config.tile, height)
        self.tile_width = min(config.tile, width)
        self._ys, wy = axis_weights(height, self.tile_height, config, scale)
        self._xs, wx = axis_weights(width, self.tile_width, config, scale)
        self._wy = [torch.from_numpy(w).to(device) for w in wy]
        self._wx = [torch.from_numpy(w).to(device) for w in wx]
        self._sy = [support(w) for w in wy]
        self._sx = [support(w) for w in wx]
        self.tiles: list[torch.Tensor] = [
            plane[:, y : y + self.tile_height, x : x + self.tile_width]
            for y in self._ys
            for x in self._xs
        ]
        self._canvas = torch.zeros(
            (3, height * scale, width * scale), dtype=torch.float32, device=device
        )
        self._pending = set(range(len(self.tiles)))

    @staticmethod
    def canvas_bytes(height: int, width: int, scale: int) -> int:
        """What the canvas of an H x W plane at ``scale`` occupies (float32, 3 channels)."""
        return 3 * 4 * height * scale * width * scale

    @property
    def overhead(self) -> float:
        """Input pixels the model computes per image pixel (1.0 when the image is a single tile)."""
        computed = len(self.tiles) * self.tile_height * self.tile_width
        return computed / (self._size[0] * self._size[1] / self.scale**2)

    def put(self, index: int, output: torch.Tensor) -> None:
        """Blend the model's output for ``tiles[index]`` into the canvas."""
        if index not in self._pending:
            raise ValueError(f"tile {index} is out of range or was already put")
        expected = (3, self.tile_height * self.scale, self.tile_width * self.scale)
        if tuple(output.shape) != expected:
            raise UnsupportedModelError(
                f"the model returned a tile of shape {tuple(output.shape)}, expected {expected}: "
                f"is its scale really {self.scale}?"
            )
        row, col = divmod(index, len(self._xs))
        sy, sx = self._sy[row], self._sx[col]
        y0, x0 = self._ys[row] * self.scale, self._xs[col] * self.scale
        # non_blocking only between devices: a device-to-host copy would land after the read below
        on_host = self._canvas.device.type == "cpu"
        part = output[:, sy, sx].to(self._canvas.device, torch.float32, non_blocking=not on_host)
        weight = self._wy[row][sy, None] * self._wx[col][None, sx]
        region = self._canvas[:, y0 + sy.start : y0 + sy.stop, x0 + sx.start : x0 + sx.stop]
        region.addcmul_(part, weight)
        self._pending.discard(index)

    def result(self) -> torch.Tensor:
        """The blended 3 x H*scale x W*scale canvas (not clipped)."""
        if self._pending:
            raise RuntimeError(f"{len(self._pending)} of {len(self.tiles)} tiles were never put")
        return self._canvas[:, : self._size[0], : self._size[1]]
