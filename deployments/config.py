"""Typed configuration of the deployments: constructor args and the ``user_config`` knobs.

``user_config`` is validated here, in ``reconfigure``, so a bad value in ``serve_config.yaml`` fails
with a pydantic message that names the field, not with a stack trace from deep inside a forward pass.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.registry import ModelSpec, Registry, WeightsSource, user_model_spec
from models.tiling import TileConfig


class CustomModel(BaseModel):
    """A community model for spandrel, always pinned by sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    url: str | None = None
    path: str | None = None
    scale: int | None = Field(default=None, ge=1, le=16)
    supports_fp16: bool = True
    license: str = "unknown"

    @model_validator(mode="after")
    def _one_source(self) -> CustomModel:
        if (self.url is None) == (self.path is None):
            raise ValueError(f"custom model {self.name!r}: give exactly one of url or path")
        return self

    def spec(self) -> ModelSpec:
        return user_model_spec(
            self.name,
            sha256=self.sha256,
            url=self.url,
            path=self.path,
            scale=self.scale,
            supports_fp16=self.supports_fp16,
            license=self.license,
        )


def build_registry(custom_models: list[CustomModel]) -> Registry:
    """The built-in models plus the configured community ones (duplicate names are refused)."""
    registry = Registry()
    for custom in custom_models:
        registry.register(custom.spec())
    return registry


class WeightsOverride(BaseModel):
    """Another file for a built-in model (a mirror, a local copy, a retrained build), pinned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    url: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> WeightsOverride:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of url or path")
        return self

    def source(self, filename: str) -> WeightsSource:
        return WeightsSource(
            filename=f"{self.sha256[:12].lower()}-{filename}",
            sha256=self.sha256.lower(),
            urls=(self.url,) if self.url else (),
            path=self.path,
        )


class UpscalerConfig(BaseModel):
    """Runtime knobs of the Upscaler, changed without restarting replicas."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=4, ge=1, le=256)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0, le=5)
    # "auto": per model and image, the largest tile (up to the whole image) whose forward pass
    # fits memory_budget_mb; an integer fixes the tile. Pad and blend follow the tile unless set.
    tile: int | Literal["auto"] = "auto"
    tile_pad: int | None = None
    tile_blend: int | None = None
    # Activations of one forward pass plus the output canvas; default: 60% of the GPU's free
    # memory at start, or a quarter of the host's memory (at most 4 GiB) on the CPU.
    memory_budget_mb: int | None = Field(default=None, ge=64)
    png_compress_level: int = Field(default=1, ge=0, le=9)  # zlib: 1 is ~4x faster than 6

    @model_validator(mode="after")
    def _tile_is_valid(self) -> UpscalerConfig:
        if self.tile == "auto" and (self.tile_pad, self.tile_blend) != (None, None):
            raise ValueError("tile_pad and tile_blend need a fixed tile")
        self.tiling()  # raises InvalidOptionError (a ValueError) with the reason
        return self

    def tiling(self) -> TileConfig | None:
        """The fixed tiling, or None for "auto"."""
        if self.tile == "auto":
            return None
        return TileConfig.for_tile(self.tile, pad=self.tile_pad, blend=self.tile_blend)

    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget_mb is None else self.memory_budget_mb << 20


class FaceConfig(BaseModel):
    """Runtime knobs of the FaceRestorer."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=4, ge=1, le=64)
    batch_wait_timeout_s: float = Field(default=0.02, ge=0, le=5)
