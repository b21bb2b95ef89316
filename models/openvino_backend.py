"""OpenVINO as a CPU backend for spandrel modules: convert once, run any tile shape or batch.

``compile_for_cpu(module, threads=..., precision=...)`` converts the module (``openvino``'s
TorchScript frontend) into a model with a dynamic N x 3 x H x W input and compiles it for the
"CPU" device; the returned ``OpenVinoForward`` is a ``models.inference.Forward``: NCHW float32 in
[0, 1] on the CPU in, NCHW float32 at the model's scale out (unclamped: the caller clamps, pads to
``multiple_of`` and crops, as ``Upscaler.forward`` does for torch).

Dynamic H and W cost speed on small networks (SRVGGNetCompact 10-20% per tile on an AVX-512
EPYC; RRDBNet within noise), and the tiler sends windows of one size again and again, so a tile
size (H, W) seen twice gets a model compiled for it, with N still dynamic (that keeps most of the
gain of a fully static shape and serves every batch size). At most ``static_sizes`` such models
are made and never evicted: one-off sizes, such as small whole images, stay on the dynamic model
and cannot thrash the cache. Each costs a compile (x4plus ~0.5 s, inline in the call that makes
it) and memory (x4plus ~100 MB: OpenVINO repacks the weights per compiled model).

Every call borrows an infer request from its compiled model's pool (or makes one), so any number
of threads may call one ``OpenVinoForward`` at once; a request is never shared while it runs.

``openvino`` is imported only when something is compiled: this module imports without it.
"""

from __future__ import annotations

import functools
import logging
import queue
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.errors import InvalidOptionError, UnsupportedModelError

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
_EXAMPLE_SIDE = 32  # the trace's example input; the converted model takes any N, H and W
_MAX_SEEN = 1024  # tile sizes counted towards a compile of their own before the count starts over
Size = tuple[int, int]  # H, W


def available() -> bool:
    """Whether the ``openvino`` package can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise UnsupportedModelError(
            "the OpenVINO backend needs the openvino package: pip install openvino"
        ) from None
    return openvino


@functools.cache
def _core() -> Any:
    return _openvino().Core()


def native_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU (AVX512-BF16 or AMX), not emulated."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(requested: str) -> str:
    """``auto`` → bf16 where the CPU has it natively, else fp32; explicit bf16 needs native bf16
    (OpenVINO would silently run fp32 instead)."""
    if requested not in PRECISIONS:
        raise InvalidOptionError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if native_bf16() else "fp32"
    if requested == "bf16" and not native_bf16():
        raise InvalidOptionError("this CPU has no native bf16 (AVX512-BF16 or AMX); use fp32")
    return requested


def cpu_description() -> str:
    """e.g. ``"AMD EPYC; flags: avx2 avx512f avx512_bf16; OpenVINO: BF16 FP32 INT8 ..."``."""
    flags = _cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
    shown = " ".join(f for f in wanted if f in flags) or "unknown"
    parts = [_cpu_model() or "unknown CPU", f"flags: {shown}"]
    if available():
        parts.append(
            "OpenVINO: " + " ".join(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        )
    return "; ".join(parts)


def _cpu_info() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


def _cpu_flags() -> set[str]:
    match = re.search(r"^flags\s*:(.*)$", _cpu_info(), re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def _cpu_model() -> str:
    match = re.search(r"^model name\s*:(.*)$", _cpu_info(), re.MULTILINE)
    return match.group(1).strip() if match else ""


@dataclass
class _Compiled:
    """One compiled model and its idle infer requests."""

    model: Any
    idle: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            request = self.idle.get_nowait()
        except queue.Empty:
            request = self.model.create_infer_request()
        try:
            # share_inputs: no copy of the batch; outputs are copied out of the request's tensor.
            result = request.infer(x, share_inputs=True, share_outputs=False)
            return np.asarray(result[0])
        finally:
            self.idle.put(request)


class OpenVinoForward:
    """A compiled model: ``forward(batch)`` with any N x 3 x H x W; safe to call from many threads."""

    def __init__(
        self,
        model: Any,
        *,
        threads: int,
        precision: str,
        static_sizes: int = 2,
        convert_s: float = 0.0,
    ) -> None:
        if precision not in _OV_PRECISION:
            raise InvalidOptionError(f"precision must be fp32 or bf16 here (got {precision!r})")
        self.threads = threads
        self.precision = precision  # fp32 or bf16
        self.static_sizes = static_sizes
        self.convert_s = convert_s  # seconds spent in openvino.convert_model
        self.model = model  # the converted openvino.Model (dynamic N/H/W), for more compiles
        started = time.perf_counter()
        self._dynamic = _Compiled(self._compile(model))
        self.compile_s = time.perf_counter() - started  # the dynamic model's compile, seconds
        self._static: dict[Size, _Compiled] = {}
        self._seen: dict[Size, int] = {}
        self._compiling: set[Size] = set()
        self._no_static: set[Size] = set()  # sizes whose compile failed
        self._lock = threading.Lock()

    def _compile(self, model: Any) -> Any:
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
        }
        return _core().compile_model(model, "CPU", config)

    @property
    def static_sizes_compiled(self) -> list[Size]:
        """The (H, W) input sizes that have a compiled model of their own."""
        with self._lock:
            return list(self._static)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """NCHW float in [0, 1] on the CPU → NCHW float32 at the model's scale (not clamped)."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise InvalidOptionError(f"expected an N x 3 x H x W batch, got {tuple(batch.shape)}")
        if batch.device.type != "cpu":
            raise InvalidOptionError(f"the OpenVINO backend runs on the CPU, not {batch.device}")
        x = np.ascontiguousarray(batch.detach().to(torch.float32).numpy())
        return torch.from_numpy(self._compiled_for((x.shape[2], x.shape[3])).run(x))

    def _compiled_for(self, size: Size) -> _Compiled:
        with self._lock:
            found = self._static.get(size)
            if found is not None:
                return found
            if len(self._static) + len(self._compiling) >= self.static_sizes:
                return self._dynamic
            if len(self._seen) >= _MAX_SEEN:
                self._seen.clear()
            self._seen[size] = seen = self._seen.get(size, 0) + 1
            if seen < 2 or size in self._compiling or size in self._no_static:
                return self._dynamic
            self._compiling.add(size)
        try:  # compile outside the lock: other sizes (and this one, dynamically) keep running
            sized = self.model.clone()
            sized.reshape({0: [-1, 3, *size]})  # N stays dynamic
            compiled = _Compiled(self._compile(sized))
        except Exception:
            log.warning("OpenVINO: no model for %dx%d tiles; the dynamic one serves them", *size)
            with self._lock:
                self._compiling.discard(size)
                self._no_static.add(size)
            return self._dynamic
        with self._lock:
            self._compiling.discard(size)
            self._static[size] = compiled
        log.info("OpenVINO: compiled a model for %dx%d tiles", *size)
        return compiled


def compile_for_cpu(
    module: torch.nn.Module, *, threads: int, precision: str = "fp32", static_sizes: int = 2
) -> OpenVinoForward:
    """Convert a spandrel image module (3 channels in, 3 out, float32 weights on the CPU) and
    compile it for OpenVINO's CPU device with ``threads`` inference threads.

    ``precision``: fp32, bf16 (needs native bf16) or auto (bf16 where native). Raises
    ``UnsupportedModelError`` when OpenVINO is missing or cannot convert or compile the module.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidOptionError(f"threads must be a positive integer (got {threads!r})")
    if static_sizes < 0:
        raise InvalidOptionError(f"static_sizes must be at least 0 (got {static_sizes})")
    openvino = _openvino()
    resolved = resolve_precision(precision)
    parameter = next(module.parameters(), None)
    if parameter is not None and (
        parameter.device.type != "cpu" or parameter.dtype != torch.float32
    ):
        raise InvalidOptionError(
            f"convert a float32 module on the CPU (got {parameter.dtype} on {parameter.device})"
        )
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)  # leaves the caller's global RNG alone
    example = torch.rand(1, 3, _EXAMPLE_SIDE, _EXAMPLE_SIDE, generator=generator)
    try:
        with warnings.catch_warnings():
            # The TorchScript frontend traces the module; torch >= 2.10 marks tracing deprecated.
            warnings.filterwarnings("ignore", r".*torch\.jit\.trace", FutureWarning)
            model = openvino.convert_model(
                module.eval(),
                example_input=example,
                input=[openvino.PartialShape([-1, 3, -1, -1])],
            )
    except Exception as e:  # the frontend raises many types (OpConversionFailure, RuntimeError...)
        raise UnsupportedModelError(f"OpenVINO cannot convert this model: {e}") from e
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedModelError(
            f"OpenVINO: expected one input and one output, the model has "
            f"{len(model.inputs)} and {len(model.outputs)}"
        )
    convert_s = time.perf_counter() - started
    try:
        forward = OpenVinoForward(
            model,
            threads=threads,
            precision=resolved,
            static_sizes=static_sizes,
            convert_s=convert_s,
        )
    except Exception as e:
        raise UnsupportedModelError(f"OpenVINO cannot compile this model for the CPU: {e}") from e
    log.info(
        "OpenVINO: %s converted in %.1f s, compiled in %.1f s (%s, %d threads)",
        type(module).__name__,
        convert_s,
        forward.compile_s,
        resolved,
        threads,
    )
    return forward
