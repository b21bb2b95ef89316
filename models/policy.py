"""How a replica tiles each image and where its pixels live, decided from memory, not constants.

Eager models take the largest tile, up to the whole image, whose forward pass fits the budget.
Compiled models (``models.compiled``) see only the tile sides they were warmed with: a small one
for small images and the budget's largest; each image takes the one that computes least.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from models.image import Image
from models.inference import Placement, upscale_image
from models.loading import Upscaler, memory_budget
from models.pipeline import Runner
from models.tiling import TileConfig, cheapest_tile, tile_for_budget, tiles_per_pass

SMALL_COMPILED_TILE = 256


@dataclass(frozen=True)
class TilePolicy:
    """``fixed``: one tiling for every image (None: sized per image); ``budget_bytes``: what one
    forward pass and its canvas may use (half each); ``max_batch``: tiles per pass at most."""

    fixed: TileConfig | None
    budget_bytes: int
    max_batch: int

    @property
    def activation_bytes(self) -> int:
        return self.budget_bytes // 2

    def placement(self, network: Upscaler) -> Placement:
        return Placement(
            network.device,
            canvas_budget_bytes=self.budget_bytes // 2,
            fixed_tiles=network.fixed_shapes,
        )

    def compiled_tiles(self, network: Upscaler) -> list[TileConfig]:
        """The tilings a compiled model is warmed with."""
        if self.fixed is not None:
            return [self.fixed]
        largest = tile_for_budget(
            1 << 30,
            1 << 30,
            bytes_per_pixel=network.bytes_per_pixel,
            budget_bytes=self.activation_bytes,
            batch=self.max_batch,
            whole=False,
        )
        small = TileConfig.for_tile(min(SMALL_COMPILED_TILE, largest.tile))
        return [small] if small == largest else [small, largest]

    def tile(self, network: Upscaler, height: int, width: int) -> TileConfig:
        if network.fixed_shapes:
            return cheapest_tile(height, width, self.compiled_tiles(network))
        if self.fixed is not None:
            return self.fixed
        return tile_for_budget(
            height,
            width,
            bytes_per_pixel=network.bytes_per_pixel,
            budget_bytes=self.activation_bytes,
            batch=1 if network.device.type == "cpu" else self.max_batch,
        )

    @classmethod
    def in_process(cls, network: Upscaler, fixed: TileConfig | None = None) -> TilePolicy:
        """One image at a time in this process (the CLIs): the device's default budget."""
        return cls(fixed, memory_budget(network.device), max_batch=1)

    def runner(
        self, network: Upscaler, on_tile: Callable[[TileConfig], None] | None = None
    ) -> Runner:
        """``network`` as the pipeline's runner, tiled by this policy, in this process (no
        cross-request batching); ``on_tile`` hears the tiling each image gets."""

        async def run(image: Image, outscale: float) -> Image:
            tile = self.tile(network, image.height, image.width)
            if on_tile is not None:
                on_tile(tile)
            return upscale_image(
                image,
                network.forward,
                scale=network.scale,
                outscale=outscale,
                tile=tile,
                placement=self.placement(network),
            )

        return Runner(network.scale, run)

    def tiles_per_pass(self, network: Upscaler, shape: tuple[int, ...]) -> int:
        return min(
            self.max_batch, tiles_per_pass(shape, network.bytes_per_pixel, self.activation_bytes)
        )
