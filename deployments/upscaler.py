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
import dataclasses
import logging
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray import serve
from ray.serve import metrics

from deployments.config import CustomModel, UpscalerConfig, build_registry
from deployments.payload import Payload, unpack
from models import pipeline
from models.compiled import compile_upscaler, warm_up
from models.errors import InvalidOptionError, ModelError, UnknownModelError, public_reason
from models.fallback import forward_or_split
from models.image import Image
from models.inference import upscale_image_async
from models.jobs import JobStore, progress_reporter, result_key
from models.limits import Limits
from models.loading import Upscaler as Network
from models.loading import memory_budget, pick_device
from models.policy import TilePolicy
from models.provider import LoadedModel, ModelProvider
from models.registry import variant_id
from models.results import StoredImage, store_result
from models.s3 import ResultStore
from models.settings import Settings
from superres_client.options import UpscaleOptions

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class _TileRequest:
    network: Network
    tile: torch.Tensor


@serve.deployment(
    name="Upscaler", max_ongoing_requests=8, max_queued_requests=16, health_check_period_s=30
)
class Upscaler:
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        settings: Settings,
        models: list[str],
        preload: list[str],
        custom_models: list[CustomModel],
        precision: str = "auto",
        compile: str = "auto",
        backend: str = "auto",
    ) -> None:
        """``compile``: "on", "off", or "auto" (on with CUDA): the preloaded models run compiled
        for fixed shapes, warmed here and in ``reconfigure`` before the replica serves."""
        self._registry = build_registry(custom_models)
        self._store = ResultStore(settings.storage())
        self._jobs = JobStore(self._store)
        self._served = frozenset(models) | {c.name for c in custom_models}
        self._provider = ModelProvider(
            self._registry,
            settings.weights_store(),
            device=pick_device(settings.device),
            precision=precision,
            backend=backend,
        )
        self._device = self._provider.device
        if self._device.type == "cpu":  # torch's threads follow the CPUs Ray gave this replica
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
            torch.set_num_threads(max(1, int(cpus)))
        self._config = UpscalerConfig()
        self._policy = self._tile_policy(self._config)
        compiled = compile == "on" or (compile == "auto" and self._device.type == "cuda")
        self._compile_ids = (
            {variant_id(self._registry.get(n), None) for n in preload} if compiled else set()
        )
        self._compile_cache = settings.weights_dir / "compile-cache"
        self._warmed: set[tuple[str, int, int]] = set()
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
        await self._warm_up()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = UpscalerConfig.model_validate(user_config)
        self._config = config
        self._policy = self._tile_policy(config)
        self.forward_tiles.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self.forward_tiles.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
            config.batch_wait_timeout_s
        )
        await self._warm_up()  # new tile or batch shapes compile now, not in a request

    def _tile_policy(self, config: UpscalerConfig) -> TilePolicy:
        budget = config.memory_budget_bytes() or memory_budget(self._device)
        return TilePolicy(config.tiling(), budget, config.max_batch_size)

    async def _warm_up(self) -> None:
        policy = self._policy
        for loaded in list(self._loaded.values()):
            network = loaded.upscaler
            if not network.fixed_shapes:
                continue
            shapes = {
                (network.name, t.tile, policy.max_batch) for t in policy.compiled_tiles(network)
            }
            if shapes <= self._warmed:
                continue
            tiles = [tile for _, tile, _ in shapes - self._warmed]
            seconds = await asyncio.to_thread(warm_up, network, tiles, policy.max_batch)
            log.info("%s compiled and warmed for tiles %s in %.1f s", network.name, tiles, seconds)
            self._warmed |= shapes

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id: str) -> LoadedModel:
        try:
            loaded = await asyncio.to_thread(self._provider.load, model_id)
            if model_id in self._compile_ids:
                network = compile_upscaler(loaded.upscaler, cache_dir=self._compile_cache)
                loaded = dataclasses.replace(loaded, upscaler=network)
        except ModelError as e:
            log.warning("loading %s failed: %s", model_id, e)
            self._load_errors[model_id] = public_reason(e)
            raise
        self._load_errors.pop(model_id, None)
        self._loaded[model_id] = loaded
        return loaded

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def forward_tiles(self, requests: list[_TileRequest]) -> list[torch.Tensor]:
        """Tiles of concurrent requests grouped by (network, shape), each group in as few forward
        passes as the memory budget allows."""
        groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((id(request.network), tuple(request.tile.shape)), []).append(i)
        outputs: list[torch.Tensor] = [torch.empty(0)] * len(requests)
        for (_, shape), members in groups.items():
            network = requests[members[0]].network
            per_pass = self._policy.tiles_per_pass(network, shape)
            for first in range(0, len(members), per_pass):
                indices = members[first : first + per_pass]
                batch = torch.stack([requests[i].tile for i in indices])
                result = await asyncio.to_thread(
                    forward_or_split, network.forward, batch, scale=network.scale
                )
                for i, out in zip(indices, result, strict=True):
                    outputs[i] = out
                self._batches[len(indices)] += 1
                self._tiles_per_batch.observe(len(indices))
        return outputs

    async def upscale(
        self, payload: Payload, options: UpscaleOptions, limits: Limits, job_id: str | None = None
    ) -> StoredImage:
        """Encoded bytes (or a reference to them) in; the result stored, its URL out: the path of
        the HTTP API. Neither image travels back through the caller. For a job (``job_id``), the
        result goes to the job's own key and progress is written as tiles are done."""
        progress = None if job_id is None else progress_reporter(self._jobs, job_id)
        known_scale, load = self._model(options, progress)
        data = await unpack(payload)
        encoded = await pipeline.upscale_bytes(
            data,
            options,
            limits,
            known_scale=known_scale,
            load=load,
            png_level=self._config.png_compress_level,
        )
        key = None if job_id is None else result_key(job_id, encoded.format)
        return await asyncio.to_thread(store_result, self._store, encoded, source=data, key=key)

    async def upscale_image(self, image: Image, options: UpscaleOptions, limits: Limits) -> Image:
        """A decoded image in, the upscaled image out: the path of composed deployments."""
        known_scale, load = self._model(options)
        header = pipeline.header_of(image)
        runner, plan = await pipeline.prepare(
            header, options, limits, known_scale=known_scale, load=load
        )
        return await runner.run(image, plan.outscale)

    def _model(
        self, options: UpscaleOptions, on_progress: Callable[[int, int], None] | None = None
    ) -> tuple[int | None, pipeline.LoadRunner]:
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
        policy = self._policy  # one per request, even if reconfigured meanwhile

        async def load() -> pipeline.Runner:
            network = (await self.get_model(model_id)).upscaler

            async def forward(tile: torch.Tensor) -> torch.Tensor:
                return await self.forward_tiles(_TileRequest(network, tile))

            async def run(image: Image, outscale: float) -> Image:
                return await upscale_image_async(
                    image,
                    forward,
                    scale=network.scale,
                    outscale=outscale,
                    tile=policy.tile(network, image.height, image.width),
                    placement=policy.placement(network),
                    on_progress=on_progress,
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
                    "backend": loaded[ids[0]].upscaler.backend if ids else None,
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
            "device": str(self._device),
            "torch_threads": torch.get_num_threads(),
            "memory_budget_mb": self._policy.budget_bytes >> 20,
            "compiled": sorted(
                n.upscaler.name for n in self._loaded.values() if n.upscaler.fixed_shapes
            ),
        }

    async def check_health(self) -> None:
        """Fails when a loaded model cannot run a forward pass (a broken device, say)."""
        for loaded in list(self._loaded.values())[:1]:
            probe = torch.zeros((1, 3, 16, 16))
            out = await asyncio.to_thread(loaded.upscaler.forward, probe)
            if not bool(torch.isfinite(out).all()):
                raise RuntimeError(f"{loaded.upscaler.name} produced non-finite output")
