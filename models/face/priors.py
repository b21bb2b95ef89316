"""RetinaFace anchors and output decoding: priors, offsets to boxes/landmarks, threshold and NMS."""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import nms

from models.face.types import DetectedFace

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)


def prior_boxes(height: int, width: int) -> torch.Tensor:
    """(P, 4) anchors ``(cx, cy, w, h)`` relative to the image size, in the network's output order.

    Per level: rows, then columns, then the level's two sizes (facexlib's ``PriorBox``, clip off).
    """
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * step / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        per_size = [
            torch.stack(
                [
                    grid_x,
                    grid_y,
                    torch.full_like(grid_x, s / width),
                    torch.full_like(grid_x, s / height),
                ],
                dim=-1,
            )
            for s in sizes
        ]
        levels.append(torch.stack(per_size, dim=2).reshape(-1, 4))
    return torch.cat(levels, dim=0)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """(P, 4) offsets -> (P, 4) relative ``(x1, y1, x2, y2)``."""
    centers = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    sizes = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])
    return torch.cat([centers - sizes / 2, centers + sizes / 2], dim=1)


def decode_landmarks(landm: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """(P, 10) offsets -> (P, 5, 2) relative ``(x, y)`` points."""
    offsets = landm.view(-1, 5, 2)
    return priors[:, None, :2] + offsets * VARIANCE[0] * priors[:, None, 2:]


def select_faces(
    loc: torch.Tensor,
    scores: torch.Tensor,
    landm: torch.Tensor,
    *,
    height: int,
    width: int,
    score_threshold: float,
    nms_threshold: float,
    rescale: float = 1.0,
) -> list[DetectedFace]:
    """Decode one image's outputs into faces, best score first.

    ``loc``/``scores``/``landm`` are (P, 4), (P, 2) and (P, 10) for a ``height`` x ``width`` network
    input; ``rescale`` maps network-input pixels back to the caller's image (1 / resize factor).
    """
    priors = prior_boxes(height, width).to(loc.device)
    face_scores = scores[:, 1]
    keep = face_scores > score_threshold
    if not bool(keep.any()):
        return []
    size = torch.tensor([width, height], dtype=torch.float32, device=loc.device) * rescale
    boxes = decode_boxes(loc[keep].float(), priors[keep]) * size.repeat(2)
    points = decode_landmarks(landm[keep].float(), priors[keep]) * size
    face_scores = face_scores[keep].float()
    order = nms(boxes, face_scores, nms_threshold)  # sorted by decreasing score
    boxes_np = boxes[order].cpu().numpy()
    points_np = points[order].cpu().numpy().astype(np.float32)
    scores_np = face_scores[order].cpu().numpy()
    return [
        DetectedFace(
            box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            score=float(s),
            landmarks=p,
        )
        for b, s, p in zip(boxes_np, scores_np, points_np, strict=True)
    ]
