"""Developer CLI: ``python -m models fetch NAME`` and ``python -m models upscale IN OUT``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from models.errors import SuperResError
from models.imageio import ImageLimits, decode_image, encode_image, sniff_format
from models.inference import upscale_image
from models.loading import PRECISIONS
from models.provider import ModelProvider, variant_id
from models.registry import Registry
from models.tiling import DEFAULT_TILE, TileConfig
from models.weights import WeightsStore

DEFAULT_CACHE = Path(
    os.environ.get("SUPERRES_WEIGHTS_DIR", Path.home() / ".cache" / "superres" / "weights")
)


def _store(args: argparse.Namespace) -> WeightsStore:
    mirrors = [m for m in os.environ.get("SUPERRES_WEIGHTS_MIRRORS", "").split(",") if m]
    return WeightsStore(args.cache_dir, mirrors=mirrors, allow_download=not args.offline)


def fetch(args: argparse.Namespace) -> int:
    provider = ModelProvider(Registry(), _store(args))
    for name in args.names:
        started = time.perf_counter()
        for weights in provider.fetch(name):
            print(f"{name}: {weights.path} (from {weights.origin}: {weights.detail})")
        print(f"{name}: ready in {time.perf_counter() - started:.1f} s")
    return 0


def upscale(args: argparse.Namespace) -> int:
    provider = ModelProvider(Registry(), _store(args), precision=args.precision)
    spec = provider.upscale_spec(args.model)
    started = time.perf_counter()
    loaded = provider.load(variant_id(spec, args.denoise))
    network = loaded.upscaler
    print(f"model {args.model}: weights from {loaded.source}")
    print(
        f"device {network.device}, precision {network.precision}, loaded in "
        f"{time.perf_counter() - started:.1f} s"
    )
    data = args.input.read_bytes()
    image = decode_image(data, ImageLimits(max_bytes=max(len(data), 1)))
    tile = TileConfig(tile=args.tile, pad=args.pad, blend=DEFAULT_TILE.blend)
    started = time.perf_counter()
    result = upscale_image(
        image, network.forward, scale=network.scale, outscale=args.scale, tile=tile
    )
    elapsed = time.perf_counter() - started
    fmt = args.format or (
        sniff_format(data) if sniff_format(data) in ("png", "jpeg", "webp") else "png"
    )
    args.output.write_bytes(encode_image(result, fmt, args.quality))
    print(
        f"{image.width}x{image.height} -> {result.width}x{result.height} in {elapsed:.2f} s "
        f"({image.pixels / 1e6 / elapsed:.3f} input MP/s); wrote {args.output}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--offline", action="store_true", help="never download; cache/ncnn only")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p_fetch = sub.add_parser("fetch", help="fetch and verify weights into the cache")
    p_fetch.add_argument("names", nargs="+", metavar="NAME")
    p_fetch.set_defaults(func=fetch)

    p_up = sub.add_parser("upscale", help="upscale one image file")
    p_up.add_argument("input", type=Path)
    p_up.add_argument("output", type=Path)
    p_up.add_argument("--model", default="realesrgan-x4plus")
    p_up.add_argument("--scale", type=float, default=None, help="output scale, 1-8")
    p_up.add_argument("--tile", type=int, default=DEFAULT_TILE.tile)
    p_up.add_argument("--pad", type=int, default=DEFAULT_TILE.pad)
    p_up.add_argument("--precision", choices=PRECISIONS, default="auto")
    p_up.add_argument("--format", choices=("png", "jpeg", "webp"), default=None)
    p_up.add_argument("--quality", type=int, default=None)
    p_up.add_argument("--denoise", type=float, default=None, help="realesr-general-x4v3: 0-1")
    p_up.set_defaults(func=upscale)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except (SuperResError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
