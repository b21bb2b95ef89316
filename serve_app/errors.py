"""Errors → HTTP, sorted once. Every error body is ``{"error": {"code", "message"}}``.

* Client errors (4xx) say what was wrong with the request, in the words of the exception.
* Transient errors (503 + ``Retry-After``): storage, model loading, overload, device memory. Their
  bodies say what to do, never where (no endpoints, paths, hosts or bucket names): the details go
  to the log.
* Anything else is a bug: 500 with no internal detail, logged with its traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.quota import QuotaExceeded
from models import errors as e
from models.storage import StorageUnavailableError
from models.urlguard import UrlFetchError
from serve_app.auth import Unauthorized

log = logging.getLogger("ray.serve")

RETRY_AFTER_S = 5


@dataclass  # not frozen: raising sets __traceback__ on the instance
class ApiError(Exception):
    """An error already expressed in HTTP terms (raised by the ingress itself)."""

    status: int
    code: str
    message: str
    retry_after: int | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Rule:
    kind: type[BaseException]
    status: int
    message: str | None = None  # None: the exception's own words (client errors only)
    own_code: str | None = None  # for classes outside models (which carry their ``code``)

    @property
    def code(self) -> str:
        return self.own_code or str(getattr(self.kind, "code", "internal"))


# Most specific first: the first matching class wins. Codes of models' errors are theirs.
_RULES: tuple[_Rule, ...] = (
    _Rule(e.EmptyInputError, 400),
    _Rule(e.UnsupportedImageTypeError, 415),
    _Rule(e.AnimatedImageError, 415),
    _Rule(e.CorruptImageError, 400),
    _Rule(e.ImageTooLargeError, 413),  # UrlTooLargeError too
    _Rule(UrlFetchError, 422, own_code="url_unreachable"),
    _Rule(e.UnknownModelError, 400),
    _Rule(e.InvalidOptionError, 400),
    _Rule(ValidationError, 422, own_code="validation_error"),
    _Rule(e.ModelError, 503),
    _Rule(e.DeviceOutOfMemoryError, 503, "the service is out of device memory"),
    _Rule(BackPressureError, 503, "the service is at capacity", "overloaded"),
    _Rule(StorageUnavailableError, 503, "result storage is unavailable", "storage_unavailable"),
)


def validation_message(errors: Sequence[Any]) -> str:
    """One line naming each invalid field and why (pydantic's or FastAPI's error list)."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err["loc"] if p not in ("body", "query"))
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    return "; ".join(parts)


def _allowed_methods(app: FastAPI, request: Request, named: str | None) -> list[str]:
    """Every method the OpenAPI schema gives this path, plus the ones Starlette named (its header
    names only the first matching route's)."""
    methods = {m.strip() for m in (named or "").split(",") if m.strip()}
    root = request.scope.get("root_path", "")
    path = request.url.path.removeprefix(root) or "/"
    for template, operations in app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\{[^/}]+\}", "[^/]+", template), path):
            methods |= {m.upper() for m in operations if m != "parameters"}
    return sorted(methods)


def _cause(exc: BaseException) -> BaseException:
    # An exception raised in another replica arrives wrapped; map what was raised there.
    while isinstance(exc, RayTaskError) and exc.cause is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def to_api_error(exc: BaseException) -> ApiError:
    exc = _cause(exc)
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Unauthorized):
        auth = (("WWW-Authenticate", exc.www_authenticate),)
        return ApiError(401, "unauthorized", str(exc), headers=auth)
    if isinstance(exc, QuotaExceeded):
        return ApiError(429, "quota_exceeded", str(exc), exc.retry_after_s)
    for rule in _RULES:
        if isinstance(exc, rule.kind):
            return _apply(rule, exc)
    log.error("unexpected error", exc_info=exc)
    return ApiError(500, "internal", "internal error; it has been logged")


def _apply(rule: _Rule, exc: BaseException) -> ApiError:
    if rule.status < 500:
        if isinstance(exc, ValidationError):
            return ApiError(rule.status, rule.code, validation_message(exc.errors()))
        return ApiError(rule.status, rule.code, str(exc) or rule.code)
    log.warning("%s: %s", rule.code, exc)  # the details, for operators
    if rule.message is not None:
        message = rule.message
    elif isinstance(exc, e.ModelError):
        message = f"the model is unavailable: {e.public_reason(exc)}"
    else:
        message = rule.code
    return ApiError(rule.status, rule.code, f"{message}; try again later", RETRY_AFTER_S)


def error_response(error: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    headers = {**dict(headers or {}), **dict(error.headers)}
    if error.retry_after:
        headers["Retry-After"] = str(error.retry_after)
    body = {"error": {"code": error.code, "message": error.message}}
    return JSONResponse(body, status_code=error.status, headers=headers or None)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(422, "validation_error", validation_message(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request, headers.get("Allow")))
        return error_response(ApiError(exc.status_code, code, str(exc.detail)), headers)

    # Raised outside a route's own handling (the key dependency, status routes): handled here
    # by class, so Starlette's server-error middleware never sees (or re-raises) them.
    @app.exception_handler(Unauthorized)
    @app.exception_handler(ApiError)
    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return error_response(to_api_error(exc))
