"""The FaceRestorer deployment: RetinaFace → align → GFPGAN v1.4 → paste over an upscaled background.

The background comes from the Upscaler deployment through its handle (model composition: no second
copy of Real-ESRGAN here) and is computed while faces are detected and restored. Face crops of
concurrent requests (all 512x512) share GFPGAN forward passes through ``@serve.batch``.

Without weights the replica still starts: every call answers ``ModelNotReadyError`` (HTTP 503)
naming what is missing, and ``models()`` says why, while upscaling keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.config import FaceConfig
from deployments.upscaler import UpscaleOutput
from models.errors import InvalidOptionError, ModelError, ModelNotReadyError
from models.face import FaceDetector, load_gfpgan, load_retinaface, paste_faces, prepare_faces
from models.face.pipeline import resize_background
from models.face.types import RestoreFn
from models.image import Image
from models.imageio import ImageLimits, content_type, decode_image, encode_image
from models.loading import pick_device
from models.options import UpscaleOptions
from models.registry import Registry, WeightsSource
from models.settings import Settings
from models.weights import WeightsStore

log = logging.getLogger("ray.serve")

RESTORER, DETECTOR = "gfpgan-v1.4", "retinaface-r50"
DEFAULT_FACE_SCALE = 2.0  # GFPGAN's own default upscale


@dataclass(frozen=True)
class FaceOptions:
    scale: float | None = None
    only_center_face: bool = False
    max_faces: int = 10
    weight: float = 1.0  # 1: GFPGAN v1.4 as upstream; lower keeps more of the original
    background_model: str | None = None  # an upscaler model name, or "none" for a plain resize
    format: str | None = None
    quality: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_faces <= 100:
            raise InvalidOptionError("max_faces must be between 1 and 100")
        if not 0.0 <= self.weight <= 1.0:
            raise InvalidOptionError("weight must be between 0 and 1")
        # Scale, format and quality follow the same rules as /v1/upscale.
        checked = UpscaleOptions(scale=self.scale, format=self.format, quality=self.quality)
        object.__setattr__(self, "format", checked.format)


@serve.deployment(name="FaceRestorer", max_ongoing_requests=4, health_check_period_s=30)
class FaceRestorer:
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        settings: Settings,
        upscaler: DeploymentHandle,
        weights: dict[str, WeightsSource] | None = None,
        detector: FaceDetector | None = None,
    ) -> None:
        """``weights`` replaces the registry's files (e.g. another GFPGAN build, pinned);
        ``detector`` replaces RetinaFace with any object that has ``detect``."""
        self._upscaler = upscaler
        self._device = pick_device(settings.device)
        sources = {name: Registry().get(name).weights for name in (RESTORER, DETECTOR)}
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
            self._errors[name] = str(e)
            return None
        self._origins[name] = f"{fetched.origin} ({fetched.detail})"
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
                "kind": Registry().get(name).kind.value,
                "scale": None,
                "ready": name in self._origins,
                "status": "loaded" if name in self._origins else "unavailable",
                "weights_source": self._origins.get(name),
                "error": self._errors.get(name),
            }
            for name in (RESTORER, DETECTOR)
        ]

    async def enhance(
        self, data: bytes, options: FaceOptions, limits: ImageLimits
    ) -> tuple[UpscaleOutput, list[dict[str, Any]]]:
        """Encoded bytes in; the encoded result and the faces found (boxes in output pixels)."""
        _, detector = self._require()  # fail fast, before decoding, when weights are missing
        started = time.perf_counter()
        image = await asyncio.to_thread(decode_image, data, limits)
        scale = options.scale or DEFAULT_FACE_SCALE
        background = asyncio.ensure_future(self._background(image, options, scale, limits))
        try:
            t0 = time.perf_counter()
            job = await asyncio.to_thread(
                prepare_faces,
                image.color,
                detector,
                only_center_face=options.only_center_face,
                max_faces=options.max_faces,
            )
            t1 = time.perf_counter()
            restored = await asyncio.gather(*(self.restore_crops(crop) for crop in job.crops))
            t2 = time.perf_counter()
            upscaled = await background
        finally:
            background.cancel()  # no-op when done; stops the work if a stage above failed
        t3 = time.perf_counter()
        color = await asyncio.to_thread(
            paste_faces, upscaled.color, job, restored, weight=options.weight
        )
        result = upscaled.with_pixels(color, upscaled.alpha)
        fmt = options.format or (image.format if image.format in ("png", "jpeg", "webp") else "png")
        encoded = await asyncio.to_thread(encode_image, result, fmt, options.quality)
        done = time.perf_counter()
        faces = job.output_faces(result.height, result.width)
        output = UpscaleOutput(
            data=encoded,
            content_type=content_type(fmt),
            format=fmt,
            width=result.width,
            height=result.height,
            model=f"{RESTORER}+{options.background_model or 'none'}",
            scale=scale,
            timings={
                "decode_s": round(t0 - started, 4),
                "detect_s": round(t1 - t0, 4),
                "restore_s": round(t2 - t1, 4),
                "background_wait_s": round(t3 - t2, 4),
                "paste_encode_s": round(done - t3, 4),
            },
        )
        return output, [{"box": f.box, "score": f.score} for f in faces]

    async def _background(
        self, image: Image, options: FaceOptions, scale: float, limits: ImageLimits
    ) -> Image:
        model = options.background_model
        if model is None or model == "none":
            color = await asyncio.to_thread(resize_background, image.color, scale)
            alpha = None
            if image.alpha is not None:
                alpha = (await asyncio.to_thread(resize_background, image.alpha[..., None], scale))[
                    ..., 0
                ]
            return image.with_pixels(color, alpha)
        request = UpscaleOptions(model=model, scale=scale)
        return await self._upscaler.upscale_image.remote(image, request, limits)

    async def check_health(self) -> None:
        if self._restore is not None and torch.cuda.is_available():
            torch.cuda.synchronize()  # a dead GPU context raises here

    def _require(self) -> tuple[RestoreFn, FaceDetector]:
        if self._restore is None or self._detector is None:
            missing = "; ".join(f"{k}: {v}" for k, v in self._errors.items())
            raise ModelNotReadyError(f"face enhancement is unavailable: {missing}")
        return self._restore, self._detector
