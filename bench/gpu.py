"""One table of what the GPU path does (issue 9): module-only vs served, eager vs compiled, seams, faces.

Run on a GPU machine: ``python bench/gpu.py --device cuda [--weights DIR] [--json PATH]`` (about
4 minutes on an H200, most of it ``torch.compile``; ``--no-compile`` saves that). Here:
``python bench/gpu.py --device cpu --quick`` runs every row on reduced networks of the same
architectures and a 128x72 input: a smoke test, none of its figures means anything.

It needs torch, numpy, OpenCV, Pillow and spandrel (scikit-image, if present, for the photo): no Ray,
no pydantic, no network. So it does not import ``models.pipeline``, ``models.imageio`` or
``models.face`` (each pulls pydantic through ``models.limits``/``superres_client.options``): the served path
is timed from a decoded ``Image`` through ``upscale_image`` to the uint8 result on the host (device
work + quantise + copy back, as the issue defines it); PNG encoding is timed apart, with Pillow at
level 1 as ``models.imageio.encode_image`` does; GFPGAN is called as ``make_restore_fn`` calls it.

Rows per model (x4plus, animevideov3), on a 1920x1080 photo:
* ``module eager``: one whole-frame forward of the prepared (fp16/bf16/fp32) channels_last tensor.
* ``served eager`` / ``served compiled``: ``upscale_image`` with the tile, tiles per pass and
  placement the replica's ``TilePolicy`` picks for this device and budget (``memory_budget`` as a
  replica computes it at start, or ``--budget-mb``). Compiled: ``compile_upscaler``, then only the
  shapes this frame uses are compiled before timing (a replica warms every batch bucket of every
  compiled tile at start: the note says how many).
* ``error policy-eager`` / ``policy-compiled`` / ``fixed-tile``: those results (the last served at
  ``--fixed-tile``, default 256) vs one whole-frame tile, uint8, in /255.
* ``check host-canvas``: the same tiles blended on the host (a replica does so when the canvas is
  over budget) vs on the device: they must agree.
* ``png encode``: the eager result, Pillow level 1, one thread; never inside an fps.
Then GFPGAN v1.4 faces/s at batch 1 and 8, fp32 and (CUDA only) fp16 autocast.

Columns: ``rate``: median of the timed runs after one untimed warm-up (frames/s, faces/s, or
seconds); ``TFLOP/s``: useful convolution FLOP (counted per input pixel on the network) per second,
and its share of the fp16 matmul rate measured at start; ``work``: input pixels computed per image
pixel (tile overlap, padding to fixed shapes); ``outside fwd``: share of the wall time not inside
forward passes (CUDA events around each ``forward``; host work, copies and the device-side
cut/blend/quantise); ``peak GiB``: ``torch.cuda.max_memory_allocated`` during the row.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image as PILImage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.compiled import batch_buckets, compile_upscaler
from models.face.restore import GFPGAN_V14_CONFIG
from models.image import Image
from models.inference import Placement, upscale_image
from models.loading import Upscaler, load_upscaler, memory_budget, pick_device, read_state_dict
from models.policy import TilePolicy
from models.registry import Registry
from models.tiling import ACTIVATION_SAFETY, TileConfig, window_starts

HEADER = (
    "row",
    "tile",
    "rate",
    "goal (before)",
    "TFLOP/s",
    "work",
    "outside fwd",
    "peak GiB",
    "err mean/max /255",
    "note",
)
GIB = 1 << 30
ERROR_GOAL = "<=0.1 mean on a photo"
# --quick builds a 64-pixel, 1/16-wide network of GFPGAN v1.4's architecture.
GFPGAN_V14: dict[str, Any] = dict(GFPGAN_V14_CONFIG)
GFPGAN_QUICK = {
    **GFPGAN_V14,
    "out_size": 64,
    "num_style_feat": 32,
    "channel_multiplier": 1,
    "num_mlp": 2,
    "narrow": 0.0625,
}


def _esrgan(filters: int, blocks: int) -> torch.nn.Module:
    from spandrel.architectures.ESRGAN import ESRGAN

    return ESRGAN(in_nc=3, out_nc=3, num_filters=filters, num_blocks=blocks, scale=4)


def _compact(features: int, convs: int) -> torch.nn.Module:
    from spandrel.architectures.Compact import Compact

    return Compact(num_feat=features, num_conv=convs, upscale=4)


@dataclass(frozen=True)
class Model:
    key: str  # the rows' prefix
    spec: str  # the registry's name
    build: Callable[[bool], torch.nn.Module]  # random weights of the real layout (quick: reduced)
    goal_fps: float  # served, on an H200
    goal: str
    module_before: str


MODELS = (
    Model(
        "x4plus",
        "realesrgan-x4plus",
        lambda quick: _esrgan(16, 2) if quick else _esrgan(64, 23),
        2.0,
        ">=2.0 fps, stretch 3.0 (0.48)",
        "(1.79 fps, 137 TFLOP/s)",
    ),
    Model(
        "animevideov3",
        "realesr-animevideov3",
        lambda quick: _compact(16, 4) if quick else _compact(64, 16),
        10.0,
        ">=10 fps (0.86)",
        "(54 fps)",
    ),
)
MODEL_ROWS = (
    "module eager",
    "served eager",
    "served compiled",
    "error policy-eager",
    "error policy-compiled",
    "error fixed-tile",
    "check host-canvas",
    "png encode",
)


@dataclass
class Row:
    name: str
    goal: str = ""
    tile: str = ""
    rate: float | None = None
    unit: str = "fps"
    verdict: str = ""
    tflops: float | None = None
    peak_share: float | None = None
    work: float | None = None
    outside: float | None = None
    peak_gib: float | None = None
    err_mean: float | None = None
    err_max: float | None = None
    note: str = ""
    status: str = "ok"  # or "skipped", "FAILED"

    def cells(self) -> list[str]:
        def opt(value: float | None, fmt: str) -> str:
            return "" if value is None else format(value, fmt)

        rate = "" if self.rate is None else f"{self.rate:.3g} {self.unit}"
        flops = opt(self.tflops, ".3g")
        if self.tflops is not None and self.peak_share is not None:
            flops += f" ({self.peak_share:.0%})"
        err = "" if self.err_mean is None else f"{self.err_mean:.3f} / {self.err_max:.0f}"
        note = self.note if self.status == "ok" else f"{self.status}: {self.note}"
        goal = f"{self.goal} {self.verdict}".strip()
        return [
            self.name,
            self.tile,
            rate,
            goal,
            flops,
            opt(self.work, ".2f"),
            opt(self.outside, ".0%"),
            opt(self.peak_gib, ".1f"),
            err,
            note,
        ]


# --- environment and inputs ------------------------------------------------------------------


def process_seconds(fallback_start: float) -> float:
    """Seconds since this process started, imports included (Linux); else since ``main`` began."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        elapsed = float(Path("/proc/uptime").read_text().split()[0]) - started
        if 0 < elapsed < 86400:  # a sandbox's /proc may not hold what Linux's does
            return elapsed
    return time.perf_counter() - fallback_start


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    import spandrel

    cuda = device.type == "cuda"
    env: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "spandrel": getattr(spandrel, "__version__", "?"),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        free, total = torch.cuda.mem_get_info(device)
        env.update(gpu_free_gib=round(free / GIB, 1), gpu_total_gib=round(total / GIB, 1))
    return env


def matmul_tflops(device: torch.device, size: int = 8192, runs: int = 40) -> float:
    """The fp16 matmul rate of this chip on random operands: the TFLOP/s column's ceiling."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.float16) for _ in range(2))
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(runs):
        a @ b
    end.record()
    end.synchronize()
    return 2 * size**3 * runs / (start.elapsed_time(end) / 1e3) / 1e12


def fit(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop to width:height, then resize to exactly width x height."""
    h, w = pixels.shape[:2]
    cw, ch = (
        (round(h * width / height), h) if w * height > h * width else (w, round(w * height / width))
    )
    crop = pixels[(h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]
    shrink = cw * ch > width * height
    mode = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (width, height), interpolation=mode))


def synthetic(width: int, height: int) -> np.ndarray:
    """A deterministic textured image: colour blocks with hard edges, stripes, a ramp, fine noise."""
    rng = np.random.default_rng(0)
    blocks = cv2.resize(rng.random((9, 16, 3)), (width, height), interpolation=cv2.INTER_NEAREST)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = (0.5 + 0.5 * np.sin(xx * 0.37 + yy * 0.11) * np.cos(yy * 0.23))[..., None]
    noise = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 1.2)
    pixels = 0.45 * blocks + 0.2 * stripes + 0.25 * noise + 0.1 * (xx / width)[..., None]
    return np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8)


def test_image(width: int, height: int, path: Path | None) -> tuple[np.ndarray, str, bool]:
    """RGB uint8 pixels, what they are, and whether they are a photo."""
    if path is not None:
        pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if pixels is None:
            raise SystemExit(f"cannot read {path}")
        return fit(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), width, height), str(path), True
    try:
        import skimage.data
    except ImportError:
        return synthetic(width, height), "synthetic texture (no scikit-image)", False
    names = ("astronaut", "coffee", "chelsea", "rocket")
    cells = [fit(getattr(skimage.data, name)(), width // 2, height // 2) for name in names]
    mosaic = np.concatenate([np.concatenate(cells[:2], 1), np.concatenate(cells[2:], 1)], 0)
    return fit(mosaic, width, height), f"photo: skimage {'/'.join(names)}, 2x2 mosaic", True


# --- models ------------------------------------------------------------------------------------


def find_weights(directory: Path | None, filename: str) -> Path | None:
    """``<stem>.pth``, ``.safetensors``, ``.ncnn.safetensors`` or ``.fp16.safetensors``."""
    stem = Path(filename).stem
    for suffix in (".pth", ".safetensors", ".ncnn.safetensors", ".fp16.safetensors"):
        if directory is not None and (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    return None


def load_model(
    model: Model, args: argparse.Namespace, device: torch.device, scratch: Path
) -> tuple[Upscaler, str]:
    """The served ``Upscaler`` from ``load_upscaler``: real weights from ``--weights``, else random
    weights of the real layout, written to a file first so the served loading path runs anyway."""
    spec = Registry().get(model.spec)
    path = find_weights(args.weights, spec.weights.filename)
    origin = f"weights {path.name}" if path else "random weights"
    if path is None:
        from safetensors.torch import save_file

        torch.manual_seed(0)
        state = model.build(args.quick).state_dict()
        path = scratch / f"{model.key}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        origin += ", reduced network" if args.quick else ""
    return load_upscaler(spec, path, device=device, precision=args.precision), origin


def flop_per_pixel(module: torch.nn.Module, device: torch.device, probe: int = 32) -> float:
    """Convolution FLOP (2 per multiply-add) per input pixel, counted on a probe."""
    total = 0

    def count(conv: torch.nn.Module, _: object, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(conv, torch.nn.Conv2d)
        kh, kw = conv.kernel_size
        total += 2 * conv.in_channels // conv.groups * kh * kw * out.numel()

    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [conv.register_forward_hook(count) for conv in convs]
    dtype = next(module.parameters()).dtype
    try:
        with torch.inference_mode():
            module(torch.rand(1, 3, probe, probe, device=device, dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return total / probe**2


def write_fp16(source: Path, target: Path) -> None:
    """``--write-fp16``: half-size safetensors copies of the upscalers' weights, for the device
    tool's 64 MiB carry (served fp16 casts the weights to fp16 anyway)."""
    import spandrel
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        filename = Registry().get(model.spec).weights.filename
        path = find_weights(source, filename)
        if path is None:
            print(f"{model.key}: no weights in {source}")
            continue
        state = spandrel.canonicalize_state_dict(read_state_dict(path))
        half = {
            k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()
        }
        out = target / f"{Path(filename).stem}.fp16.safetensors"
        save_file(half, str(out))
        print(f"{path} -> {out} ({out.stat().st_size / 1e6:.1f} MB)")


# --- timing ------------------------------------------------------------------------------------


class Clock:
    """A forward that counts computed pixels and time inside forward passes: CUDA events on the
    GPU, the host clock on the CPU (where a forward is synchronous)."""

    def __init__(self, net: Upscaler) -> None:
        self.net = net
        self.reset()

    def reset(self) -> None:
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.host_s = 0.0
        self.computed = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        count = batch.shape[0]
        if self.net.fixed_shapes:  # padded to a power of two
            count = 1 << (count - 1).bit_length()
        self.computed += count * batch.shape[-2] * batch.shape[-1]
        if self.net.device.type != "cuda":
            started = time.perf_counter()
            out = self.net.forward(batch)
            self.host_s += time.perf_counter() - started
            return out
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = self.net.forward(batch)
        end.record()
        self.events.append((start, end))
        return out

    def forward_seconds(self) -> float:
        if self.events:
            self.events[-1][1].synchronize()
        return self.host_s + sum(s.elapsed_time(e) for s, e in self.events) / 1e3


@dataclass
class Timing:
    median: float  # seconds per run
    total: float  # seconds over the timed runs
    runs: int
    result: Any  # of the last run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    run: Callable[[], Any],
    args: argparse.Namespace,
    device: torch.device,
    clock: Clock | None = None,
) -> Timing:
    """``run`` once untimed, then at least ``--repeats`` times and ``--min-seconds``; ``clock``
    counts the timed runs only."""
    result = run()
    sync(device)
    if clock is not None:
        clock.reset()
    times: list[float] = []
    while len(times) < args.repeats or (sum(times) < args.min_seconds and len(times) < 50):
        started = time.perf_counter()
        result = run()
        sync(device)
        times.append(time.perf_counter() - started)
    return Timing(statistics.median(times), sum(times), len(times), result)


def errors(a: Image, b: Image) -> tuple[float, float]:
    diff = np.abs(a.color.astype(np.int16) - b.color.astype(np.int16))
    return float(diff.mean()), float(diff.max())


def tile_text(tile: TileConfig, batch: int) -> str:
    return f"{tile.tile}/{tile.pad}/{tile.blend} x{batch}"


# --- rows --------------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    image: Image
    photo: bool
    budget: int  # bytes: the replica's default memory budget here, taken before any model loads
    peak_tflops: float | None
    rows: list[Row] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # one line per model: what ran

    def verdict(self, met: bool) -> str:
        """The goals are the issue's, for an H200: judged on a full CUDA run only."""
        if self.device.type != "cuda" or self.args.quick:
            return ""
        return "met" if met else "MISSED"

    def run(self, row: Row, body: Callable[[Row], None]) -> None:
        """One row; a failure is kept in the row (traceback on stderr) and the run goes on."""
        self.rows.append(row)
        print(f"... {row.name}", file=sys.stderr, flush=True)
        gc.collect()
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            body(row)
        except Exception as e:  # one broken row must not cost the rest of a leased GPU
            traceback.print_exc()
            row.status, row.note = "FAILED", f"{type(e).__name__}: {str(e)[:160]}"
        if cuda:
            row.peak_gib = torch.cuda.max_memory_allocated(self.device) / GIB

    def skip(self, row: Row, reason: str, status: str = "skipped") -> None:
        row.status, row.note = status, reason
        self.rows.append(row)


class ModelBench:
    """The rows of one upscaler on the context's image."""

    def __init__(self, ctx: Context, model: Model, net: Upscaler, origin: str) -> None:
        self.ctx, self.model, self.net, self.origin = ctx, model, net, origin
        self.args, self.device, self.image = ctx.args, ctx.device, ctx.image
        self.flop = flop_per_pixel(net.module, ctx.device)
        if self.args.quick:  # a budget whose tile is 64: the whole 128x72 frame does not fit
            budget = 2 * int(1.5 * 64 * 64 * max(1, net.bytes_per_pixel) * ACTIVATION_SAFETY)
        else:
            budget = self.args.budget_mb << 20 if self.args.budget_mb else ctx.budget
        self.policy = TilePolicy(None, budget, self.args.max_batch)
        self.outputs: dict[str, Image] = {}
        self.tag = "" if origin.startswith("weights") else " (random weights)"
        self.tag += "" if ctx.photo else " (synthetic image)"

    def name(self, row: str) -> str:
        return f"{self.model.key} {row}"

    def rows(self) -> None:
        ctx, args, names = self.ctx, self.args, [self.name(r) for r in MODEL_ROWS]
        summary = (
            f"{self.model.key}: {self.net.architecture} x{self.net.scale}, {self.net.precision},"
            f" {self.origin}, {self.flop / 1e6:.2f} MFLOP per input pixel,"
            f" budget {self.policy.budget_bytes >> 20} MiB"
        )
        ctx.models.append(summary)
        print(summary, file=sys.stderr)
        ctx.run(Row(names[0], goal=self.model.module_before), self.module_only)
        ctx.run(Row(names[1], goal=self.model.goal), self.eager)
        compiled = args.compile if args.compile is not None else self.device.type == "cuda"
        if compiled:
            ctx.run(Row(names[2], goal=self.model.goal), self.compiled)
        else:
            why = "--no-compile" if args.compile is False else "off on a CPU (~1 min): --compile"
            ctx.skip(Row(names[2]), why)
        ctx.run(Row(names[3], goal=ERROR_GOAL), self.error("eager"))
        if compiled:
            ctx.run(Row(names[4], goal=ERROR_GOAL), self.error("compiled"))
        else:
            ctx.skip(Row(names[4]), "no compiled run")
        ctx.run(Row(names[5], goal=ERROR_GOAL), self.fixed)
        ctx.run(Row(names[6], goal="equal (max <=1)"), self.host_canvas)
        ctx.run(Row(names[7]), self.encode)

    def rate(self, row: Row, seconds: float) -> None:
        row.rate = 1 / seconds
        row.tflops = self.flop * self.image.pixels / seconds / 1e12
        if self.ctx.peak_tflops:
            row.peak_share = row.tflops / self.ctx.peak_tflops

    def module_only(self, row: Row) -> None:
        net, image = self.net, self.image
        x = torch.from_numpy(image.color).to(self.device).permute(2, 0, 1)[None].float() / 255
        pad_h, pad_w = (
            max(n, net.minimum) + -max(n, net.minimum) % net.multiple_of - n
            for n in (image.height, image.width)
        )
        if pad_h or pad_w:
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        x = x.contiguous(memory_format=torch.channels_last)
        x = x.half() if net.precision == "fp16" else x
        bf16 = net.precision == "bf16"

        def run() -> None:
            with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16, bf16):
                net.module(x)

        self.rate(row, measure(run, self.args, self.device).median)
        row.tile, row.work = f"{image.width}x{image.height} x1", 1.0
        row.note = f"{net.precision} channels_last, {self.origin}"

    def served(self, row: Row, net: Upscaler, tile: TileConfig, key: str) -> None:
        """``upscale_image`` as a replica runs it: tiles per pass and placement from the policy."""
        image = self.image
        side = (
            (tile.tile,) * 2
            if net.fixed_shapes
            else (min(tile.tile, image.height), min(tile.tile, image.width))
        )
        batch = self.policy.tiles_per_pass(net, (3, *side))
        placement = self.policy.placement(net)
        clock = Clock(net)

        def run() -> Image:
            return upscale_image(
                image, clock, scale=net.scale, tile=tile, batch_size=batch, placement=placement
            )

        timing = measure(run, self.args, self.device, clock)
        self.outputs[key] = timing.result
        self.rate(row, timing.median)
        row.tile = tile_text(tile, batch)
        row.work = clock.computed / timing.runs / image.pixels
        row.outside = max(0.0, 1 - clock.forward_seconds() / timing.total)
        canvas = placement.canvas_device(image.height, image.width, net.scale)
        row.note = f"budget {self.policy.budget_bytes >> 20} MiB, canvas on {canvas.type}"

    def judge_fps(self, row: Row) -> None:
        fps = row.rate or 0.0
        row.verdict = self.ctx.verdict(fps >= self.model.goal_fps)
        if row.verdict and self.model.key == "x4plus":
            row.verdict += ", stretch " + ("met" if fps >= 3.0 else "missed")

    def eager(self, row: Row) -> None:
        self.served(
            row, self.net, self.policy.tile(self.net, self.image.height, self.image.width), "eager"
        )
        self.judge_fps(row)

    def compiled(self, row: Row) -> None:
        net, image, policy = compile_upscaler(self.net), self.image, self.policy
        tile = policy.tile(net, image.height, image.width)
        batch = policy.tiles_per_pass(net, (3, tile.tile, tile.tile))
        rows, cols = (
            window_starts(max(n, tile.tile), tile.tile, tile.stride)
            for n in (image.height, image.width)
        )
        count = len(rows) * len(cols)
        shapes = {1 << (min(batch, count - i) - 1).bit_length() for i in range(0, count, batch)}
        started = time.perf_counter()
        for size in sorted(shapes):  # compile the shapes this frame uses, before timing
            net.forward(torch.rand(size, 3, tile.tile, tile.tile, device=self.device))
        sync(self.device)
        warm = time.perf_counter() - started
        self.served(row, net, tile, "compiled")
        self.judge_fps(row)
        replica = len(policy.compiled_tiles(net)) * len(batch_buckets(policy.max_batch))
        row.note += (
            f"; compile+warm {warm:.0f} s for {len(shapes)} shape(s),"
            f" a replica warms {replica} at start"
        )

    def untiled(self) -> Image:
        """One whole-frame tile (the eager result itself when the policy ran the whole frame)."""
        image, whole = self.image, TileConfig.for_tile(max(self.image.height, self.image.width))
        if "untiled" not in self.outputs:
            if self.policy.tile(self.net, image.height, image.width) == whole:
                self.outputs["untiled"] = self.outputs["eager"]
            else:
                self.outputs["untiled"] = upscale_image(
                    image,
                    self.net.forward,
                    scale=self.net.scale,
                    tile=whole,
                    batch_size=1,
                    placement=Placement(self.device),
                )
        return self.outputs["untiled"]

    def judge_error(self, row: Row, key: str) -> None:
        row.err_mean, row.err_max = errors(self.outputs[key], self.untiled())
        row.verdict = self.ctx.verdict(row.err_mean <= 0.1) if self.ctx.photo else ""
        if self.outputs[key] is self.outputs["untiled"]:
            row.note = "the policy ran the whole frame: no seams"
        else:
            row.note = "vs one whole-frame tile" + (", compiled numerics too" * (key == "compiled"))
        row.note += self.tag

    def error(self, key: str) -> Callable[[Row], None]:
        def body(row: Row) -> None:
            if key not in self.outputs:
                row.status, row.note = "skipped", f"no {key} result"
            else:
                self.judge_error(row, key)

        return body

    def fixed(self, row: Row) -> None:
        self.served(row, self.net, TileConfig.for_tile(self.args.fixed_tile), "fixed")
        note = row.note
        self.judge_error(row, "fixed")
        row.note = f"served eager at this tile, {note}{self.tag}"

    def host_canvas(self, row: Row) -> None:
        side, tile = (128, 48) if self.args.quick else (256, 96)
        crop = Image(np.ascontiguousarray(self.image.color[:side, :side]))
        config = TileConfig.for_tile(tile)
        results = [
            upscale_image(
                crop,
                self.net.forward,
                scale=self.net.scale,
                tile=config,
                batch_size=4,
                placement=Placement(self.device, budget),
            )
            for budget in (None, 0)  # canvas on the device, then on the host
        ]
        row.err_mean, row.err_max = errors(results[1], results[0])
        row.tile = tile_text(config, 4)
        row.verdict = self.ctx.verdict(row.err_max <= 1)
        row.note = f"{crop.width}x{crop.height} crop: canvas on the host vs on {self.device.type}"

    def encode(self, row: Row) -> None:
        if "eager" not in self.outputs:
            row.status, row.note = "skipped", "no eager result"
            return
        result, buffer = self.outputs["eager"], io.BytesIO()
        started = time.perf_counter()
        PILImage.fromarray(result.color).save(buffer, "PNG", compress_level=1)
        seconds = time.perf_counter() - started
        row.rate, row.unit, row.tile = seconds, "s", f"{result.width}x{result.height}"
        row.note = f"Pillow level 1, one thread, {buffer.tell() / 1e6:.1f} MB"
        eager = next((r.rate for r in self.ctx.rows if r.name == self.name("served eager")), None)
        if eager:
            row.note += f"; served eager + encode: {1 / (1 / eager + seconds):.3g} fps"


def bench_model(ctx: Context, model: Model, scratch: Path) -> None:
    try:
        net, origin = load_model(model, ctx.args, ctx.device, scratch)
        bench = ModelBench(ctx, model, net, origin)
    except Exception as e:
        traceback.print_exc()
        for row in MODEL_ROWS:
            ctx.skip(Row(f"{model.key} {row}"), f"load: {type(e).__name__}: {e}", "FAILED")
        return
    bench.rows()


def face_names() -> list[str]:
    return [
        f"gfpgan {precision} batch {batch}" for precision in ("fp32", "fp16") for batch in (1, 8)
    ]


def bench_faces(ctx: Context) -> None:
    """GFPGAN v1.4 faces/s, called as ``models.face.restore.make_restore_fn`` calls it."""
    args, device = ctx.args, ctx.device
    try:
        import spandrel
        from spandrel.architectures.GFPGAN import GFPGAN

        path = None if args.quick else find_weights(args.weights, "GFPGANv1.4.pth")
        if path is not None:
            descriptor = spandrel.ModelLoader().load_from_state_dict(read_state_dict(path))
            if descriptor.architecture.id != "GFPGAN":
                raise ValueError(f"{path.name} is a {descriptor.architecture.name} model")
            module, origin = descriptor.model, f"weights {path.name}"
        else:
            torch.manual_seed(0)
            module = GFPGAN(**(GFPGAN_QUICK if args.quick else GFPGAN_V14))
            origin = "random weights" + (", reduced network" if args.quick else "")
        module = module.to(device).float().eval().requires_grad_(False)
    except Exception as e:
        traceback.print_exc()
        for name in face_names():
            ctx.skip(Row(name), f"load: {type(e).__name__}: {e}", "FAILED")
        return
    size = (GFPGAN_QUICK if args.quick else GFPGAN_V14)["out_size"]
    before = {"gfpgan fp32 batch 1": "(75 faces/s)", "gfpgan fp32 batch 8": "(111 faces/s)"}
    for name in face_names():
        precision, batch = name.split()[1], int(name.split()[-1])
        if precision == "fp16" and device.type != "cuda":
            ctx.skip(Row(name), "fp16 autocast needs CUDA")
            continue
        crops = np.random.default_rng(batch).random((batch, 3, size, size), dtype=np.float32)

        def restore(crops: np.ndarray = crops, half: bool = precision == "fp16") -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cuda", torch.float16, half):
                x = torch.from_numpy(crops).to(device=device, dtype=torch.float32) * 2 - 1
                y = module(x, return_rgb=False, randomize_noise=False)[0]
                return ((y + 1) / 2).clamp_(0, 1).float().cpu().numpy()

        def body(row: Row, restore: Callable[[], np.ndarray] = restore, batch: int = batch) -> None:
            row.rate = batch / measure(restore, args, device).median
            row.unit, row.tile = "faces/s", f"{batch}x{size}px"
            row.note = origin + (", fp16 autocast" if "fp16" in row.name else "")

        ctx.run(Row(name, goal=before.get(name, "(fp32 +8%)")), body)


# --- output ------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = [list(HEADER), *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = [
        " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    text.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    add = p.add_argument
    add("--device", help="cuda, cuda:1 or cpu (default: cuda when there is one)")
    add("--quick", action="store_true", help="smoke test: 128x72, reduced networks, 1 repeat")
    add("--weights", type=Path, help="folder of real weights, named as models/registry.py does")
    add("--image", type=Path, help="a photo to use instead (centre-cropped, resized to 1080p)")
    add("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    add("--budget-mb", type=int, help="the replica's memory budget (default: as a replica's)")
    add("--max-batch", type=int, default=4, help="the replica's max_batch_size (default 4)")
    add("--fixed-tile", type=int, help="the fixed-tile row's tile (default 256; quick 48)")
    add("--repeats", type=int, help="timed runs per row, at least (default 3; quick 1)")
    add("--min-seconds", type=float, help="timed seconds per row, at least (default 1.5; quick 0)")
    add("--compile", action="store_true", default=None, help="compiled rows (default: CUDA only)")
    add("--no-compile", dest="compile", action="store_false")
    add("--json", type=Path, help="also write every figure to this file")
    add(
        "--write-fp16", type=Path, metavar="DIR", help="write fp16 copies of --weights to DIR, exit"
    )
    args = p.parse_args(argv)
    args.size = (128, 72) if args.quick else (1920, 1080)
    args.fixed_tile = args.fixed_tile or (48 if args.quick else 256)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.min_seconds is None:
        args.min_seconds = 0.0 if args.quick else 1.5
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.write_fp16:
        if args.weights is None:
            raise SystemExit("--write-fp16 needs --weights")
        write_fp16(args.weights, args.write_fp16)
        return 0
    device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: use --device cpu")
    env = environment(device)
    budget = memory_budget(device)  # as a replica computes it, before any model is loaded
    peak = matmul_tflops(device) if device.type == "cuda" else None
    width, height = args.size
    pixels, source, photo = test_image(width, height, args.image)
    ctx = Context(args, device, Image(pixels), photo, budget, peak)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        for model in MODELS:
            bench_model(ctx, model, Path(scratch))
    bench_faces(ctx)
    total = process_seconds(started)

    quick = " --quick: a smoke test at 128x72; no figure of it means anything" * args.quick
    print(f"\nbench/gpu.py{quick}")
    print(
        f"device: {env['device_name']} ({device}); torch {env['torch']}, CUDA {env['cuda']},"
        f" cuDNN {env['cudnn']}, spandrel {env['spandrel']}, Python {env['python']}"
    )
    print(f"CPU: {env['cpu']}, {env['cpu_count']} cores, torch threads {env['torch_threads']}")
    print(
        f"input: {width}x{height}, {source}; replica budget {budget >> 20} MiB"
        + (f"; fp16 matmul {peak:.0f} TFLOP/s = 100% below" if peak else "")
    )
    for line in ctx.models:
        print(line)
    print("goals: the issue's, for an H200, judged on a full CUDA run only\n")
    print(table(ctx.rows))
    failed = [row.name for row in ctx.rows if row.status == "FAILED"]
    print(f"\nwhole run: {total:.1f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json:
        report = {
            "env": env,
            "input": source,
            "budget_bytes": budget,
            "total_s": total,
            "fp16_matmul_tflops": peak,
            "rows": [vars(row) for row in ctx.rows],
        }
        args.json.write_text(json.dumps(report, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
