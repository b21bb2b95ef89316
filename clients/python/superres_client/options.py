"""What a request asks for, declared once per operation: the service's HTTP routes (query or form
fields), its Python handle API and deployments, and this SDK all validate with these models.

They live in the SDK because it is the package both sides install: the service depends on it, and
it needs only pydantic. Each option's bounds and default live here and nowhere else; OpenAPI shows
them as they are.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIN_SCALE, MAX_SCALE = 1.0, 8.0
DEFAULT_FACE_SCALE = 2.0  # GFPGAN's own default upscale
DEFAULT_MAX_FACES, MAX_FACES = 10, 100
NO_BACKGROUND_MODEL = "none"

OutputFormat = Literal["png", "jpeg", "jpg", "webp"]


class _Output(BaseModel):
    """How the result is written; shared by every operation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: OutputFormat | None = Field(
        default=None, description="Output format; default: the input's (PNG for other inputs)."
    )
    quality: int | None = Field(
        default=None, ge=1, le=100, description="JPEG/WebP quality; default 95 / 90."
    )

    @field_validator("format")
    @classmethod
    def _canonical_format(cls, value: str | None) -> str | None:
        return "jpeg" if value == "jpg" else value


class UpscaleOptions(_Output):
    """Options of ``POST /v1/upscale`` and ``handle.upscale``."""

    model: str | None = Field(
        default=None,
        max_length=64,
        description="An upscaling model listed by /v1/models; default: the service's default.",
    )
    scale: float | None = Field(
        default=None,
        ge=MIN_SCALE,
        le=MAX_SCALE,
        description="Output size / input size; default: the model's own scale.",
    )
    denoise: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="realesr-general-x4v3 only: denoise strength from 0 (none) to 1 (full).",
    )
    face_enhance: bool = Field(
        default=False, description="Also restore faces with GFPGAN (see /v1/face-enhance)."
    )

    @model_validator(mode="after")
    def _face_enhance_takes_no_denoise(self) -> UpscaleOptions:
        if self.face_enhance and self.denoise is not None:
            raise ValueError("denoise cannot be combined with face_enhance")
        return self

    def face_options(self) -> FaceEnhanceOptions:
        """The face-enhance request this ``face_enhance=true`` upscale stands for."""
        return FaceEnhanceOptions(
            scale=self.scale if self.scale is not None else DEFAULT_FACE_SCALE,
            background_model=self.model,
            format=self.format,
            quality=self.quality,
        )


class FaceEnhanceOptions(_Output):
    """Options of ``POST /v1/face-enhance`` and ``handle.face_enhance``."""

    scale: float = Field(
        default=DEFAULT_FACE_SCALE, ge=MIN_SCALE, le=MAX_SCALE, description="Output / input size."
    )
    only_center_face: bool = Field(
        default=False, description="Restore only the face nearest the centre."
    )
    max_faces: int = Field(
        default=DEFAULT_MAX_FACES, ge=1, le=MAX_FACES, description="Restore at most the N largest."
    )
    weight: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="1: the restored face; lower keeps more of the original.",
    )
    background_model: str | None = Field(
        default=None,
        max_length=64,
        description=f"The upscaler for the rest of the image, or {NO_BACKGROUND_MODEL!r} for a "
        "plain resize; default: the service's default model.",
    )

    @property
    def upscales_background(self) -> bool:
        return self.background_model != NO_BACKGROUND_MODEL
