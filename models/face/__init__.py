"""Face restoration without Ray: RetinaFace detection, FFHQ alignment, GFPGAN, paste-back.

Typical use::

    detector = load_retinaface(det_path, device)
    restore = load_gfpgan(gfpgan_path, device)
    result = restore_faces(color, detector, restore, background)  # or the three stages separately

The names below load on first use (PEP 562), so ``models.face.types`` (torch-free) can be
imported without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "RetinaFaceDetector": "detect",
    "load_retinaface": "detect",
    "FaceJob": "pipeline",
    "FaceRestoreResult": "pipeline",
    "paste_faces": "pipeline",
    "prepare_faces": "pipeline",
    "resize_background": "pipeline",
    "restore_faces": "pipeline",
    "load_gfpgan": "restore",
    "make_restore_fn": "restore",
    "FACE_SIZE": "types",
    "DetectedFace": "types",
    "FaceDetector": "types",
    "RestoreFn": "types",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
