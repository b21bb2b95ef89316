"""Domain errors → HTTP, in one place. Every error body is ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from models import errors as e
from models.storage import StorageUnavailableError

log = logging.getLogger("ray.serve")

RETRY_AFTER_S = 5


@dataclass(frozen=True)
class ApiError(Exception):
    """An error already expressed in HTTP terms (raised by the ingress itself)."""

    status: int
    code: str
    message: str
    retry_after: int | None = None


# Most specific first: the first matching class wins.
_MAPPING: tuple[tuple[type[BaseException], int, str], ...] = (
    (e.EmptyInputError, 400, "empty_input"),
    (e.UnsupportedImageTypeError, 415, "unsupported_media_type"),
    (e.AnimatedImageError, 415, "animated_image"),
    (e.CorruptImageError, 400, "corrupt_image"),
    (e.ImageTooLargeError, 413, "too_large"),
    (e.UnknownModelError, 400, "unknown_model"),
    (e.InvalidOptionError, 400, "invalid_option"),
    (e.WeightsUnavailableError, 503, "model_unavailable"),
    (e.WeightsVerificationError, 503, "model_unavailable"),
    (e.UnsupportedModelError, 503, "model_unavailable"),
    (e.ModelNotReadyError, 503, "model_unavailable"),
    (StorageUnavailableError, 503, "storage_unavailable"),
    (BackPressureError, 503, "overloaded"),
)


def _cause(exc: BaseException) -> BaseException:
    # An exception raised in another replica arrives wrapped; map what was raised there.
    while isinstance(exc, RayTaskError) and exc.cause is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def to_api_error(exc: BaseException) -> ApiError:
    exc = _cause(exc)
    if isinstance(exc, ApiError):
        return exc
    for kind, status, code in _MAPPING:
        if isinstance(exc, kind):
            retry = RETRY_AFTER_S if status == 503 else None
            return ApiError(status, code, str(exc) or code, retry)
    log.exception("unexpected error", exc_info=exc)
    return ApiError(500, "internal", "internal error; it has been logged")


def error_response(error: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    body = {"error": {"code": error.code, "message": error.message}}
    return JSONResponse(body, status_code=error.status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p not in ('body', 'query'))}: {err['msg']}"
            for err in exc.errors()
        )
        return error_response(ApiError(422, "validation_error", details))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return error_response(to_api_error(exc))
