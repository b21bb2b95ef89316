"""Face alignment: a similarity transform onto the FFHQ 5-point template and the 512x512 crop."""

from __future__ import annotations

import cv2
import numpy as np

from models.face.types import FACE_SIZE

# facexlib's FFHQ template for 512x512 crops: eyes, nose, mouth corners.
FACE_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)
# Outside the image the crop is mid gray, as facexlib's (135, 133, 132) BGR border.
BORDER_RGB = (132 / 255, 133 / 255, 135 / 255)


def estimate_affine(landmarks: np.ndarray) -> np.ndarray | None:
    """The (2, 3) similarity transform from image landmarks to the template (None if degenerate).

    LMEDS as upstream, which uses it to match skimage's similarity estimate.
    """
    points = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    if not np.isfinite(points).all():
        return None
    affine, _ = cv2.estimateAffinePartial2D(points, FACE_TEMPLATE_512, method=cv2.LMEDS)
    if affine is None or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:, :2])) < 1e-8:
        return None
    return affine.astype(np.float64)


def warp_face(rgb: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The aligned (3, 512, 512) float32 crop of an (H, W, 3) float image."""
    crop = cv2.warpAffine(
        rgb,
        affine,
        (FACE_SIZE, FACE_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=BORDER_RGB,
    )
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32)
