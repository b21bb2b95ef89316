"""CPU throughput of our upscalers beside the ncnn CPU runtime: same images, same thread count.

    .venv/bin/python bench/throughput.py                     # ~5 minutes on 2 quiet cores
    .venv/bin/python bench/throughput.py --sizes 128 --repeats 2
    .venv/bin/python bench/throughput.py --bf16 force --compile   # the slow experiments too

For Real-ESRGAN x4plus (RRDBNet) and animevideov3 (SRVGGNetCompact) at 128² and 256² (crops of
``skimage.data.astronaut()``) it prints, per variant, the median and best wall time of a forward
pass, LR-megapixels/s (input pixels), the throughput ratio ours/ncnn (> 1: we are faster) and the
largest difference from our plain fp32 eager output, in [0, 1] units. "ours (auto)" is the path the
service runs: ``load_upscaler(..., precision="auto").forward``. Weights are the converted ncnn files
(``python -m models --cache-dir .cache/weights fetch NAME`` makes them), so both runtimes run the
very same network.

Each variant runs once to warm up, then ``--repeats`` rounds run every variant once in turn: load
from other processes then hits all variants alike. On a shared machine read the ratios, not the
absolute times. torch and ncnn get the same ``--threads`` (default ``os.cpu_count()``).
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
from models.loading import Upscaler, cpu_has_fast_bf16, load_upscaler
from models.ncnn_import import package_model_files
from models.registry import ModelSpec, Registry
from models.weights import WeightsStore

MODELS = {"x4plus": "realesrgan-x4plus", "animevideov3": "realesr-animevideov3"}
REPO = Path(__file__).resolve().parent.parent
BATCH = 4  # tiles per forward pass in the batched variant

Run = Callable[[], np.ndarray]  # one forward pass; returns N x 3 x H x W float32


@dataclass
class Variant:
    name: str
    run: Run
    images: int = 1  # images per run
    peer: bool = False  # an ncnn runtime
    times: list[float] = field(default_factory=list)
    error: float = float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def mp_per_s(self, pixels: int) -> float:
        return self.images * pixels / 1e6 / self.median


def crop(size: int, offset: int = 0) -> np.ndarray:
    """A size x size x 3 float32 crop of the astronaut photo (512²), shifted by ``offset``."""
    image = skimage.data.astronaut()
    top, left = min(offset, 512 - size), min(100 + offset, 512 - size)
    return image[top : top + size, left : left + size].astype(np.float32) / 255


def nchw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


def ncnn_run(runtime: NcnnUpscaler, image: np.ndarray) -> Run:
    return lambda: np.clip(nchw(runtime.run(image)), 0, 1)


def module_run(upscaler: Upscaler, batch: np.ndarray, *, channels_last: bool = True) -> Run:
    """The bare module on a prepared tensor: no numpy round trip, no padding."""
    x = torch.from_numpy(batch)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    module = (
        upscaler.module
        if channels_last
        else upscaler.module.to(memory_format=torch.contiguous_format)
    )

    def run() -> np.ndarray:
        with torch.inference_mode():
            return module(x).float().clamp_(0, 1).numpy()

    return run


def _swap_nnpack(m: torch.nn.Module) -> None:
    torch._nnpack_available()

    class NnpackConv(torch.nn.Module):
        def __init__(self, conv: torch.nn.Conv2d) -> None:
            super().__init__()
            self.weight = conv.weight.detach().contiguous()
            self.bias = conv.bias.detach().contiguous()
            self.padding = list(conv.padding)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch._nnpack_spatial_convolution(
                x.contiguous(), self.weight, self.bias, self.padding
            )

    for n, c in m.named_children():
        if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3) and c.padding == (1, 1):
            setattr(m, n, NnpackConv(c))
        else:
            _swap_nnpack(c)


def variants_for(
    spec: ModelSpec, weights: Path, image: np.ndarray, args: argparse.Namespace
) -> tuple[list[Variant], list[str]]:
    """The variants to time, and a line for each one skipped (with why)."""
    source = spec.weights.ncnn
    if source is None:
        raise SystemExit(f"{spec.name} has no ncnn files to compare with")
    param, bin_path = package_model_files(source)
    batch, size = nchw(image), image.shape[0]
    served = load_upscaler(spec, weights, precision="auto")
    eager = load_upscaler(spec, weights, precision="fp32")
    out: list[Variant] = [
        Variant(
            "ncnn default options",
            ncnn_run(NcnnUpscaler(param, bin_path, fp16=True, threads=args.threads), image),
            peer=True,
        ),
        Variant(
            "ncnn fp32",
            ncnn_run(NcnnUpscaler(param, bin_path, fp16=False, threads=args.threads), image),
            peer=True,
        ),
        Variant(f"ours (auto: {served.precision})", lambda: served.forward_numpy(batch)),
        Variant("torch fp32 eager, channels_last", module_run(eager, batch)),
        Variant(
            "torch fp32 eager, NCHW",
            module_run(load_upscaler(spec, weights, precision="fp32"), batch, channels_last=False),
        ),
    ]
    skipped: list[str] = []
    if args.nnpack:
        nn_up = load_upscaler(spec, weights, precision="fp32")
        _swap_nnpack(nn_up.module)
        out.append(Variant("EXP nnpack NCHW", module_run(nn_up, batch, channels_last=False)))
    stack = np.concatenate([nchw(crop(size, 37 * i)) for i in range(BATCH)])
    out.append(
        Variant(
            f"ours (auto), {BATCH} tiles per forward",
            lambda: served.forward_numpy(stack),
            images=BATCH,
        )
    )
    if size <= 128 and (args.bf16 == "force" or (args.bf16 == "auto" and cpu_has_fast_bf16())):
        bf16 = load_upscaler(spec, weights, precision="bf16")
        out.append(Variant("torch bf16 autocast, channels_last", lambda: bf16.forward_numpy(batch)))
    elif size <= 128:
        skipped.append(
            "torch bf16 autocast: skipped, this CPU has no native bf16 (oneDNN emulates it, "
            "~40x slower here); --bf16 force runs it"
        )
    return out, skipped


def time_variants(variants: list[Variant], reference: np.ndarray, repeats: int) -> None:
    for variant in variants:  # warm-up, and the output to compare
        output = variant.run()
        variant.error = float(np.abs(output[:1] - reference).max())
    for _ in range(repeats):
        for variant in variants:
            started = time.perf_counter()
            variant.run()
            variant.times.append(time.perf_counter() - started)


def report(model: str, size: int, variants: list[Variant], skipped: list[str]) -> list[str]:
    pixels = size * size
    peers = {v.name: v.mp_per_s(pixels) for v in variants if v.peer}
    default, fp32 = peers["ncnn default options"], peers["ncnn fp32"]
    print(f"\n{model} {size}x{size} (LR {pixels / 1e6:.4f} MP per image)")
    print(
        f"  {'variant':40s} {'median s':>9s} {'best s':>8s} {'LR-MP/s':>8s} {'/ncnn def':>9s} {'/ncnn fp32':>10s} {'max|Δ|':>8s}"
    )
    for v in variants:
        mps = v.mp_per_s(pixels)
        per = v.median / v.images
        print(
            f"  {v.name:40s} {per:9.3f} {min(v.times) / v.images:8.3f} {mps:8.4f} "
            f"{mps / default:9.2f} {mps / fp32:10.2f} {v.error:8.1e}"
        )
    for line in skipped:
        print(f"  {line}")
    ours = next(v for v in variants if v.name.startswith("ours (auto:"))
    best = max(default, fp32)
    return [
        f"{model} {size}²: ours {ours.mp_per_s(pixels) / best:.2f}x the faster ncnn "
        f"({ours.mp_per_s(pixels):.4f} vs {best:.4f} LR-MP/s)"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "weights")
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated: x4plus,animevideov3"
    )
    parser.add_argument("--sizes", default="128,256", help="comma-separated crop sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--bf16",
        choices=("auto", "force", "skip"),
        default="auto",
        help="bf16 autocast at 128²: auto runs it only on CPUs with native bf16",
    )
    parser.add_argument("--nnpack", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16: {cpu_has_fast_bf16()}; threads: {args.threads} (torch and ncnn), "
        f"os.cpu_count() = {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    store = WeightsStore(args.cache_dir, allow_download=False)
    registry = Registry()
    summary: list[str] = []
    started = time.perf_counter()
    for key in args.models.split(","):
        spec = registry.get(MODELS.get(key, key))
        weights = store.fetch(spec.weights).path
        for size in (int(s) for s in args.sizes.split(",")):
            image = crop(size)
            variants, skipped = variants_for(spec, weights, image, args)
            reference = variants[3].run()
            time_variants(variants, reference, args.repeats)
            summary += report(key, size, variants, skipped)
    print("\nsummary (throughput ratio; goal on x4plus: >= 1.5):")
    for line in summary:
        print(f"  {line}")
    print(f"total {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
