"""GFPGAN v1.4 as a batched ``RestoreFn``: loading through spandrel and the [-1, 1] calling convention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import spandrel
import torch

from models.errors import InvalidOptionError, UnsupportedModelError
from models.face.types import FACE_SIZE, RestoreFn
from models.loading import read_state_dict

# GFPGANv1Clean's hyperparameters for GFPGANv1.4.pth (as upstream's GFPGANer builds it): the
# published checkpoint's layout, for code that builds the network without a file.
GFPGAN_V14_CONFIG: dict[str, object] = {
    "out_size": 512,
    "num_style_feat": 512,
    "channel_multiplier": 2,
    "decoder_load_path": None,
    "fix_decoder": False,
    "num_mlp": 8,
    "input_is_latent": True,
    "different_w": True,
    "narrow": 1,
    "sft_half": True,
}


def make_restore_fn(
    module: torch.nn.Module, device: torch.device, *, max_batch: int = 4
) -> RestoreFn:
    """Wrap a GFPGANv1Clean module: (N, 3, 512, 512) [0, 1] RGB in, the same shape out.

    The network works in [-1, 1] and returns ``(image, intermediate_rgbs)``. Noise comes from the
    checkpoint's stored buffers (``randomize_noise=False``) so results are reproducible; upstream
    draws fresh noise per call. ``max_batch`` crops run at a time, bounding accelerator memory.
    """
    if max_batch < 1:
        raise InvalidOptionError("max_batch must be at least 1")

    def restore(crops: np.ndarray) -> np.ndarray:
        if crops.ndim != 4 or crops.shape[1:] != (3, FACE_SIZE, FACE_SIZE):
            raise InvalidOptionError(f"face crops must be (N, 3, 512, 512), got {crops.shape}")
        out = np.empty(crops.shape, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(crops), max_batch):
                chunk = torch.from_numpy(np.ascontiguousarray(crops[start : start + max_batch]))
                x = chunk.to(device=device, dtype=torch.float32) * 2 - 1
                y = module(x, return_rgb=False, randomize_noise=False)[0]
                restored = ((y + 1) / 2).clamp_(0, 1)
                out[start : start + max_batch] = restored.float().cpu().numpy()
        return out

    return restore


def load_gfpgan_module(path: Path, device: torch.device | str) -> torch.nn.Module:
    """The GFPGAN v1.4 (GFPGANv1Clean) network of a checkpoint, fp32, eval mode, on ``device``."""
    state = read_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except (spandrel.UnsupportedModelError, RuntimeError, KeyError) as exc:
        raise UnsupportedModelError(f"{path.name} is not a GFPGAN model: {exc}") from exc
    if descriptor.architecture.id != "GFPGAN":
        raise UnsupportedModelError(
            f"{path.name} is a {descriptor.architecture.name} model, not GFPGAN"
        )
    return descriptor.model.to(torch.device(device)).float().eval().requires_grad_(False)


def load_gfpgan(path: Path, device: torch.device | str, *, max_batch: int = 4) -> RestoreFn:
    """Load a GFPGAN v1.4 checkpoint as a ``RestoreFn`` (see ``make_restore_fn``)."""
    dev = torch.device(device)
    return make_restore_fn(load_gfpgan_module(path, dev), dev, max_batch=max_batch)
