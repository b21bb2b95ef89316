"""Placeholder until the face pipeline lands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from models.errors import ModelNotReadyError
from serve_app.settings import Settings


@dataclass(frozen=True)
class FaceOptions:
    scale: float | None = None
    only_center_face: bool = False
    max_faces: int = 10
    weight: float = 0.5
    background_model: str | None = None
    format: str | None = None
    quality: int | None = None


@serve.deployment(name="FaceRestorer", max_ongoing_requests=4)
class FaceRestorer:
    def __init__(self, settings: Settings, upscaler: DeploymentHandle) -> None:
        self._upscaler = upscaler

    async def models(self) -> list[dict[str, Any]]:
        return []

    async def enhance(self, data: bytes, options: FaceOptions, limits: Any) -> Any:
        raise ModelNotReadyError("face enhancement is not implemented yet")
