"""What one upscaling request asks for, validated where it is built."""

from __future__ import annotations

from dataclasses import dataclass

from models.errors import InvalidOptionError
from models.imageio import normalize_format

MIN_SCALE, MAX_SCALE = 1.0, 8.0


@dataclass(frozen=True)
class UpscaleOptions:
    model: str = "realesrgan-x4plus"
    scale: float | None = None  # output / input size; None: the model's own scale
    format: str | None = None  # png | jpeg | webp; None: keep the input's
    quality: int | None = None  # 1..100, lossy formats
    denoise: float | None = None  # realesr-general-x4v3 only: 0 (none) .. 1 (full)

    def __post_init__(self) -> None:
        if self.scale is not None and not MIN_SCALE <= self.scale <= MAX_SCALE:
            raise InvalidOptionError(f"scale must be between {MIN_SCALE:g} and {MAX_SCALE:g}")
        if self.format is not None:
            object.__setattr__(self, "format", normalize_format(self.format))
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise InvalidOptionError("quality must be between 1 and 100")
        if self.denoise is not None and not 0.0 <= self.denoise <= 1.0:
            raise InvalidOptionError("denoise must be between 0 and 1")
