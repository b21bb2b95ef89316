"""End-to-end throughput and latency through HTTP beside in-process calls; batching on vs off.

    .venv/bin/python bench/serve_e2e.py                 # a few minutes on 2 busy cores
    .venv/bin/python bench/serve_e2e.py --quick         # fewer requests
    .venv/bin/python bench/serve_e2e.py --model tiny    # a tiny random network: overhead only

One run starts its own local S3 (SeaweedFS) and Ray, deploys the app (``serve_app.app.build``) and
measures, on the same images, model and tiling:

* concurrency 1: each image decoded, upscaled and encoded in this process and sent through
  ``POST /v1/upscale``, side by side, so both see the same load: the Serve (and S3) overhead;
* ``POST /v1/upscale`` at the higher concurrencies (closed loop: each client sends its next request
  when its last one returns), with tile batching on;
* batching off (``max_batch_size`` 1) and on at the highest concurrency, in alternating runs. The
  user_config changes through ``serve.run`` and the replica reconfigures in place.

Read the ratios: the CPU is shared with whatever else runs, so absolute figures move between runs.
To compare like with like, the replica gets as many torch threads as this process (``--threads``)
and Ray's workers run at this process's niceness. Tiles per forward pass come from ``GET /v1/stats``,
whose counters are cumulative per replica: each run reports the difference across it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stack import RUN_DIR, BenchError, post_png, progress, run_bench, services, wait_ready

REAL_MODEL = "realesr-animevideov3"
TINY_MODEL = "tiny-compact-x4"
READY_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Plan:
    model: str
    images: int
    image_size: int
    requests: int  # per concurrency level
    concurrency: tuple[int, ...]
    batch_pairs: int  # off/on runs at the highest concurrency
    max_batch_size: int
    batch_wait_s: float
    tile: int
    tile_pad: int
    tile_blend: int
    threads: int

    def upscaler_config(self, max_batch_size: int) -> dict[str, Any]:
        return {
            "max_batch_size": max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_s,
            "tile": self.tile,
            "tile_pad": self.tile_pad,
            "tile_blend": self.tile_blend,
        }


@dataclass
class Run:
    """Latencies of one measured run, with what the replica reported about it."""

    label: str
    concurrency: int
    latencies: list[float]
    wall_s: float
    pixels: int  # input pixels over all requests
    batches: Counter[int] = field(default_factory=Counter)  # tiles per forward -> passes
    replica_s: dict[str, list[float]] = field(default_factory=dict)  # timings of the responses

    @property
    def images_per_s(self) -> float:
        return len(self.latencies) / self.wall_s

    @property
    def mp_per_s(self) -> float:
        return self.pixels / 1e6 / self.wall_s

    @property
    def mean(self) -> float:
        return statistics.mean(self.latencies)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q))

    @property
    def tiles_per_forward(self) -> float | None:
        passes = sum(self.batches.values())
        return sum(k * n for k, n in self.batches.items()) / passes if passes else None

    def merged(self, other: Run) -> Run:
        timings = {
            k: self.replica_s.get(k, []) + other.replica_s.get(k, []) for k in self.replica_s
        }
        return Run(
            self.label,
            self.concurrency,
            self.latencies + other.latencies,
            self.wall_s + other.wall_s,
            self.pixels + other.pixels,
            self.batches + other.batches,
            timings,
        )


# --- inputs -----------------------------------------------------------------------------------


def make_images(count: int, size: int, seed: int = 0) -> list[bytes]:
    """``count`` different ``size``² PNG crops of three scikit-image photos."""
    from PIL import Image as PILImage
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y = int(rng.integers(0, photo.shape[0] - size + 1))
        x = int(rng.integers(0, photo.shape[1] - size + 1))
        buffer = io.BytesIO()
        PILImage.fromarray(photo[y : y + size, x : x + size]).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def tiny_model(folder: Path) -> Any:
    """A 4-conv random SRVGGNetCompact ×4, as a custom model entry (sha256-pinned)."""
    import hashlib

    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    net = Compact(num_feat=8, num_conv=4, upscale=4)
    path = folder / f"{TINY_MODEL}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    from deployments.config import CustomModel

    return CustomModel(name=TINY_MODEL, path=str(path), sha256=digest, scale=4)


# --- the stack --------------------------------------------------------------------------------


@dataclass
class Stack:
    url: str
    settings: Any  # models.settings.Settings
    args: Any  # serve_app.app.AppArgs


@contextlib.contextmanager
def running_stack(plan: Plan) -> Iterator[Stack]:
    """Local S3 + Ray + the app with batching on; everything is torn down on the way out."""
    with services("bench", RUN_DIR / "bench", "serve-e2e-") as base:
        from serve_app.app import AppArgs

        custom = [tiny_model(base.work)] if plan.model == TINY_MODEL else []
        args = AppArgs(
            default_model=plan.model,
            models=[] if custom else [plan.model],
            preload=[plan.model],
            custom_models=custom,
            face_enhance=False,
        )
        stack = Stack(base.url, base.settings, args)
        progress(f"deploying on {stack.url}")
        deploy(stack, plan, plan.max_batch_size)
        wait_ready(stack.url, READY_TIMEOUT_S)
        yield stack


# serve.run gives every deploy from Python a fresh random version, so a new user_config would
# restart the replicas (~30 s here, the model preload included). A fixed version makes it the
# in-place reconfigure that a config-file deploy does; ``_internal`` unlocks that option.
PINNED_VERSION = {"version": "serve-e2e", "_internal": True}


def deploy(stack: Stack, plan: Plan, max_batch_size: int) -> float:
    """(Re)deploy with this batch size; returns the seconds ``serve.run`` took."""
    from ray import serve

    from serve_app.app import APP_NAME, build

    options = {
        "Ingress": dict(PINNED_VERSION),
        "Upscaler": {
            **PINNED_VERSION,
            "user_config": plan.upscaler_config(max_batch_size),
            "num_replicas": 1,
            # Ray sets OMP_NUM_THREADS, and so torch's thread count, from num_cpus.
            "ray_actor_options": {"num_cpus": plan.threads},
        },
    }
    started = time.perf_counter()
    serve.run(build(stack.args, stack.settings, options), name=APP_NAME, route_prefix="/")
    return time.perf_counter() - started


# --- measuring --------------------------------------------------------------------------------


def upscaler_batches(client: Any) -> Counter[int]:
    r = client.get("/v1/stats")
    if r.status_code != 200:
        raise BenchError(f"GET /v1/stats: {r.status_code} {r.text[:300]}")
    hist = r.json()["upscaler"]["tiles_per_forward"]
    return Counter({int(k): int(v) for k, v in hist.items()})


def post_image(client: Any, data: bytes, model: str) -> tuple[float, dict[str, Any]]:
    return post_png(client, "/v1/upscale", data, {"model": model, "format": "png"})


def run_http(
    client: Any,
    label: str,
    images: Sequence[bytes],
    pixels: int,
    *,
    model: str,
    requests: int,
    concurrency: int,
    warmup: int = 2,
) -> Run:
    """``requests`` uploads from ``concurrency`` closed-loop clients; a short warm-up is left out."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda i: post_image(client, images[i % len(images)], model), range(warmup)))
        before = upscaler_batches(client)
        started = time.perf_counter()
        results = list(
            pool.map(lambda i: post_image(client, images[i % len(images)], model), range(requests))
        )
        wall = time.perf_counter() - started
        after = upscaler_batches(client)
    timings: dict[str, list[float]] = {}
    for _, body in results:
        for name, value in body.get("timings", {}).items():
            timings.setdefault(name, []).append(float(value))
    return Run(
        label,
        concurrency,
        [latency for latency, _ in results],
        wall,
        pixels * requests,
        after - before,
        timings,
    )


def load_local(plan: Plan, stack: Stack) -> tuple[Any, Any]:
    """The model and tiling of the deployment, loaded in this process."""
    from deployments.config import UpscalerConfig, build_registry
    from models.provider import ModelProvider
    from models.registry import variant_id

    provider = ModelProvider(
        build_registry(stack.args.custom_models),
        stack.settings.weights_store(),
        precision=stack.args.precision,
    )
    network = provider.load(variant_id(provider.upscale_spec(plan.model), None)).upscaler
    tiling = UpscalerConfig.model_validate(plan.upscaler_config(plan.max_batch_size)).tiling()
    return network, tiling


def run_paired(
    client: Any, plan: Plan, network: Any, tiling: Any, images: Sequence[bytes], pixels: int
) -> tuple[Run, Run, Run, list[float]]:
    """Concurrency 1: each image in this process (decode, model, encode, timed apart) and through
    HTTP, side by side, alternating which goes first, so both see the same load on a busy machine.
    Returns the model-only, the in-process and the HTTP runs, and each image's HTTP/in-process
    latency ratio."""
    from models.imageio import decode_image, encode_image
    from models.inference import upscale_image

    def local(data: bytes) -> tuple[float, float]:
        started = time.perf_counter()
        image = decode_image(data)
        decoded = time.perf_counter()
        result = upscale_image(
            image, network.forward, scale=network.scale, tile=tiling, batch_size=plan.max_batch_size
        )
        upscaled = time.perf_counter()
        encode_image(result, "png")
        return upscaled - decoded, time.perf_counter() - started

    local(images[0])  # warm-up of both paths
    post_image(client, images[0], plan.model)
    model_s, whole_s, http_s, ratios = [], [], [], []
    timings: dict[str, list[float]] = {}
    before = upscaler_batches(client)
    for i in range(plan.requests):
        data = images[i % len(images)]
        if i % 2:
            latency, body = post_image(client, data, plan.model)
            model, whole = local(data)
        else:
            model, whole = local(data)
            latency, body = post_image(client, data, plan.model)
        model_s.append(model)
        whole_s.append(whole)
        http_s.append(latency)
        ratios.append(latency / whole)
        for name, value in body.get("timings", {}).items():
            timings.setdefault(name, []).append(float(value))
    batches = upscaler_batches(client) - before
    total = pixels * plan.requests
    return (
        Run("in-process: model only", 1, model_s, sum(model_s), total),
        Run("in-process: dec+up+enc", 1, whole_s, sum(whole_s), total),
        Run(
            f"HTTP, batching on ({plan.max_batch_size})",
            1,
            http_s,
            sum(http_s),
            total,
            batches,
            timings,
        ),
        ratios,
    )


def output_difference(
    client: Any, plan: Plan, network: Any, tiling: Any, data: bytes
) -> tuple[int, float]:
    """Max and mean |HTTP result - in-process result| in 8-bit levels, for one image."""
    import httpx
    from PIL import Image as PILImage

    from models.imageio import decode_image, encode_image
    from models.inference import upscale_image

    _, body = post_image(client, data, plan.model)
    served = np.asarray(PILImage.open(io.BytesIO(httpx.get(body["url"], timeout=60).content)))
    image = upscale_image(decode_image(data), network.forward, scale=network.scale, tile=tiling)
    local = np.asarray(PILImage.open(io.BytesIO(encode_image(image, "png"))))
    diff = np.abs(served.astype(np.int16) - local.astype(np.int16))
    return int(diff.max()), float(diff.mean())


def run_batching(
    client: Any, stack: Stack, plan: Plan, images: Sequence[bytes], pixels: int
) -> tuple[list[Run], list[Run], list[tuple[float, bool]]]:
    """Alternating runs with batching off and on at the highest concurrency. Returns the off runs,
    the on runs and, per redeploy, its seconds and whether the replica was reconfigured in place
    (its cumulative counters went on) rather than restarted."""
    top = max(plan.concurrency)
    off: list[Run] = []
    on: list[Run] = []
    redeploys = []
    for _ in range(plan.batch_pairs):
        for size, runs in ((1, off), (plan.max_batch_size, on)):
            progress(f"batching {'off' if size == 1 else 'on'} at concurrency {top}")
            passes = sum(upscaler_batches(client).values())
            seconds = deploy(stack, plan, size)
            in_place = sum(upscaler_batches(client).values()) >= passes > 0
            redeploys.append((seconds, in_place))
            label = f"HTTP, batching {'off (1)' if size == 1 else f'on ({size})'}"
            runs.append(
                run_http(
                    client,
                    label,
                    images,
                    pixels,
                    model=plan.model,
                    requests=plan.requests,
                    concurrency=top,
                )
            )
    return off, on, redeploys


# --- report -----------------------------------------------------------------------------------


def row(run: Run) -> str:
    tpf = run.tiles_per_forward
    return (
        f"{run.label:<28}{run.concurrency:>5}{len(run.latencies):>5}{run.images_per_s:>9.2f}"
        f"{run.mp_per_s:>10.3f}{run.percentile(50) * 1e3:>10.0f}{run.percentile(95) * 1e3:>10.0f}"
        f"{'-' if tpf is None else f'{tpf:.2f}':>11}"
    )


def pooled(runs: list[Run]) -> Run:
    merged = runs[0]
    for run in runs[1:]:
        merged = merged.merged(run)
    return merged


@dataclass
class Results:
    model_only: Run
    local: Run  # decode + upscale + encode in this process
    http: list[Run]  # by concurrency, batching on
    ratios: list[float]  # per image at concurrency 1: HTTP / in-process latency
    off: list[Run]
    on: list[Run]
    redeploys: list[tuple[float, bool]]
    difference: tuple[int, float]


def report(plan: Plan, tiles_per_image: int, r: Results) -> None:
    off, on = pooled(r.off), pooled(r.on)
    print()
    print(
        f"model {plan.model}, {plan.images} images {plan.image_size}x{plan.image_size} PNG, "
        f"tile {plan.tile}/pad {plan.tile_pad}/blend {plan.tile_blend} -> {tiles_per_image} tiles "
        f"per image; batching on = max_batch_size {plan.max_batch_size}, wait "
        f"{plan.batch_wait_s * 1e3:g} ms; torch threads {plan.threads} here and in the replica"
    )
    print()
    header = f"{'path':<28}{'conc':>5}{'n':>5}{'img/s':>9}{'LR-MP/s':>10}"
    print(f"{header}{'p50 ms':>10}{'p95 ms':>10}{'tiles/fwd':>11}")
    for run in [r.model_only, r.local, *r.http, off, on]:
        print(row(run))

    one = r.http[0]
    inside = {k.removesuffix("_s"): statistics.mean(v) for k, v in one.replica_s.items()}
    p50, local50 = one.percentile(50), r.local.percentile(50)
    print()
    print("Serve overhead at concurrency 1 (each image both ways, side by side):")
    print(
        f"  p50 latency HTTP {p50 * 1e3:.0f} ms vs in-process dec+up+enc {local50 * 1e3:.0f} ms: "
        f"x{p50 / local50:.2f} ({(p50 - local50) * 1e3:+.0f} ms); median per-image ratio "
        f"x{statistics.median(r.ratios):.2f}; vs the model alone x"
        f"{p50 / r.model_only.percentile(50):.2f}"
    )
    if inside:
        parts = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in inside.items())
        rest = one.mean - sum(inside.values())
        print(
            f"  in the replica (mean of the responses' timings, ms): {parts}; the rest (HTTP, "
            f"proxy, ingress, handles, S3 put, presign): {rest * 1e3:.0f} ms mean"
        )
        model = statistics.median(one.replica_s["upscale_s"])
        print(
            f"  the model alone, median: {model * 1e3:.0f} ms in the replica vs "
            f"{statistics.median(r.model_only.latencies) * 1e3:.0f} ms in-process (should match)"
        )
    print("Throughput through HTTP vs in-process dec+up+enc one image at a time:")
    for run in r.http:
        print(
            f"  concurrency {run.concurrency}: x{run.images_per_s / r.local.images_per_s:.2f}"
            f" (vs the model alone x{run.images_per_s / r.model_only.images_per_s:.2f})"
        )
    pairs = ", ".join(
        f"x{b.images_per_s / a.images_per_s:.2f}" for a, b in zip(r.off, r.on, strict=True)
    )
    print(f"Batching gain at concurrency {on.concurrency}, off/on runs alternating:")
    print(
        f"  tiles per forward {off.tiles_per_forward or 0:.2f} -> {on.tiles_per_forward or 0:.2f} "
        f"(on: {dict(sorted(on.batches.items()))} passes by size)"
    )
    print(
        f"  throughput on/off x{on.images_per_s / off.images_per_s:.2f} (per pair: {pairs}); "
        f"p50 latency on/off x{on.percentile(50) / off.percentile(50):.2f}"
    )
    redeploys = ", ".join(
        f"{s:.1f} s {'in place' if same else 'RESTARTED'}" for s, same in r.redeploys
    )
    print(
        f"Checks: |HTTP - in-process| output max {r.difference[0]}, mean {r.difference[1]:.4f} "
        f"(8-bit levels, one image); redeploys: {redeploys}"
    )


# --- main -------------------------------------------------------------------------------------


def make_plan(ns: argparse.Namespace) -> Plan:
    model = TINY_MODEL if ns.model == "tiny" else REAL_MODEL
    return Plan(
        model=model,
        images=ns.images or (8 if ns.quick else 16),
        image_size=ns.image_size,
        requests=ns.requests or (8 if ns.quick else 16),
        concurrency=ns.concurrency,
        batch_pairs=ns.pairs or (1 if ns.quick else 3),
        max_batch_size=ns.batch_size,
        batch_wait_s=ns.batch_wait,
        tile=ns.tile,
        tile_pad=ns.tile_pad,
        tile_blend=ns.tile_blend,
        threads=ns.threads,
    )


def bench(plan: Plan) -> None:
    import httpx
    import torch

    from models.canvas import TiledJob
    from models.tiling import TileConfig

    torch.set_num_threads(plan.threads)
    images = make_images(plan.images, plan.image_size)
    pixels = plan.image_size**2
    config = TileConfig(plan.tile, plan.tile_pad, plan.tile_blend)
    tiles_per_image = len(
        TiledJob(torch.zeros((3, plan.image_size, plan.image_size)), 4, config).tiles
    )
    started = time.perf_counter()
    with running_stack(plan) as stack:
        progress(f"ready after {time.perf_counter() - started:.0f} s")
        limits = httpx.Limits(max_connections=max(plan.concurrency) + 4)
        with httpx.Client(base_url=stack.url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
            network, tiling = load_local(plan, stack)
            progress(f"in-process {network.name}: {network.precision} on {network.device}")
            difference = output_difference(client, plan, network, tiling, images[0])
            progress("concurrency 1: in-process and HTTP side by side")
            model_only, local, first, ratios = run_paired(
                client, plan, network, tiling, images, pixels
            )
            http = [first]
            for concurrency in (c for c in plan.concurrency if c > 1):
                progress(f"HTTP at concurrency {concurrency}")
                http.append(
                    run_http(
                        client,
                        first.label,
                        images,
                        pixels,
                        model=plan.model,
                        requests=plan.requests,
                        concurrency=concurrency,
                    )
                )
            off, on, redeploys = run_batching(client, stack, plan, images, pixels)
        results = Results(model_only, local, http, ratios, off, on, redeploys, difference)
        report(plan, tiles_per_image, results)
        sys.stdout.flush()
        progress("tearing down")
    progress(f"total {time.perf_counter() - started:.0f} s")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def levels(text: str) -> tuple[int, ...]:
    return tuple(sorted({1} | {positive(part) for part in text.split(",") if part.strip()}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and requests")
    parser.add_argument("--model", choices=["animevideov3", "tiny"], default="animevideov3")
    parser.add_argument("--images", type=positive, help="distinct images (default 16, quick 8)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--requests", type=positive, help="per run (default 16, quick 8)")
    parser.add_argument(
        "--concurrency", type=levels, default=(1, 4, 8), help="e.g. 1,4,8 (1 is always run)"
    )
    parser.add_argument("--pairs", type=positive, help="batching off/on pairs (default 3, quick 1)")
    parser.add_argument("--batch-size", type=positive, default=8, help="max_batch_size when on")
    parser.add_argument("--batch-wait", type=float, default=0.01, help="batch_wait_timeout_s")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--tile-pad", type=int, default=8)
    parser.add_argument("--tile-blend", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=positive,
        default=1,
        help="torch threads here and in the replica (default 1, as configs/serve_config.yaml)",
    )
    plan = make_plan(parser.parse_args(argv))
    from deployments.config import UpscalerConfig

    try:
        UpscalerConfig.model_validate(plan.upscaler_config(plan.max_batch_size))
    except ValueError as exc:  # pydantic's ValidationError names the field and the reason
        parser.error(str(exc))
    return run_bench("serve_e2e", bench, plan)


if __name__ == "__main__":
    sys.exit(main())
