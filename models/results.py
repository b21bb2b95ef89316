"""What a pipeline hands back: an encoded image and the facts about it. Crosses deployment handles,
so it imports neither torch nor an image library."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel


class FaceBox(BaseModel):
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in output pixels
    score: float


@dataclass(frozen=True)
class EncodedImage:
    """An encoded result, ready to store."""

    data: bytes
    content_type: str
    format: str
    width: int
    height: int
    model: str
    scale: float
    timings: dict[str, float] = field(default_factory=dict)
    faces: tuple[FaceBox, ...] | None = None
