"""Typed errors: each carries the server's ``{code, message}`` and the HTTP status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from superres_client.jobs import JobView


class SuperresError(Exception):
    """Base of every error of the SDK; ``status`` is None for errors raised before sending."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.message = message
        self.code = code
        self.status = status
        self.retry_after = retry_after


class BadRequest(SuperresError):
    """The request was refused as it is (400, 408, 413, 415, 422): retrying will not help."""


class InvalidOptions(BadRequest):
    """Options refused by the server's own option models, before anything was sent (or a 422)."""


class Unauthorized(SuperresError):
    """401: API key missing or wrong."""


class Forbidden(SuperresError):
    """403: not for this caller (e.g. a webhook secret while the service runs without keys)."""


class NotFound(SuperresError):
    """404: e.g. an unknown job."""


class Conflict(SuperresError):
    """409: a job already finished, or an Idempotency-Key reused with another body."""


class QuotaExceeded(SuperresError):
    """429: over the API key's rate or concurrency; ``retry_after`` says when to come back."""


class Overloaded(SuperresError):
    """503: overloaded, storage or model weights unavailable; ``retry_after`` when given."""


class ServerError(SuperresError):
    """Any other 5xx."""


class Timeout(SuperresError):
    """No answer (or no finished job) within the time allowed."""


class JobFailed(SuperresError):
    """A job ended ``failed`` or ``cancelled``; ``job`` is its last view."""

    def __init__(self, job: JobView) -> None:
        error = job.error or {}
        super().__init__(
            str(error.get("message") or f"job {job.id} {job.status}"),
            code=str(error.get("code") or job.status),
        )
        self.job = job


class JobCancelled(JobFailed):
    """The job was cancelled."""


_BY_STATUS: dict[int, type[SuperresError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: BadRequest,
    409: Conflict,
    413: BadRequest,
    415: BadRequest,
    422: InvalidOptions,
    429: QuotaExceeded,
    503: Overloaded,
}


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: treated as no hint


def from_response(response: httpx.Response) -> SuperresError:
    """The typed error for a non-2xx answer, with the server's ``{error: {code, message}}``."""
    code, message = "http_error", response.reason_phrase or "error"
    try:
        body: Any = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", message))
        elif isinstance(body, dict) and "detail" in body:
            message = str(body["detail"])
    except ValueError:
        if response.text:
            message = response.text[:200]
    status = response.status_code
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else SuperresError)
    return cls(message, code=code, status=status, retry_after=retry_after(response))
