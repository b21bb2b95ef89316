"""Loading verified weights into runnable upscalers, through spandrel.

spandrel detects the architecture (RRDBNet, SRVGGNetCompact, and the community ones) from the state
dict itself. Files are read safely: safetensors, or ``torch.load(weights_only=True)``, never a full
unpickle. What the model needs at run time (scale, size multiple, precision) ends up on
``Upscaler``, so callers never branch on architecture names.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import spandrel
import torch
import torch.nn.functional as F
from safetensors.torch import load_file as load_safetensors

from models import openvino_backend
from models.errors import InvalidOptionError, UnsupportedModelError
from models.registry import ModelSpec

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino")

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given ("cpu", "cuda", "cuda:1"), else the first CUDA device when there is one."""
    if name:
        try:
            return torch.device(name)
        except RuntimeError as e:
            raise InvalidOptionError(f"{name!r} is not a torch device (cpu, cuda, cuda:1)") from e
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def memory_budget(device: torch.device) -> int:
    """Bytes a replica may spend on one forward pass and its canvas when not configured: 60% of
    the GPU's free memory, or a quarter of the host's memory (at most 4 GiB) on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(4 << 30, host // 4)


def cpu_has_fast_bf16() -> bool:
    # On CPUs without AVX512-BF16/AMX, oneDNN emulates bf16: measured here (AVX2 EPYC) 40x *slower*.
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(requested: str, device: torch.device, *, supports_half: bool) -> str:
    """The precision a model actually runs in: fp16 on CUDA where supported, bf16 on CPUs with
    native bf16, else fp32. An explicit request the model or device cannot honour is an error."""
    if requested not in PRECISIONS:
        raise InvalidOptionError(f"precision must be one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda":
            return "fp16" if supports_half else "fp32"
        return "bf16" if supports_half and cpu_has_fast_bf16() else "fp32"
    if requested in ("fp16", "bf16") and not supports_half:
        raise InvalidOptionError(f"this model does not support {requested}; use fp32")
    if requested == "fp16" and device.type != "cuda":
        raise InvalidOptionError("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return requested


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or a pickle read with the allow-list unpickler."""
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a verified file should always load; say which file did not
        raise UnsupportedModelError(f"cannot read weights from {path.name}: {e}") from e
    if not isinstance(state, dict):
        raise UnsupportedModelError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return state


def blend_state_dicts(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], weight_a: float
) -> dict[str, torch.Tensor]:
    """``weight_a * a + (1 - weight_a) * b``, as Real-ESRGAN's deep network interpolation does."""
    a, b = spandrel.canonicalize_state_dict(a), spandrel.canonicalize_state_dict(b)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise UnsupportedModelError("the two networks to blend do not have the same layout")
    return {k: weight_a * a[k].float() + (1 - weight_a) * b[k].float() for k in a}


@dataclass(frozen=True)
class Upscaler:
    """A loaded image-to-image model, safe to call from several threads at once."""

    name: str
    architecture: str
    scale: int
    precision: str
    device: torch.device
    module: torch.nn.Module
    multiple_of: int = 1
    minimum: int = 0
    bytes_per_pixel: int = 0  # activation memory per input pixel (see activation_bytes_per_pixel)
    # Compiled for fixed shapes (models.compiled): batches are padded to a power of two.
    fixed_shapes: bool = False
    backend: str = "torch"  # or "openvino": then ``runner`` replaces ``module`` (CPU only)
    runner: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _padding(self, size: int) -> int:
        target = max(size, self.minimum)
        return target + -target % self.multiple_of - size

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W float RGB in [0, 1] (any device) → N x 3 x H*scale x W*scale float32 on
        the model's device, clipped to [0, 1]. Safe to call from several threads at once."""
        x = batch.to(self.device, non_blocking=True).float()
        count = x.shape[0]
        if self.fixed_shapes and count & (count - 1):
            x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, (1 << count.bit_length()) - count))
        h, w = x.shape[-2:]
        pad_h, pad_w = self._padding(h), self._padding(w)
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.runner is not None:  # its precision is compiled in
            y = self.runner(x)
        elif self.precision == "fp16":
            y = self.module(x.half())
        elif self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                y = self.module(x)
        else:
            y = self.module(x)
        return y[:count, :, : h * self.scale, : w * self.scale].float().clamp_(0, 1)

    def forward_numpy(self, batch: np.ndarray) -> np.ndarray:
        """``forward`` on host arrays (benchmarks and comparisons with other runtimes)."""
        return self.forward(torch.from_numpy(np.ascontiguousarray(batch))).cpu().numpy()


def activation_bytes_per_pixel(
    module: torch.nn.Module, *, dtype_bytes: int, probe: int = 32
) -> int:
    """Bytes of activations a forward pass holds per input pixel, measured once on a small probe
    (``module`` in float32 on the CPU): the largest input + output of any layer, which must
    coexist in memory.
    Tile sizes are chosen from it (``models.tiling.tile_for_budget``)."""
    largest = 0

    def record(_: torch.nn.Module, inputs: tuple[object, ...], output: object) -> None:
        nonlocal largest
        tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        largest = max(largest, sum(t.numel() for t in tensors))

    hooks = [m.register_forward_hook(record) for m in module.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, probe, probe))
    finally:
        for hook in hooks:
            hook.remove()
    return max(1, math.ceil(largest * dtype_bytes / probe**2))


def load_upscaler(
    spec: ModelSpec,
    weights: Path,
    *,
    device: torch.device | None = None,
    precision: str = "auto",
    denoise_weights: Path | None = None,
    denoise: float | None = None,
    backend: str = "auto",
) -> Upscaler:
    """Build an ``Upscaler`` from a verified weights file (see ``models.weights``).

    For models with a denoise twin (realesr-general-x4v3) ``denoise`` in [0, 1] blends the two
    networks: 1 keeps all of the general model's denoising, 0 none of it. ``backend``: "torch",
    "openvino" (CPU only), or "auto": OpenVINO on the CPU when it is installed (measured here
    1.2-1.9x torch on x4plus, level on the compact models), falling back to torch if it cannot
    convert the model.
    """
    device = device or pick_device()
    state = read_state_dict(weights)
    if denoise is not None:
        if denoise_weights is None:
            raise InvalidOptionError(f"{spec.name} has no denoise strength")
        if not 0.0 <= denoise <= 1.0:
            raise InvalidOptionError("denoise must be between 0 and 1")
        if denoise < 1.0:
            state = blend_state_dicts(state, read_state_dict(denoise_weights), denoise)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except Exception as e:  # spandrel raises several types for unknown layouts
        raise UnsupportedModelError(f"{spec.name}: spandrel cannot load this model: {e}") from e
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UnsupportedModelError(f"{spec.name} is not an image-to-image model")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UnsupportedModelError(f"{spec.name}: only RGB → RGB models are served")
    if spec.scale is not None and descriptor.scale != spec.scale:
        raise UnsupportedModelError(
            f"{spec.name}: the file is a {descriptor.scale}x model, the registry says {spec.scale}x"
        )
    resolved = resolve_precision(
        precision, device, supports_half=spec.supports_fp16 and descriptor.supports_half
    )
    bytes_per_pixel = activation_bytes_per_pixel(
        descriptor.model.eval(), dtype_bytes=2 if resolved in ("fp16", "bf16") else 4
    )
    module = descriptor.model.eval().to(device)
    if resolved == "fp16":
        module = module.half()
    module = module.to(memory_format=torch.channels_last)
    log.info(
        "loaded %s (%s, %dx) on %s in %s",
        spec.name,
        descriptor.architecture.name,
        descriptor.scale,
        device,
        resolved,
    )
    upscaler = Upscaler(
        name=spec.name,
        architecture=descriptor.architecture.name,
        scale=descriptor.scale,
        precision=resolved,
        device=device,
        module=module,
        multiple_of=descriptor.size_requirements.multiple_of,
        minimum=descriptor.size_requirements.minimum,
        bytes_per_pixel=bytes_per_pixel,
    )
    return _with_backend(upscaler, backend, threads=torch.get_num_threads())


def _with_backend(upscaler: Upscaler, backend: str, *, threads: int) -> Upscaler:
    if backend not in BACKENDS:
        raise InvalidOptionError(f"backend must be one of {', '.join(BACKENDS)}")
    on_cpu = upscaler.device.type == "cpu"
    if backend == "torch" or (backend == "auto" and not (on_cpu and openvino_backend.available())):
        return upscaler
    if not on_cpu:
        raise InvalidOptionError("the openvino backend runs on the CPU; use torch on a GPU")
    precision = "fp32" if upscaler.precision == "fp32" else "bf16"
    try:
        runner = openvino_backend.compile_for_cpu(
            upscaler.module, threads=threads, precision=precision
        )
    except UnsupportedModelError as e:
        if backend == "openvino":
            raise
        log.warning("%s: OpenVINO cannot run it (%s); using torch", upscaler.name, e)
        return upscaler
    log.info("%s runs on OpenVINO (%s, %d threads)", upscaler.name, precision, threads)
    return dataclasses.replace(upscaler, backend="openvino", runner=runner)
