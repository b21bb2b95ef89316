"""Face restoration without Ray: RetinaFace detection, FFHQ alignment, GFPGAN, paste-back.

Typical use::

    detector = load_retinaface(det_path, device)
    restore = load_gfpgan(gfpgan_path, device)
    result = restore_faces(color, detector, restore, background)  # or the three stages separately
"""

from models.face.detect import RetinaFaceDetector, load_retinaface
from models.face.pipeline import (
    FaceJob,
    FaceRestoreResult,
    paste_faces,
    prepare_faces,
    resize_background,
    restore_faces,
)
from models.face.restore import load_gfpgan, make_restore_fn
from models.face.types import FACE_SIZE, DetectedFace, FaceDetector, RestoreFn

__all__ = [
    "FACE_SIZE",
    "DetectedFace",
    "FaceDetector",
    "FaceJob",
    "FaceRestoreResult",
    "RestoreFn",
    "RetinaFaceDetector",
    "load_gfpgan",
    "load_retinaface",
    "make_restore_fn",
    "paste_faces",
    "prepare_faces",
    "resize_background",
    "restore_faces",
]
