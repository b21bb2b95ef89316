"""The Upscaler deployment: Real-ESRGAN (and any spandrel model) with cross-request tile batching.

A request decodes its image, cuts it into equal tiles and submits every tile to ``forward_tiles``, a
``@serve.batch`` method: tiles of all concurrent requests on this replica are grouped by (network,
tile shape) and each group is one forward pass. Every request then stitches its own tiles; nothing
per request is stored on ``self``.

Several models share one deployment through ``@serve.multiplexed``: a replica keeps the few it used
last (LRU) and Serve routes a request to a replica that already holds its model. A denoise strength
of realesr-general-x4v3 is a model of its own here (a blended network), see ``models.provider``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve
from ray.serve import metrics

from deployments.config import CustomModel, UpscalerConfig
from models.errors import InvalidOptionError, ModelError, UnknownModelError
from models.image import Image
from models.imageio import ImageLimits, check_output_size, content_type, decode_image, encode_image
from models.inference import output_size, upscale_image_async
from models.loading import Upscaler as Network
from models.options import UpscaleOptions
from models.provider import LoadedModel, ModelProvider, variant_id
from models.registry import Registry
from models.settings import Settings
from models.tiling import TileConfig

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class UpscaleOutput:
    """An encoded result, ready to store."""

    data: bytes
    content_type: str
    format: str
    width: int
    height: int
    model: str
    scale: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _TileRequest:
    network: Network
    tile: np.ndarray


def build_registry(custom_models: list[CustomModel]) -> Registry:
    registry = Registry()
    for custom in custom_models:
        registry.register(custom.spec())
    return registry


@serve.deployment(name="Upscaler", max_ongoing_requests=8, health_check_period_s=30)
class Upscaler:
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        settings: Settings,
        models: list[str],
        preload: list[str],
        custom_models: list[CustomModel],
        precision: str = "auto",
    ) -> None:
        self._registry = build_registry(custom_models)
        self._served = frozenset(models) | {c.name for c in custom_models}
        self._provider = ModelProvider(
            self._registry,
            settings.weights_store(),
            device=None if settings.device is None else _device(settings.device),
            precision=precision,
        )
        self._tiling = TileConfig()
        self._load_errors: dict[str, str] = {}
        self._batches: Counter[int] = Counter()  # tiles per forward pass, for /v1/stats
        self._tiles_per_batch = metrics.Histogram(
            "superres_tiles_per_forward",
            description="Tiles in one forward pass (cross-request batching).",
            boundaries=[1, 2, 4, 8, 16, 32, 64],
        )
        for name in preload:
            try:
                await self.get_model(variant_id(self._registry.get(name), None))
            except ModelError as e:  # the replica still serves the models that work
                log.error("preloading %s failed: %s", name, e)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = UpscalerConfig.model_validate(user_config)
        self._tiling = config.tiling()
        self.forward_tiles.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self.forward_tiles.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
            config.batch_wait_timeout_s
        )

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id: str) -> LoadedModel:
        try:
            loaded = await asyncio.to_thread(self._provider.load, model_id)
        except ModelError as e:
            self._load_errors[model_id] = str(e)
            raise
        self._load_errors.pop(model_id, None)
        return loaded

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def forward_tiles(self, requests: list[_TileRequest]) -> list[np.ndarray]:
        groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((id(request.network), request.tile.shape), []).append(i)
        outputs: list[np.ndarray] = [np.empty(0)] * len(requests)
        for indices in groups.values():
            network = requests[indices[0]].network
            batch = np.stack([requests[i].tile for i in indices])
            result = await asyncio.to_thread(network.forward, batch)
            for i, out in zip(indices, result, strict=True):
                outputs[i] = out
            self._batches[len(indices)] += 1
            self._tiles_per_batch.observe(len(indices))
        return outputs

    async def upscale(
        self, data: bytes, options: UpscaleOptions, limits: ImageLimits
    ) -> UpscaleOutput:
        """Bytes in, encoded bytes out: the path of the HTTP API."""
        started = time.perf_counter()
        image = await asyncio.to_thread(decode_image, data, limits)
        decoded = time.perf_counter()
        result = await self.upscale_image(image, options, limits)
        inferred = time.perf_counter()
        fmt = options.format or _keep_format(image)
        encoded = await asyncio.to_thread(encode_image, result, fmt, options.quality)
        done = time.perf_counter()
        return UpscaleOutput(
            data=encoded,
            content_type=content_type(fmt),
            format=fmt,
            width=result.width,
            height=result.height,
            model=options.model,
            scale=options.scale or result.width / image.width,
            timings={
                "decode_s": round(decoded - started, 4),
                "upscale_s": round(inferred - decoded, 4),
                "encode_s": round(done - inferred, 4),
            },
        )

    async def upscale_image(
        self, image: Image, options: UpscaleOptions, limits: ImageLimits
    ) -> Image:
        """A decoded image in, the upscaled image out: the path of composed deployments."""
        if options.model not in self._served:
            raise UnknownModelError(options.model, sorted(self._served))
        spec = self._provider.upscale_spec(options.model)
        known_scale = options.scale or spec.scale  # a user model's scale is known once loaded
        if known_scale is not None:  # refuse before a possibly slow model load
            check_output_size(*output_size(image.height, image.width, known_scale), limits)
        network = (await self.get_model(variant_id(spec, options.denoise))).upscaler
        outscale = options.scale or network.scale
        if known_scale is None:
            check_output_size(*output_size(image.height, image.width, outscale), limits)

        async def forward(tile: np.ndarray) -> np.ndarray:
            return await self.forward_tiles(_TileRequest(network, tile))

        tiling = self._tiling  # one consistent config for this request, even if reconfigured
        return await upscale_image_async(
            image, forward, scale=network.scale, outscale=outscale, tile=tiling
        )

    async def models(self) -> list[dict[str, Any]]:
        """What this replica serves: name, scale, whether it is loaded here, and why not."""
        loaded = await self._loaded_models()
        out = []
        for name in sorted(self._served):
            spec = self._registry.get(name)
            ids = [i for i in loaded if i == name or i.startswith(f"{name}@")]
            errors = [e for i, e in self._load_errors.items() if i.partition("@")[0] == name]
            out.append(
                {
                    "name": name,
                    "kind": spec.kind.value,
                    "scale": loaded[ids[0]].upscaler.scale if ids else spec.scale,
                    "supports_denoise": spec.supports_denoise,
                    "description": spec.description,
                    "loaded": bool(ids),
                    "status": "loaded"
                    if ids
                    else "unavailable"
                    if errors
                    else "loads on first use",
                    "weights_source": loaded[ids[0]].source if ids else None,
                    "error": errors[0] if errors and not ids else None,
                }
            )
        return out

    async def stats(self) -> dict[str, Any]:
        forwards = sum(self._batches.values())
        tiles = sum(size * n for size, n in self._batches.items())
        return {
            "forward_passes": forwards,
            "tiles": tiles,
            "tiles_per_forward": {str(k): v for k, v in sorted(self._batches.items())},
            "max_tiles_per_forward": max(self._batches, default=0),
        }

    async def check_health(self) -> None:
        """Fails when a loaded model cannot run a forward pass (a broken device, say)."""
        for loaded in (await self._loaded_models()).values():
            probe = np.zeros((1, 3, 16, 16), dtype=np.float32)
            out = await asyncio.to_thread(loaded.upscaler.forward, probe)
            if not np.isfinite(out).all():
                raise RuntimeError(f"{loaded.upscaler.name} produced non-finite output")
            return

    async def _loaded_models(self) -> dict[str, LoadedModel]:
        # The multiplexed LRU is the only record of what is loaded: ask it, never mirror it.
        wrapper = getattr(self, "__serve_multiplex_wrapper", None)
        if wrapper is None:
            return {}
        return dict(wrapper.models)


def _keep_format(image: Image) -> str:
    return image.format if image.format in ("png", "jpeg", "webp") else "png"


def _device(name: str) -> Any:
    import torch

    try:
        return torch.device(name)
    except RuntimeError as e:
        raise InvalidOptionError(f"SUPERRES_DEVICE={name!r} is not a torch device") from e
