"""Tiny randomly initialised networks of the real architectures, saved as weights files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact as SRVGGNetCompact
from spandrel.architectures.ESRGAN import ESRGAN


def save_tiny_compact(path: Path, *, scale: int = 4, seed: int = 0) -> str:
    """A 4-conv SRVGGNetCompact (the realesr-general/animevideov3 layout); returns its sha256."""
    torch.manual_seed(seed)
    net = SRVGGNetCompact(num_feat=8, num_conv=4, upscale=scale)
    return _save(net.state_dict(), path)


def save_tiny_rrdb(path: Path, *, scale: int = 4, seed: int = 0) -> str:
    """A 1-block, 8-feature RRDBNet (the x4plus layout) as a .pth; returns its sha256."""
    torch.manual_seed(seed)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    return _save(net.state_dict(), path)


def _save(state: dict[str, torch.Tensor], path: Path) -> str:
    state = {k: v.contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()
