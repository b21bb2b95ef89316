"""The in-memory image every stage passes around: float pixels plus what is needed to write it back."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Image:
    """A decoded image, independent of its file format.

    ``color`` has shape (H, W, 3) for colour or (H, W, 1) for grayscale; ``alpha`` is (H, W) or
    None. Pixels are either integers at the image's depth (uint8 for 8-bit, uint16 for 16-bit: what
    decoding gives and the device path returns, so no float copy of a large image is made on the
    host) or float32 in [0, 1] (what float stages such as face restoration produce); ``as_float``
    gives the latter. ``bit_depth`` (8 or 16) and ``format`` describe the source so the result can
    be written back as the same kind; ``icc_profile`` is carried through.
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

    @property
    def top(self) -> int:
        """The largest integer pixel value at this depth."""
        return 65535 if self.bit_depth == 16 else 255

    def as_float(self) -> Image:
        """The same image with float32 pixels in [0, 1]."""
        alpha = None if self.alpha is None else to_float(self.alpha)
        return self.with_pixels(to_float(self.color), alpha)

    def with_pixels(self, color: np.ndarray, alpha: np.ndarray | None) -> Image:
        """The same kind of image (depth, format, profile) with new pixels."""
        return replace(self, color=color, alpha=alpha)


def to_float(pixels: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] from uint8, uint16 or float pixels (floats are returned as they are)."""
    if np.issubdtype(pixels.dtype, np.floating):
        return pixels.astype(np.float32, copy=False)
    out = np.ascontiguousarray(pixels, dtype=np.float32)
    out /= np.float32(65535 if pixels.dtype == np.uint16 else 255)
    return out
