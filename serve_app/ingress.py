"""The HTTP ingress: validate, hand the work to the model deployments, store, answer.

It stays thin: no pixels are decoded here. Bodies are counted while they stream in, so an oversized
upload is refused without reading it all. The same operations are methods that other Ray apps call
through a handle (``serve.get_app_handle("superres").upscale.remote(...)``).
"""

import asyncio
import hashlib
import logging
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.config import CustomModel
from deployments.face import FaceOptions
from deployments.upscaler import UpscaleOutput, build_registry
from models.imageio import ImageLimits, sniff_format
from models.options import UpscaleOptions
from models.provider import variant_id
from models.settings import Settings
from models.storage import ResultStore
from serve_app.errors import ApiError, error_response, install_handlers, to_api_error
from serve_app.schemas import ErrorResponse, FaceBox, ModelInfo, UpscaleResult

log = logging.getLogger("ray.serve")

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and form fields around the file
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 413, 415, 422, 503)
}

app = FastAPI(
    title="superres",
    summary="Image super-resolution: Real-ESRGAN, GFPGAN and spandrel models; results in S3.",
    version="0.1.0",
)
install_handlers(app)


class RequestParams(BaseModel):
    """Options of one request, from the query string and/or multipart form fields."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    scale: float | None = None
    format: str | None = None
    quality: int | None = None
    denoise: float | None = None
    face_enhance: bool = False
    only_center_face: bool = False
    max_faces: int = Field(default=10, ge=1, le=100)
    weight: float = Field(default=1.0, ge=0, le=1)
    background_model: str | None = None


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_upload_bytes: int = Field(default=50_000_000, gt=0)
    max_input_pixels: int = Field(default=50_000_000, gt=0)
    max_face_input_pixels: int = Field(default=25_000_000, gt=0)
    max_output_pixels: int = Field(default=128_000_000, gt=0)

    def image_limits(self, *, face: bool = False) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.max_upload_bytes,
            max_pixels=self.max_face_input_pixels if face else self.max_input_pixels,
            max_output_pixels=self.max_output_pixels,
        )


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    too_large = ApiError(413, "too_large", f"the upload is over the limit of {limit} bytes")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, limits: Limits) -> tuple[bytes, dict[str, str]]:
    """The image bytes (multipart ``file`` or the raw body) and any form fields sent with it."""
    cap = limits.max_upload_bytes
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        return await read_limited_body(request, cap), {}
    request._body = await read_limited_body(request, cap + MULTIPART_OVERHEAD)  # form() re-reads it
    async with request.form(max_files=1, max_fields=20) as form:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "missing_file", "send the image as the multipart field 'file'")
        data = await upload.read()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if len(data) > cap:
        raise ApiError(413, "too_large", f"the upload is over the limit of {cap} bytes")
    return data, fields


def check_is_image(data: bytes) -> None:
    if not data:
        raise ApiError(400, "empty_input", "the request carried no image bytes")
    if sniff_format(data) is None:
        raise ApiError(415, "unsupported_media_type", "not an image: send PNG, JPEG or WebP")


@serve.deployment(name="Ingress", max_ongoing_requests=64)
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
    ) -> None:
        self._upscaler = upscaler
        self._faces = face_restorer
        self._registry = build_registry(custom_models)
        self._default_model = default_model
        self._limits = limits
        self._store = ResultStore(settings.storage())
        try:
            self._store.ensure_bucket()
        except Exception as exc:  # storage down at start: /readyz says so; requests get 503
            log.warning("result storage is not reachable yet: %s", exc)

    # --- the Python API (also called through handles by other Ray apps) -------------------------

    async def upscale(self, image: bytes, **options: Any) -> UpscaleResult:
        """Upscale encoded image bytes; options as for ``POST /v1/upscale``. Raises domain errors."""
        return await self._run(image, self._params(options), face=False)

    async def face_enhance(self, image: bytes, **options: Any) -> UpscaleResult:
        """Restore faces (GFPGAN) over an upscaled background; options as ``POST /v1/face-enhance``."""
        return await self._run(image, self._params(options), face=True)

    # --- HTTP ---------------------------------------------------------------------------------

    @app.post("/v1/upscale", response_model=UpscaleResult, responses=ERRORS)
    async def http_upscale(
        self,
        request: Request,
        model: Annotated[str | None, Query()] = None,
        scale: Annotated[float | None, Query(ge=1, le=8)] = None,
        format: Annotated[str | None, Query()] = None,
        quality: Annotated[int | None, Query(ge=1, le=100)] = None,
        denoise: Annotated[float | None, Query(ge=0, le=1)] = None,
        face_enhance: Annotated[bool, Query()] = False,
    ) -> Any:
        """Upscale one image: multipart field ``file``, or the raw image as the body. Options come
        as query parameters or as form fields."""
        return await self._http(request, face=False)

    @app.post("/v1/face-enhance", response_model=UpscaleResult, responses=ERRORS)
    async def http_face_enhance(
        self,
        request: Request,
        scale: Annotated[float | None, Query(ge=1, le=8)] = None,
        only_center_face: Annotated[bool, Query()] = False,
        max_faces: Annotated[int, Query(ge=1, le=100)] = 10,
        weight: Annotated[float, Query(ge=0, le=1)] = 1.0,
        background_model: Annotated[str | None, Query()] = None,
        format: Annotated[str | None, Query()] = None,
        quality: Annotated[int | None, Query(ge=1, le=100)] = None,
    ) -> Any:
        """Restore the faces of one image with GFPGAN v1.4 and upscale the rest."""
        return await self._http(request, face=True)

    @app.get("/v1/models", response_model=list[ModelInfo])
    async def list_models(self) -> list[dict[str, Any]]:
        models = [dict(m, ready=m["loaded"]) for m in await self._upscaler.models.remote()]
        if self._faces is not None:
            models += await self._faces.models.remote()
        return models

    @app.get("/v1/stats")
    async def stats(self) -> dict[str, Any]:
        return {"upscaler": await self._upscaler.stats.remote()}

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        checks: dict[str, Any] = {}
        models = {m["name"]: m for m in await self._upscaler.models.remote()}
        default = models.get(self._default_model, {})
        checks["default_model"] = {
            "name": self._default_model,
            "ready": bool(default.get("loaded")),
        }
        if not default.get("loaded"):
            checks["default_model"]["error"] = default.get("error") or "not loaded yet"
        try:
            await asyncio.to_thread(self._store.ensure_bucket)
            checks["storage"] = {"ready": True}
        except Exception as exc:
            checks["storage"] = {"ready": False, "error": str(exc)}
        if self._faces is not None:
            try:  # a FaceRestorer still fetching weights must not stall readiness probes
                faces = await asyncio.wait_for(self._faces.models.remote(), timeout=2)
                checks["face"] = {m["name"]: m["ready"] for m in faces}
            except TimeoutError:
                checks["face"] = "starting"
        ready = checks["default_model"]["ready"] and checks["storage"]["ready"]
        headers = None if ready else {"Retry-After": "5"}
        return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503, headers)

    # --- shared ---------------------------------------------------------------------------------

    async def _http(self, request: Request, *, face: bool) -> JSONResponse:
        try:
            data, fields = await read_upload(request, self._limits)
            params = self._params({**request.query_params, **fields})
            result = await self._run(data, params, face=face or params.face_enhance)
        except Exception as exc:
            return error_response(to_api_error(exc))
        return JSONResponse(result.model_dump(mode="json"))

    def _params(self, raw: dict[str, Any]) -> RequestParams:
        try:
            return RequestParams.model_validate(raw)
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ApiError(422, "validation_error", detail) from None

    async def _run(self, data: bytes, params: RequestParams, *, face: bool) -> UpscaleResult:
        check_is_image(data)
        faces: list[FaceBox] | None = None
        if face:
            output, boxes = await self._face_enhance(data, params)
            faces = [FaceBox(box=b["box"], score=b["score"]) for b in boxes]
        else:
            output = await self._upscale(data, params)
        metadata = {
            "model": output.model,
            "scale": f"{output.scale:g}",
            "input-sha256": hashlib.sha256(data).hexdigest(),
        }
        stored = await asyncio.to_thread(
            self._store.put,
            output.data,
            content_type=output.content_type,
            extension=output.format,
            metadata=metadata,
        )
        return UpscaleResult(
            id=stored.key,
            url=stored.url,
            expires_at=stored.expires_at,
            width=output.width,
            height=output.height,
            format=output.format,
            content_type=output.content_type,
            model=output.model,
            scale=output.scale,
            bytes=stored.bytes,
            timings=output.timings,
            faces=faces,
        )

    async def _upscale(self, data: bytes, params: RequestParams) -> UpscaleOutput:
        options = UpscaleOptions(
            model=params.model or self._default_model,
            scale=params.scale,
            format=params.format,
            quality=params.quality,
            denoise=params.denoise,
        )
        model_id = variant_id(self._registry.get(options.model), options.denoise)
        handle = self._upscaler.options(multiplexed_model_id=model_id)
        return await handle.upscale.remote(data, options, self._limits.image_limits())

    async def _face_enhance(
        self, data: bytes, params: RequestParams
    ) -> tuple[UpscaleOutput, list[dict[str, Any]]]:
        if self._faces is None:
            raise ApiError(503, "model_unavailable", "face enhancement is not enabled", 5)
        options = FaceOptions(
            scale=params.scale,
            only_center_face=params.only_center_face,
            max_faces=params.max_faces,
            weight=params.weight,
            background_model=params.background_model or params.model or self._default_model,
            format=params.format,
            quality=params.quality,
        )
        limits = self._limits.image_limits(face=True)
        return await self._faces.enhance.remote(data, options, limits)
