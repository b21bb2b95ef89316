"""A thin wrapper of the ``ncnn`` PyPI runtime on CPU: the independent peer of tests and benches.

``ncnn`` is a dev/bench dependency, imported only when an ``NcnnUpscaler`` is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.errors import (
    ImageError,
    InvalidOptionError,
    UnsupportedModelError,
    WeightsUnavailableError,
)
from models.ncnn_format import parse_param


class NcnnUpscaler:
    """Runs an ncnn ``.param``/``.bin`` model with Vulkan off.

    ``fp16=False`` forces fp32 storage and arithmetic; ``fp16=True`` keeps ncnn's default options
    (fp16 storage/arithmetic where the CPU has it), as ncnn's own tools run.
    """

    def __init__(self, param: Path, bin: Path, *, fp16: bool = False, threads: int = 1) -> None:
        try:
            import ncnn
        except ImportError:
            raise WeightsUnavailableError(
                "the ncnn runtime is not installed: pip install ncnn"
            ) from None
        if threads < 1:
            raise InvalidOptionError(f"threads must be at least 1, got {threads}")
        graph = parse_param(param.read_text(encoding="ascii", errors="replace"))
        self._input, self._output = graph.input, graph.output
        self._ncnn: Any = ncnn
        self._net: Any = ncnn.Net()
        opt = self._net.opt
        opt.use_vulkan_compute = False
        opt.num_threads = threads
        if not fp16:
            opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False
            opt.use_bf16_packed = opt.use_bf16_storage = False
        if self._net.load_param(str(param)) != 0 or self._net.load_model(str(bin)) != 0:
            raise UnsupportedModelError(f"ncnn could not load {param.name} / {bin.name}")

    def run(self, image: np.ndarray) -> np.ndarray:
        """Upscale an HxWx3 float32 RGB image in [0, 1]; returns (H*scale)x(W*scale)x3 float32."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.float32:
            raise ImageError(f"expected an HxWx3 float32 image, got {image.shape} {image.dtype}")
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        with self._net.create_extractor() as extractor:
            extractor.input(self._input, self._ncnn.Mat(chw).clone())
            status, out = extractor.extract(self._output)
        if status != 0:
            raise UnsupportedModelError(f"ncnn failed to run the model (status {status})")
        return np.ascontiguousarray(np.array(out, dtype=np.float32).transpose(1, 2, 0))
