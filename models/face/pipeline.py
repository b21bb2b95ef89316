"""Face restoration as pure stages: prepare (detect + align), restore (batched, by the caller), paste.

A Ray deployment can run ``prepare_faces`` per request, send ``job.crops`` of concurrent requests
through one batched ``RestoreFn`` and finish each request with ``paste_faces`` onto a background that
another deployment upscaled. Every stage takes and returns values; nothing is shared between calls.
Images are float32 in [0, 1], (H, W, 3) or (H, W, 1), so 8- and 16-bit inputs take the same path;
alpha never enters: the caller resizes it alongside the background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from models.errors import ImageError, InvalidOptionError
from models.face.align import estimate_affine, warp_face
from models.face.paste import paste_face
from models.face.types import FACE_SIZE, DetectedFace, FaceDetector, RestoreFn
from superres_client.options import DEFAULT_MAX_FACES

# GFPGANer skips faces whose eyes are closer than this (side views, tiny faces).
MIN_EYE_DISTANCE = 5.0


@dataclass(frozen=True)
class FaceJob:
    """The faces of one input image, aligned and ready for a ``RestoreFn``."""

    height: int
    width: int
    faces: tuple[DetectedFace, ...]
    affines: np.ndarray  # (N, 2, 3) image -> crop transforms
    crops: np.ndarray  # (N, 3, 512, 512) float32 RGB in [0, 1]

    def output_faces(self, out_height: int, out_width: int) -> tuple[DetectedFace, ...]:
        """The detections in the coordinates of an output of the given size."""
        sx, sy = out_width / self.width, out_height / self.height
        return tuple(face.scaled(sx, sy) for face in self.faces)


@dataclass(frozen=True)
class FaceRestoreResult:
    color: np.ndarray  # float32, the background's shape
    faces: tuple[DetectedFace, ...]  # in output coordinates


def _check_image(image: np.ndarray, what: str) -> None:
    if (
        image.ndim != 3
        or image.shape[2] not in (1, 3)
        or not np.issubdtype(image.dtype, np.floating)
    ):
        raise ImageError(
            f"{what} must be float (H, W, 1) or (H, W, 3), got {image.dtype} {image.shape}"
        )


def _choose(
    faces: list[DetectedFace], height: int, width: int, *, center: bool, limit: int
) -> list[DetectedFace]:
    if center and faces:
        mid = np.array([width / 2, height / 2])
        return [min(faces, key=lambda f: np.linalg.norm(_box_center(f) - mid))]
    return sorted(faces, key=lambda f: f.area, reverse=True)[:limit]


def _box_center(face: DetectedFace) -> np.ndarray:
    x1, y1, x2, y2 = face.box
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2])


def prepare_faces(
    color: np.ndarray,
    detector: FaceDetector,
    *,
    only_center_face: bool = False,
    max_faces: int = DEFAULT_MAX_FACES,
    min_eye_distance: float = MIN_EYE_DISTANCE,
) -> FaceJob:
    """Detect faces in ``color`` and cut their aligned 512x512 crops.

    Gray input is replicated to RGB. With ``only_center_face`` the face nearest the image centre is
    kept; otherwise the ``max_faces`` largest.
    """
    _check_image(color, "image")
    if max_faces < 1:
        raise InvalidOptionError("max_faces must be at least 1")
    height, width = color.shape[:2]
    rgb = np.ascontiguousarray(
        np.repeat(color, 3, axis=2) if color.shape[2] == 1 else color, dtype=np.float32
    )
    found = [f for f in detector.detect(rgb) if f.eye_distance >= min_eye_distance]
    faces, affines, crops = [], [], []
    for face in _choose(found, height, width, center=only_center_face, limit=max_faces):
        affine = estimate_affine(face.landmarks)
        if affine is None:
            continue
        faces.append(face)
        affines.append(affine)
        crops.append(warp_face(rgb, affine))
    return FaceJob(
        height=height,
        width=width,
        faces=tuple(faces),
        affines=np.array(affines, dtype=np.float64).reshape(-1, 2, 3),
        crops=np.array(crops, dtype=np.float32).reshape(-1, 3, FACE_SIZE, FACE_SIZE),
    )


def paste_faces(
    background: np.ndarray,
    job: FaceJob,
    restored: Sequence[np.ndarray] | np.ndarray,
    *,
    weight: float = 1.0,
) -> np.ndarray:
    """Paste restored crops onto ``background``: the job's image resized to any output size.

    The scale comes from the background's size. ``weight`` in [0, 1] blends restored faces with the
    background under the mask (GFPGAN v1.4 ignores upstream's ``weight`` argument, whose effective
    value is therefore 1). Returns a new float32 array; ``background`` is not modified.
    """
    _check_image(background, "background")
    if not 0.0 <= weight <= 1.0:
        raise InvalidOptionError("face weight must be in [0, 1]")
    if len(restored) != len(job.faces):
        raise InvalidOptionError(f"{len(restored)} restored crops for {len(job.faces)} faces")
    canvas = background.astype(np.float32, copy=True)
    sx, sy = canvas.shape[1] / job.width, canvas.shape[0] / job.height
    for face, affine in zip(restored, job.affines, strict=True):
        if face.shape != (3, FACE_SIZE, FACE_SIZE):
            raise InvalidOptionError(f"restored crops must be (3, 512, 512), got {face.shape}")
        paste_face(canvas, face, affine, sx=sx, sy=sy, weight=weight)
    return canvas


def resize_background(color: np.ndarray, scale: float) -> np.ndarray:
    """The plain (Lanczos) background used when no upscaling model is chosen."""
    _check_image(color, "image")
    if scale <= 0:
        raise InvalidOptionError("scale must be positive")
    height, width, channels = color.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return color.astype(np.float32, copy=True)
    resized = cv2.resize(color.astype(np.float32), size, interpolation=cv2.INTER_LANCZOS4)
    return np.clip(resized.reshape(size[1], size[0], channels), 0.0, 1.0)


def restore_faces(
    color: np.ndarray,
    detector: FaceDetector,
    restore_fn: RestoreFn,
    background: np.ndarray | None = None,
    *,
    scale: float = 1.0,
    weight: float = 1.0,
    only_center_face: bool = False,
    max_faces: int = DEFAULT_MAX_FACES,
) -> FaceRestoreResult:
    """All stages in one call. Without ``background`` the input is resized by ``scale``."""
    if background is None:
        background = resize_background(color, scale)
    job = prepare_faces(color, detector, only_center_face=only_center_face, max_faces=max_faces)
    restored = restore_fn(job.crops) if job.faces else job.crops
    out = paste_faces(background, job, restored, weight=weight)
    return FaceRestoreResult(color=out, faces=job.output_faces(out.shape[0], out.shape[1]))
