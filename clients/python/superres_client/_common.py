"""What the sync and async clients share: options checked with the server's own models, request
bodies, the retry policy."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ValidationError

from superres_client.errors import InvalidOptions, SuperresError
from superres_client.options import FaceEnhanceOptions, UpscaleOptions

try:
    __version__ = version("superres-client")
except PackageNotFoundError:  # imported from a source tree that was not installed
    __version__ = "0+unknown"

USER_AGENT = f"superres-client/{__version__} (python)"
Operation = Literal["upscale", "face-enhance"]
ImageInput = str | Path | bytes  # a file path, an http(s) URL, or the image itself
DEFAULT_URL = "http://127.0.0.1:8000"
RETRIED = (429, 503)
# sent again after a connection lost before the answer (a node and its proxy going away), as is
# a request with an Idempotency-Key (the service answers a repeat with what it did the first time)
SAFE_TO_REPEAT = frozenset({"GET", "HEAD", "OPTIONS"})
_OPTIONS: dict[str, type[BaseModel]] = {
    "upscale": UpscaleOptions,
    "face-enhance": FaceEnhanceOptions,
}
_ROUTES = {"upscale": "/v1/upscale", "face-enhance": "/v1/face-enhance"}


def base_url(url: str | None) -> str:
    return (url or os.environ.get("SUPERRES_URL") or DEFAULT_URL).rstrip("/")


def headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("SUPERRES_API_KEY")
    sent = {"User-Agent": USER_AGENT}
    return {**sent, "Authorization": f"Bearer {key}"} if key else sent


def checked_options(operation: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` validated by the route's own pydantic model, as the JSON the server takes
    (only what was given: the server's defaults stay the server's)."""
    model = _OPTIONS.get(operation)
    if model is None:
        raise InvalidOptions(
            f"operation: use one of {', '.join(_OPTIONS)}", code="validation_error"
        )
    try:
        parsed = model.model_validate(options)
    except ValidationError as exc:
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidOptions(message, code="validation_error") from None
    return parsed.model_dump(mode="json", include=set(options), exclude_none=True)


def route(operation: str) -> str:
    return _ROUTES[operation]


def as_query(options: dict[str, Any]) -> dict[str, str]:
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}


def is_url(image: ImageInput) -> bool:
    return isinstance(image, str) and image.startswith(("http://", "https://"))


def read_image(image: ImageInput) -> tuple[str, bytes]:
    """A file name and the bytes of a path or of raw bytes (not of a URL)."""
    if isinstance(image, bytes):
        return "image", image
    path = Path(image)
    try:
        return path.name, path.read_bytes()
    except OSError as exc:
        raise SuperresError(
            f"cannot read {path}: {exc.strerror}", code="input_unreadable"
        ) from None


def job_request(
    image: ImageInput,
    operation: str,
    options: dict[str, Any],
    webhook_url: str | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    """The keyword arguments of ``httpx`` for ``POST /v1/jobs``, with an ``Idempotency-Key`` (a
    random one if None), so that sending it again cannot make a second job."""
    headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
    if is_url(image):
        body: dict[str, Any] = {"operation": operation, "options": options, "image_url": image}
        if webhook_url:
            body["webhook_url"] = webhook_url
        return {"json": body, "headers": headers}
    name, data = read_image(image)
    fields = {"operation": operation, "options": json.dumps(options)}
    if webhook_url:
        fields["webhook_url"] = webhook_url
    return {"data": fields, "files": {"file": (name, data)}, "headers": headers}


def repeatable(method: str, headers: dict[str, str] | None) -> bool:
    """Whether a request that got no answer may be sent again (``SAFE_TO_REPEAT``)."""
    return method.upper() in SAFE_TO_REPEAT or "Idempotency-Key" in (headers or {})


@dataclass(frozen=True)
class Retry:
    """Bounded retries of 429/503, waiting ``Retry-After`` (capped) or an exponential backoff, and
    of requests that got no answer where sending them again is safe (see ``delay_after``)."""

    attempts: int = 4
    max_delay_s: float = 30.0
    backoff_s: float = 0.5

    def delay(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before another try, or None to give up."""
        if response.status_code not in RETRIED or attempt + 1 >= self.attempts:
            return None
        from superres_client.errors import retry_after

        hint = retry_after(response)
        wait = hint if hint is not None else self.backoff_s * 2**attempt
        return min(wait, self.max_delay_s)

    def delay_after(self, attempt: int, error: httpx.HTTPError, repeatable: bool) -> float | None:
        """Seconds to wait before sending again a request that got no answer, or None to give up:
        any request whose connection was refused (nothing was sent), and a ``repeatable`` one
        whose connection was lost before the answer; never one that timed out (the caller's
        limit) or a plain POST that may have arrived."""
        if attempt + 1 >= self.attempts:
            return None
        refused = isinstance(error, httpx.ConnectError)
        lost = isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))
        if not (refused or (lost and repeatable)):
            return None
        return min(self.backoff_s * 2**attempt, self.max_delay_s)


def transport_error(exc: httpx.HTTPError) -> SuperresError:
    from superres_client.errors import Timeout

    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"no answer in time: {exc!r}", code="timeout")
    return SuperresError(f"cannot reach the service: {exc}", code="connection_error")
