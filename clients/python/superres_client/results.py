"""What the service answers: a stored result (``.url``, ``.read()``, ``.save()``) and a job view."""

from __future__ import annotations

import builtins
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from superres_client.errors import SuperresError, from_response


class Result(BaseModel):
    """An upscaled image in the service's object store, downloadable at ``url`` until
    ``expires_at`` with no credentials (a presigned URL)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(description="The result's object key in the store.")
    url: str
    expires_at: datetime | None = None
    width: int
    height: int
    format: str
    content_type: str = ""
    model: str = ""
    scale: float = 0.0
    bytes: int = 0
    timings: dict[str, float] = Field(default_factory=dict)
    faces: list[dict[str, Any]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _job_results_name_the_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "id" not in data and "key" in data:
            data = {**data, "id": data["key"]}
        return data

    def read(self, timeout: float = 60.0) -> builtins.bytes:
        """The image's bytes, downloaded from the presigned URL."""
        try:
            response = httpx.get(self.url, timeout=timeout)
        except httpx.HTTPError as exc:
            raise SuperresError(f"download failed: {exc}", code="download_failed") from exc
        if response.status_code != 200:
            raise from_response(response)
        return response.content

    async def aread(self, timeout: float = 60.0) -> builtins.bytes:
        """``read`` for async code."""
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.get(self.url)
        except httpx.HTTPError as exc:
            raise SuperresError(f"download failed: {exc}", code="download_failed") from exc
        if response.status_code != 200:
            raise from_response(response)
        return response.content

    def save(self, path: str | Path, timeout: float = 60.0) -> Path:
        """Download the image to ``path`` (written whole or not at all); returns the path."""
        path = Path(path)
        data = self.read(timeout)
        partial = path.with_name(f".{path.name}.part")
        partial.write_bytes(data)
        partial.replace(path)
        return path


class Progress(BaseModel):
    done: int = 0
    total: int = 0


TERMINAL = ("succeeded", "failed", "cancelled")


class JobView(BaseModel):
    """``GET /v1/jobs/{id}`` as it was last read."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    operation: str = "upscale"
    options: dict[str, Any] = Field(default_factory=dict)
    batch_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    cache_hit: bool = False
    progress: Progress | None = None
    result: Result | None = None
    error: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL
