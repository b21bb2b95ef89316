"""The FaceRestorer deployment: RetinaFace → align → GFPGAN v1.4 → paste over an upscaled background.

A thin adapter around ``models.pipeline.face_enhance_bytes``. The background comes from the
Upscaler deployment through its handle (model composition: no second copy of Real-ESRGAN here) and
is computed while faces are detected and restored. Face crops of concurrent requests (all 512x512)
share GFPGAN forward passes through ``@serve.batch``.

Without weights the replica still starts: every call answers ``ModelNotReadyError`` (HTTP 503)
naming what is missing, and ``models()`` says why, while upscaling keeps working.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.config import CustomModel, FaceConfig, build_registry
from deployments.payload import Payload, unpack
from models import pipeline
from models.errors import ModelError, ModelNotReadyError, public_reason
from models.face.detect import load_retinaface
from models.face.restore import load_gfpgan
from models.face.types import FaceDetector, RestoreFn
from models.image import Image
from models.jobs import result_key
from models.limits import Limits
from models.loading import pick_device
from models.registry import WeightsSource, variant_id
from models.results import StoredImage, store_result
from models.s3 import ResultStore
from models.settings import Settings
from models.weights import WeightsStore
from superres_client.options import FaceEnhanceOptions, UpscaleOptions

log = logging.getLogger("ray.serve")

RESTORER, DETECTOR = "gfpgan-v1.4", "retinaface-r50"


@serve.deployment(
    name="FaceRestorer", max_ongoing_requests=4, max_queued_requests=8, health_check_period_s=30
)
class FaceRestorer:
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        settings: Settings,
        upscaler: DeploymentHandle,
        custom_models: list[CustomModel],
        weights: dict[str, WeightsSource] | None = None,
        detector: FaceDetector | None = None,
    ) -> None:
        """``weights`` replaces the registry's files (e.g. another GFPGAN build, pinned);
        ``detector`` replaces RetinaFace with any object that has ``detect``."""
        self._upscaler = upscaler
        self._store = ResultStore(settings.storage())
        self._registry = build_registry(custom_models)
        self._device = pick_device(settings.device)
        sources = {name: self._registry.get(name).weights for name in (RESTORER, DETECTOR)}
        sources |= weights or {}
        store = settings.weights_store()
        self._errors: dict[str, str] = {}
        self._origins: dict[str, str] = {}
        self._restore: RestoreFn | None = await self._load(
            RESTORER, store, sources[RESTORER], load_gfpgan
        )
        self._detector: FaceDetector | None = detector or await self._load(
            DETECTOR, store, sources[DETECTOR], load_retinaface
        )
        if detector is not None:
            self._origins[DETECTOR] = f"given ({type(detector).__name__})"

    async def _load(
        self, name: str, store: WeightsStore, source: WeightsSource, loader: Any
    ) -> Any:
        try:
            fetched = await asyncio.to_thread(store.fetch, source)
            model = await asyncio.to_thread(loader, fetched.path, self._device)
        except ModelError as e:  # the app starts without faces; /readyz and /v1/models say why
            log.warning("face model %s unavailable: %s", name, e)
            self._errors[name] = public_reason(e)
            return None
        self._origins[name] = fetched.origin
        return model

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = FaceConfig.model_validate(user_config)
        self.restore_crops.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self.restore_crops.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
            config.batch_wait_timeout_s
        )

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def restore_crops(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        restore = self._require()[0]
        restored = await asyncio.to_thread(restore, np.stack(crops))
        return list(restored)

    async def models(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "kind": self._registry.get(name).kind.value,
                "scale": None,
                "ready": name in self._origins,
                "status": "loaded" if name in self._origins else "unavailable",
                "weights_source": self._origins.get(name),
                "error": self._errors.get(name),
            }
            for name in (RESTORER, DETECTOR)
        ]

    async def enhance(
        self,
        payload: Payload,
        options: FaceEnhanceOptions,
        limits: Limits,
        job_id: str | None = None,
    ) -> StoredImage:
        """Encoded bytes (or a reference to them) in; the result stored, with the faces found
        (boxes in output pixels). ``options.background_model`` names an upscaler, or ``"none"``
        for a plain resize."""
        _, detector = self._require()  # fail fast, before decoding, when weights are missing
        data = await unpack(payload)
        background, scale = None, None
        model = options.background_model
        if options.upscales_background and model is not None:
            scale = self._registry.get(model).scale
            background = self._background(model, limits)
        encoded = await pipeline.face_enhance_bytes(
            data,
            options,
            limits,
            detector=detector,
            restore=self.restore_crops,
            background=background,
            background_scale=scale,
        )
        key = None if job_id is None else result_key(job_id, encoded.format)
        return await asyncio.to_thread(store_result, self._store, encoded, source=data, key=key)

    def _background(self, model: str, limits: Limits) -> pipeline.RunUpscale:
        model_id = variant_id(self._registry.get(model), None)
        handle = self._upscaler.options(multiplexed_model_id=model_id)

        async def run(image: Image, scale: float) -> Image:
            request = UpscaleOptions(model=model, scale=scale)
            return await handle.upscale_image.remote(image, request, limits)

        return run

    async def check_health(self) -> None:
        if self._restore is not None and torch.cuda.is_available():
            torch.cuda.synchronize()  # a dead GPU context raises here

    def _require(self) -> tuple[RestoreFn, FaceDetector]:
        if self._restore is None or self._detector is None:
            missing = "; ".join(f"{k}: {v}" for k, v in self._errors.items())
            raise ModelNotReadyError(f"face enhancement is unavailable: {missing}")
        return self._restore, self._detector
