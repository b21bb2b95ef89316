"""The Upscaler deployment: Real-ESRGAN (and any spandrel model) with cross-request tile batching.

A thin adapter around ``models.pipeline``: it adds what only a replica has. Tiles of every request
go to ``forward_tiles``, a ``@serve.batch`` method, so tiles of concurrent requests that share a
network and shape run in one forward pass; each request stitches its own tiles (nothing per request
is stored on ``self``). Models are multiplexed (``@serve.multiplexed``): a replica keeps the few it
used last and Serve routes a request to a replica that holds its model. The caller names the model
variant with ``multiplexed_model_id`` (``models.provider.variant_id``): a denoise strength of
realesr-general-x4v3 is a network of its own.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from ray.serve import metrics

from deployments.config import CustomModel, UpscalerConfig, build_registry
from models import pipeline
from models.errors import InvalidOptionError, ModelError, UnknownModelError, public_reason
from models.image import Image
from models.inference import upscale_image_async
from models.limits import Limits
from models.loading import Upscaler as Network
from models.loading import pick_device
from models.options import UpscaleOptions
from models.provider import LoadedModel, ModelProvider
from models.registry import variant_id
from models.results import EncodedImage
from models.settings import Settings
from models.tiling import TileConfig

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class _TileRequest:
    network: Network
    tile: np.ndarray


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
            device=pick_device(settings.device),
            precision=precision,
        )
        self._tiling = TileConfig()
        self._load_errors: dict[str, str] = {}
        # What the multiplexed LRU holds: an entry goes when Serve evicts (and drops) the model.
        self._loaded: weakref.WeakValueDictionary[str, LoadedModel] = weakref.WeakValueDictionary()
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
            log.warning("loading %s failed: %s", model_id, e)
            self._load_errors[model_id] = public_reason(e)
            raise
        self._load_errors.pop(model_id, None)
        self._loaded[model_id] = loaded
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

    async def upscale(self, data: bytes, options: UpscaleOptions, limits: Limits) -> EncodedImage:
        """Encoded bytes in, encoded bytes out: the path of the HTTP API."""
        known_scale, load = self._model(options)
        return await pipeline.upscale_bytes(
            data, options, limits, known_scale=known_scale, load=load
        )

    async def upscale_image(self, image: Image, options: UpscaleOptions, limits: Limits) -> Image:
        """A decoded image in, the upscaled image out: the path of composed deployments."""
        known_scale, load = self._model(options)
        header = pipeline.header_of(image)
        runner, plan = await pipeline.prepare(
            header, options, limits, known_scale=known_scale, load=load
        )
        return await runner.run(image, plan.outscale)

    def _model(self, options: UpscaleOptions) -> tuple[int | None, pipeline.LoadRunner]:
        """The registry's scale of the requested model and how to load it on this replica."""
        name = options.model
        if name is None or name not in self._served:
            raise UnknownModelError(str(name), sorted(self._served))
        spec = self._provider.upscale_spec(name)
        model_id = variant_id(spec, options.denoise)
        routed = serve.get_multiplexed_model_id()
        if routed and routed != model_id:
            raise InvalidOptionError(
                f"the request was routed for model {routed!r} but its options ask for {model_id!r}"
            )
        tiling = self._tiling  # one consistent config per request, even if reconfigured meanwhile

        async def load() -> pipeline.Runner:
            network = (await self.get_model(model_id)).upscaler

            async def forward(tile: np.ndarray) -> np.ndarray:
                return await self.forward_tiles(_TileRequest(network, tile))

            async def run(image: Image, outscale: float) -> Image:
                return await upscale_image_async(
                    image, forward, scale=network.scale, outscale=outscale, tile=tiling
                )

            return pipeline.Runner(network.scale, run)

        return spec.scale, load

    async def models(self) -> list[dict[str, Any]]:
        """What this replica serves: name, scale, whether it is loaded here, and why not."""
        loaded = dict(self._loaded)
        out = []
        for name in sorted(self._served):
            spec = self._registry.get(name)
            ids = [i for i in loaded if i == name or i.startswith(f"{name}@")]
            errors = [e for i, e in self._load_errors.items() if i.partition("@")[0] == name]
            status = "loaded" if ids else "unavailable" if errors else "loads on first use"
            out.append(
                {
                    "name": name,
                    "kind": spec.kind.value,
                    "scale": loaded[ids[0]].upscaler.scale if ids else spec.scale,
                    "supports_denoise": spec.supports_denoise,
                    "description": spec.description,
                    "loaded": bool(ids),
                    "status": status,
                    "weights_source": loaded[ids[0]].origin if ids else None,
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
        for loaded in list(self._loaded.values())[:1]:
            probe = np.zeros((1, 3, 16, 16), dtype=np.float32)
            out = await asyncio.to_thread(loaded.upscaler.forward, probe)
            if not np.isfinite(out).all():
                raise RuntimeError(f"{loaded.upscaler.name} produced non-finite output")
