"""The HTTP ingress: validate, hand the work to the model deployments, store, answer.

It stays thin and torch-free: no pixels are decoded here, and it imports neither torch, spandrel nor
OpenCV. The operations are also methods that other Ray apps call through a handle
(``serve.get_app_handle("superres").upscale.remote(image_bytes, scale=2)``), validated by the same
options models as the HTTP routes.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.config import CustomModel, build_registry
from deployments.payload import pack
from deployments.quota import hold_quota
from models.limits import Limits
from models.registry import variant_id
from models.s3 import ResultStore
from models.settings import Settings
from serve_app.auth import KeyRing
from serve_app.deps import require_key
from serve_app.errors import ApiError, error_response, install_handlers, to_api_error
from serve_app.jobs import Jobs
from serve_app.jobs_api import router as jobs_router
from serve_app.keys import Principal
from serve_app.metrics import RequestMetrics
from serve_app.schemas import ModelInfo, UpscaleResult, error_responses
from serve_app.status import LastKnown
from serve_app.upload import read_upload, request_body
from serve_app.web import router as web_router
from serve_app.webhooks_api import router as webhooks_router
from superres_client.options import FaceEnhanceOptions, UpscaleOptions

log = logging.getLogger("ray.serve")

Options = TypeVar("Options", bound=BaseModel)

ERRORS = error_responses(400, 401, 408, 413, 415, 422, 429, 503)
STATUS_ERRORS = error_responses(401, 503)


app = FastAPI(
    title="superres",
    summary="Image super-resolution: Real-ESRGAN, GFPGAN and spandrel models; results in S3.",
    version="0.1.0",
)
install_handlers(app)
app.include_router(jobs_router)
app.include_router(webhooks_router)
app.include_router(web_router)


@serve.deployment(name="Ingress", max_ongoing_requests=256, max_queued_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        upscaler: DeploymentHandle,
        face_restorer: DeploymentHandle | None,
        settings: Settings,
        default_model: str,
        custom_models: list[CustomModel],
        limits: Limits,
        quotas: DeploymentHandle | None = None,
        max_in_flight: int = 32,
        runner: DeploymentHandle | None = None,
    ) -> None:
        """``quotas``: the ``Quotas`` deployment, when API keys are on (``settings.api_keys_file``);
        ``max_in_flight``: image requests this replica works on at once; more are refused with
        503 before their upload is read."""
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self.key_ring = KeyRing.load(settings.api_keys_file) if settings.api_keys_file else None
        if self.key_ring is None:
            log.warning("API keys are OFF: anyone who reaches this service can use it")
        self._quotas = quotas
        self._status = LastKnown()
        self._metrics = RequestMetrics()
        self._upscaler = upscaler
        self._faces = face_restorer
        self._registry = build_registry(custom_models)
        self._default_model = default_model
        self._limits = limits
        self._store = ResultStore(settings.storage())
        policy = settings.url_policy(limits.max_upload_bytes)
        self.webhook_secrets = settings.webhook_signers()  # read by /v1/webhooks/secret
        hooks = bool(self.webhook_secrets)
        self.jobs = (
            None
            if runner is None
            else Jobs(self._store, runner, limits, default_model, policy, webhooks=hooks)
        )
        try:
            self._store.ensure_bucket()
        except Exception as exc:  # storage down at start: /readyz says so; requests get 503
            log.warning("result storage is not reachable yet: %s", exc)

    # --- the Python API (also called through handles by other Ray apps) -------------------------

    async def upscale(self, image: bytes, **options: Any) -> UpscaleResult:
        """Upscale encoded image bytes; options as for ``POST /v1/upscale``. Raises domain errors."""
        return await self._upscale(image, UpscaleOptions.model_validate(options))

    async def face_enhance(self, image: bytes, **options: Any) -> UpscaleResult:
        """Restore faces (GFPGAN) over an upscaled background; options as ``POST /v1/face-enhance``."""
        return await self._face_enhance(image, FaceEnhanceOptions.model_validate(options))

    # --- HTTP ---------------------------------------------------------------------------------

    @app.post(
        "/v1/upscale",
        response_model=UpscaleResult,
        responses=ERRORS,
        openapi_extra=request_body(UpscaleOptions),
    )
    async def http_upscale(
        self,
        request: Request,
        options: Annotated[UpscaleOptions, Query()],
        caller: Annotated[Principal, Depends(require_key)],
    ) -> Response:
        """Upscale one image: multipart field ``file``, or the raw image as the body. Options come
        as query parameters or as form fields."""
        return await self._http(request, options, caller, self._upscale)

    @app.post(
        "/v1/face-enhance",
        response_model=UpscaleResult,
        responses=ERRORS,
        openapi_extra=request_body(FaceEnhanceOptions),
    )
    async def http_face_enhance(
        self,
        request: Request,
        options: Annotated[FaceEnhanceOptions, Query()],
        caller: Annotated[Principal, Depends(require_key)],
    ) -> Response:
        """Restore the faces of one image with GFPGAN v1.4 and upscale the rest."""
        return await self._http(request, options, caller, self._face_enhance)

    @app.get(
        "/v1/models",
        response_model=list[ModelInfo],
        responses=STATUS_ERRORS,
        dependencies=[Depends(require_key)],
    )
    async def list_models(self) -> list[dict[str, Any]]:
        upscalers = await self._status.get("upscaler models", self._upscaler.models.remote)
        models = [dict(m, ready=m["loaded"]) for m in upscalers]
        if self._faces is not None:
            models += await self._status.get("face models", self._faces.models.remote)
        return models

    @app.get("/v1/stats", responses=STATUS_ERRORS, dependencies=[Depends(require_key)])
    async def stats(self) -> dict[str, Any]:
        stats = {
            "upscaler": await self._status.get("upscaler stats", self._upscaler.stats.remote),
            "requests": self._metrics.stats(),  # this Ingress replica's
        }
        if self.jobs is not None:
            stats["jobs"] = await self._status.get("job stats", self.jobs.runner.stats.remote)
        return stats

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Default model loaded and storage reachable; each check bounded by the status timeout,
        all at once, so the probe answers within a second however busy the replicas are."""
        model, storage, faces = await asyncio.gather(
            self._model_check(), self._storage_check(), self._face_check()
        )
        checks: dict[str, Any] = {"default_model": model, "storage": storage}
        if faces is not None:
            checks["face"] = faces
        ready = model["ready"] and storage["ready"]
        headers = None if ready else {"Retry-After": "5"}
        return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503, headers)

    async def _model_check(self) -> dict[str, Any]:
        try:
            upscalers = await self._status.get("upscaler models", self._upscaler.models.remote)
        except ApiError:
            upscalers = []
        default = {m["name"]: m for m in upscalers}.get(self._default_model, {})
        check = {"name": self._default_model, "ready": bool(default.get("loaded"))}
        if not check["ready"]:
            check["error"] = default.get("error") or "not loaded yet"
        return check

    async def _storage_check(self) -> dict[str, Any]:
        try:
            await self._status.get("storage", lambda: asyncio.to_thread(self._store.ensure_bucket))
        except Exception as exc:
            log.warning("readiness: storage: %s", exc)
            return {"ready": False, "error": "result storage is unavailable"}
        return {"ready": True}

    async def _face_check(self) -> dict[str, bool] | str | None:
        if self._faces is None:
            return None
        try:  # a FaceRestorer still fetching weights must not stall readiness probes
            faces = await self._status.get("face models", self._faces.models.remote)
        except ApiError:
            return "starting"
        return {m["name"]: m["ready"] for m in faces}

    # --- shared ---------------------------------------------------------------------------------

    async def _http(
        self,
        request: Request,
        options: Options,
        caller: Principal,
        run: Callable[[bytes, Options], Awaitable[UpscaleResult]],
    ) -> Response:
        """The quota is taken before the body is read; every failure becomes its JSON error."""
        started = time.perf_counter()
        route = request.url.path.rsplit("/", 1)[-1]
        model = getattr(options, "model", None) or getattr(options, "background_model", None)
        try:
            async with self._admitted(), self._quota(caller):
                limits = self._limits
                data, options = await read_upload(
                    request, options, limits.max_upload_bytes, limits.upload_timeout_s
                )
                if "respond-async" in request.headers.get("prefer", "") and self.jobs is not None:
                    # RFC 7240: the same request as a job, answered 202
                    view = await self.jobs.accept(caller, options, data)
                    headers = {
                        "Preference-Applied": "respond-async",
                        "Location": view["status_url"],
                    }
                    return JSONResponse(view, status_code=202, headers=headers)
                result = await run(data, options)
        except Exception as exc:
            error = to_api_error(exc)
            self._metrics.observe(route, self._model_label(model), error.status, 0)
            return error_response(error)
        elapsed = time.perf_counter() - started
        self._metrics.observe(route, result.model, 200, elapsed)
        return JSONResponse(result.model_dump(mode="json"))

    def _model_label(self, model: str | None) -> str:
        """A metrics label: a known model's name, never a client's arbitrary string."""
        name = model or self._default_model
        return name if name in self._registry else "unknown"

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        if self._in_flight >= self._max_in_flight:
            raise ApiError(503, "overloaded", "this ingress is at capacity; try again later", 1)
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    def _quota(self, caller: Principal) -> AbstractAsyncContextManager[object]:
        if caller.limits is None or self._quotas is None:
            return contextlib.nullcontext()
        return hold_quota(self._quotas, caller.name, caller.limits)

    async def _upscale(self, data: bytes, options: UpscaleOptions) -> UpscaleResult:
        if options.face_enhance:
            return await self._face_enhance(data, options.face_options())
        options = options.model_copy(update={"model": options.model or self._default_model})
        model_id = variant_id(self._registry.get(str(options.model)), options.denoise)
        handle = self._upscaler.options(multiplexed_model_id=model_id)
        stored = await handle.upscale.remote(pack(data), options, self._limits)
        return UpscaleResult.from_stored(stored)

    async def _face_enhance(self, data: bytes, options: FaceEnhanceOptions) -> UpscaleResult:
        if self._faces is None:
            raise ApiError(503, "model_unavailable", "face enhancement is not enabled", 5)
        background = options.background_model or self._default_model
        options = options.model_copy(update={"background_model": background})
        stored = await self._faces.enhance.remote(pack(data), options, self._limits)
        return UpscaleResult.from_stored(stored)
