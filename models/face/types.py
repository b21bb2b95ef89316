"""The contracts between face stages: a detected face, a detector, a batched restorer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

FACE_SIZE = 512

# (N, 3, 512, 512) float32 RGB crops in [0, 1] -> restored crops of the same shape and range.
RestoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous: faces compare by identity
class DetectedFace:
    """One face in pixel coordinates of the image it was found in.

    ``landmarks`` is (5, 2) float32 ``(x, y)``: left eye, right eye, nose, left and right mouth
    corner, "left" meaning smaller x in the image.
    """

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    landmarks: np.ndarray

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[0] - self.landmarks[1]))

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def scaled(self, sx: float, sy: float) -> DetectedFace:
        """The same face in an image resized by (sx, sy)."""
        x1, y1, x2, y2 = self.box
        landmarks = (self.landmarks * np.array([sx, sy], dtype=np.float32)).astype(np.float32)
        return DetectedFace((x1 * sx, y1 * sy, x2 * sx, y2 * sy), self.score, landmarks)


@runtime_checkable
class FaceDetector(Protocol):
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an (H, W, 3) RGB image: uint8, uint16 or float in [0, 1]; best score first."""
        ...
