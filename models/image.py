"""The in-memory image every stage passes around: float pixels plus what is needed to write it back."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Image:
    """A decoded image, independent of its file format.

    ``color`` is float32 in [0, 1], shape (H, W, 3) for colour or (H, W, 1) for grayscale;
    ``alpha`` is float32 (H, W) in [0, 1] or None. ``bit_depth`` (8 or 16) and ``format`` describe
    the source so the result can be written back as the same kind; ``icc_profile`` is carried through.
    """

    color: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    format: str = "png"
    icc_profile: bytes | None = None

    @property
    def height(self) -> int:
        return int(self.color.shape[0])

    @property
    def width(self) -> int:
        return int(self.color.shape[1])

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def is_gray(self) -> bool:
        return self.color.shape[2] == 1

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None

    def with_pixels(self, color: np.ndarray, alpha: np.ndarray | None) -> Image:
        """The same kind of image (depth, format, profile) with new pixels."""
        return replace(self, color=color, alpha=alpha)
