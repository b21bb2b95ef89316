"""Paste a restored face back: inverse warp onto the background under a feathered mask.

The mask is facexlib's default (no ParseNet): the warped crop square, eroded, eroded again by a
width proportional to the face size and Gaussian-blurred. All the work happens on the face's
bounding rectangle, not the whole output image, which gives the same pixels at a fraction of the cost.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from models.face.types import FACE_SIZE

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PAD = 2  # pixels around the warped square, so bilinear edges and erosion stay inside the window


def inverse_affine(affine: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Crop -> output pixel transform, for an output that is the input resized by (sx, sy).

    Pixel centres map as ``x_out = s * x_in + (s - 1) / 2`` (the convention of cv2.resize and of
    the upscalers); facexlib adds ``s / 2`` instead, half an output pixel off.
    """
    inverse = cv2.invertAffineTransform(affine).astype(np.float64)
    inverse[0] *= sx
    inverse[1] *= sy
    inverse[0, 2] += (sx - 1) / 2
    inverse[1, 2] += (sy - 1) / 2
    return inverse


def face_window(inverse: np.ndarray, height: int, width: int) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)``: the part of a height x width image the warped crop can touch."""
    corners = np.array([[0, 0, 1], [FACE_SIZE, 0, 1], [0, FACE_SIZE, 1], [FACE_SIZE, FACE_SIZE, 1]])
    points = corners @ inverse.T
    x0 = max(0, math.floor(points[:, 0].min()) - _PAD)
    y0 = max(0, math.floor(points[:, 1].min()) - _PAD)
    x1 = min(width, math.ceil(points[:, 0].max()) + _PAD)
    y1 = min(height, math.ceil(points[:, 1].max()) + _PAD)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def soft_mask(hard: np.ndarray, scale: float) -> np.ndarray:
    """facexlib's feathering of the warped square mask (float32, same shape)."""
    border = max(1, int(2 * scale))
    eroded = cv2.erode(hard, np.ones((border, border), np.uint8))
    edge = int(math.sqrt(float(eroded.sum()))) // 20
    if edge == 0:
        return eroded
    center = cv2.erode(eroded, np.ones((2 * edge, 2 * edge), np.uint8))
    return cv2.GaussianBlur(center, (2 * edge + 1, 2 * edge + 1), 0)


def paste_face(
    canvas: np.ndarray, face: np.ndarray, affine: np.ndarray, *, sx: float, sy: float, weight: float
) -> None:
    """Blend one (3, 512, 512) restored crop into ``canvas`` (H, W, C), C 3 or 1, in place.

    ``weight`` scales the mask: 0 leaves the background, 1 takes the restored face fully.
    """
    height, width = canvas.shape[:2]
    inverse = inverse_affine(affine, sx, sy)
    window = face_window(inverse, height, width)
    if window is None or weight <= 0.0:
        return
    x0, y0, x1, y1 = window
    local = inverse.copy()
    local[0, 2] -= x0
    local[1, 2] -= y0
    size = (x1 - x0, y1 - y0)
    face_hwc = np.ascontiguousarray(face.transpose(1, 2, 0), dtype=np.float32)
    warped = cv2.warpAffine(face_hwc, local, size, flags=cv2.INTER_LINEAR)
    hard = cv2.warpAffine(np.ones((FACE_SIZE, FACE_SIZE), np.float32), local, size)
    mask = soft_mask(hard, (sx + sy) / 2) * np.float32(weight)
    if canvas.shape[2] == 1:
        warped = (warped @ _LUMA)[:, :, None]
    region = canvas[y0:y1, x0:x1]
    region += mask[:, :, None] * (warped - region)
