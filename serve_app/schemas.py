"""The API's answers: the result (shared by HTTP clients and Python handle callers), the models, and
the error envelope of every 4xx/5xx."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from models.results import FaceBox, StoredImage


class UpscaleResult(BaseModel):
    id: str = Field(description="The result's object key in the store.")
    url: str = Field(description="Presigned GET URL of the result; no credentials needed.")
    expires_at: datetime
    width: int
    height: int
    format: str
    content_type: str
    model: str
    scale: float
    bytes: int
    timings: dict[str, float] = Field(default_factory=dict)
    faces: list[FaceBox] | None = None

    @classmethod
    def from_stored(cls, stored: StoredImage) -> UpscaleResult:
        return cls(
            id=stored.key,
            url=stored.url,
            expires_at=stored.expires_at,
            width=stored.width,
            height=stored.height,
            format=stored.format,
            content_type=stored.content_type,
            model=stored.model,
            scale=stored.scale,
            bytes=stored.bytes,
            timings=stored.timings,
            faces=None if stored.faces is None else list(stored.faces),
        )


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    kind: str
    scale: int | None
    ready: bool
    status: str = Field(description='"loaded", "loads on first use" or "unavailable" (see error)')
    weights_source: str | None = None
    error: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's documented error statuses, each answered with the ``ErrorResponse`` envelope."""
    return {status: {"model": ErrorResponse} for status in statuses}
