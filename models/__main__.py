"""Developer CLI: ``python -m models fetch NAME`` and ``python -m models upscale IN OUT``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from models import pipeline
from models.errors import SuperResError
from models.limits import Limits
from models.loading import BACKENDS, PRECISIONS
from models.policy import TilePolicy
from models.provider import ModelProvider
from models.registry import Registry, variant_id
from models.settings import Settings
from models.tiling import TileConfig
from models.weights import WeightsStore
from superres_client.options import UpscaleOptions


def _store(args: argparse.Namespace) -> WeightsStore:
    """The weights store of ``Settings`` (SUPERRES_WEIGHTS_DIR, ..._MIRRORS), with the CLI's flags."""
    update: dict[str, object] = {"allow_download": False} if args.offline else {}
    if args.cache_dir is not None:
        update["weights_dir"] = args.cache_dir
    return Settings().model_copy(update=update).weights_store()


def fetch(args: argparse.Namespace) -> int:
    provider = ModelProvider(Registry(), _store(args))
    for name in args.names:
        started = time.perf_counter()
        for weights in provider.fetch(name):
            print(f"{name}: {weights.path} (from {weights.origin}: {weights.detail})")
        print(f"{name}: ready in {time.perf_counter() - started:.1f} s")
    return 0


def upscale(args: argparse.Namespace) -> int:
    provider = ModelProvider(
        Registry(), _store(args), precision=args.precision, backend=args.backend
    )
    spec = provider.upscale_spec(args.model)
    options = UpscaleOptions(
        model=args.model,
        scale=args.scale,
        format=args.format,
        quality=args.quality,
        denoise=args.denoise,
    )
    fixed = (
        None
        if args.tile is None
        else TileConfig.for_tile(args.tile, pad=args.pad, blend=args.blend)
    )
    data = args.input.read_bytes()
    limits = Limits(max_upload_bytes=max(len(data), 1))

    async def load() -> pipeline.Runner:
        started = time.perf_counter()
        loaded = provider.load(variant_id(spec, args.denoise))
        network = loaded.upscaler
        print(f"model {args.model}: weights from {loaded.source}")
        print(
            f"device {network.device}, {network.backend}, precision {network.precision}, loaded in "
            f"{time.perf_counter() - started:.1f} s"
        )

        policy = TilePolicy.in_process(network, fixed)
        return policy.runner(
            network, lambda t: print(f"tile {t.tile}, pad {t.pad}, blend {t.blend}")
        )

    result = asyncio.run(
        pipeline.upscale_bytes(data, options, limits, known_scale=spec.scale, load=load)
    )
    args.output.write_bytes(result.data)
    elapsed = result.timings["upscale_s"]
    pixels = result.width * result.height / result.scale**2
    print(
        f"-> {result.width}x{result.height} {result.format} in {elapsed:.2f} s "
        f"({pixels / 1e6 / elapsed:.3f} input MP/s); {result.timings}; wrote {args.output}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: SUPERRES_WEIGHTS_DIR or ~/.cache"
    )
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
    p_up.add_argument(
        "--tile", type=int, default=None, help="input tile size; default: from the memory budget"
    )
    p_up.add_argument("--pad", type=int, default=None, help="context pad; default: from --tile")
    p_up.add_argument("--blend", type=int, default=None, help="cross-fade; default: from --tile")
    p_up.add_argument("--precision", choices=PRECISIONS, default="auto")
    p_up.add_argument("--backend", choices=BACKENDS, default="auto")
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
