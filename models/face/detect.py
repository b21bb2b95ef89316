"""Face detection with RetinaFace ResNet-50: input preparation, the detector, the checkpoint loader."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from models.errors import ImageError, InvalidOptionError, UnsupportedModelError
from models.face.priors import select_faces
from models.face.retinaface import RetinaFace
from models.face.types import DetectedFace
from models.loading import read_state_dict

# facexlib subtracts this from BGR pixels on the 0-255 scale.
BGR_MEAN = (104.0, 117.0, 123.0)


def to_network_input(image: np.ndarray, max_side: int | None) -> tuple[torch.Tensor, float]:
    """An (H, W, 3) RGB image as the network's (1, 3, h, w) input, and the resize factor used.

    uint8 is taken as is, uint16 divided by 257, floats read as [0, 1]. Images whose longer side
    exceeds ``max_side`` are shrunk first (area interpolation), so huge inputs stay affordable.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"face detection needs an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        to_255 = 1.0
    elif image.dtype == np.uint16:
        to_255 = 1 / 257
    elif np.issubdtype(image.dtype, np.floating):
        to_255 = 255.0
    else:
        raise ImageError(f"unsupported pixel type {image.dtype} for face detection")
    pixels: np.ndarray = image.astype(np.float32) * np.float32(to_255)
    factor = 1.0
    longest = max(image.shape[:2])
    if max_side is not None and longest > max_side:
        factor = max_side / longest
        size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    bgr = pixels[:, :, ::-1] - np.array(BGR_MEAN, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None], factor


class RetinaFaceDetector:
    """A ``FaceDetector`` around a loaded RetinaFace network. Stateless per call: thread-safe.

    Defaults follow GFPGAN's use of facexlib: score > 0.97, NMS IoU 0.4. Upstream never resizes;
    ``max_side`` (None to disable) bounds the cost on very large inputs.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        device: torch.device,
        *,
        score_threshold: float = 0.97,
        nms_threshold: float = 0.4,
        max_side: int | None = 1600,
    ) -> None:
        if not 0.0 <= score_threshold < 1.0:
            raise InvalidOptionError("score_threshold must be in [0, 1)")
        if not 0.0 < nms_threshold <= 1.0:
            raise InvalidOptionError("nms_threshold must be in (0, 1]")
        if max_side is not None and max_side < 32:
            raise InvalidOptionError("max_side must be at least 32 (or None)")
        self.net = net
        self.device = device
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        x, factor = to_network_input(image, self.max_side)
        with torch.inference_mode():
            loc, scores, landm = self.net(x.to(self.device))
        return select_faces(
            loc[0],
            scores[0],
            landm[0],
            height=x.shape[2],
            width=x.shape[3],
            score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold,
            rescale=1.0 / factor,
        )


def load_retinaface_state(net: RetinaFace, state: dict[str, torch.Tensor]) -> None:
    """Strictly load facexlib's checkpoint layout (an optional ``module.`` prefix is stripped)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's step counter, unused in eval.
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UnsupportedModelError(f"not a RetinaFace ResNet-50 state dict: {exc}") from exc


def load_retinaface(
    path: Path,
    device: torch.device | str,
    *,
    score_threshold: float = 0.97,
    nms_threshold: float = 0.4,
    max_side: int | None = 1600,
) -> RetinaFaceDetector:
    """Load ``detection_Resnet50_Final.pth`` (safe unpickling) into a ready detector."""
    state = read_state_dict(path)
    net = RetinaFace()
    load_retinaface_state(net, state)
    dev = torch.device(device)
    net.to(dev).eval().requires_grad_(False)
    return RetinaFaceDetector(
        net,
        dev,
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        max_side=max_side,
    )
