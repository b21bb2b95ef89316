"""What a pipeline hands back: an encoded image and the facts about it, and the same once stored.
Crosses deployment handles, so it imports neither torch nor an image library."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel

from models.storage import ObjectStore


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


@dataclass(frozen=True)
class StoredImage:
    """A result in the object store: what the API answers, without the bytes."""

    key: str
    url: str  # presigned GET URL
    expires_at: datetime
    bytes: int
    width: int
    height: int
    format: str
    content_type: str
    model: str
    scale: float
    timings: dict[str, float]
    faces: tuple[FaceBox, ...] | None = None


def store_result(
    store: ObjectStore, result: EncodedImage, *, source: bytes, key: str | None = None
) -> StoredImage:
    """Put ``result`` into ``store`` (blocking) under ``key`` (default: a new unique key), with the
    model, scale and the source's digest as object metadata; ``store_s`` joins the timings."""
    started = time.perf_counter()
    stored = store.put(
        result.data,
        key=key,
        content_type=result.content_type,
        extension=result.format,
        metadata={
            "model": result.model,
            "scale": f"{result.scale:g}",
            "input-sha256": hashlib.sha256(source).hexdigest(),
        },
    )
    return StoredImage(
        key=stored.key,
        url=stored.url,
        expires_at=stored.expires_at,
        bytes=stored.bytes,
        width=result.width,
        height=result.height,
        format=result.format,
        content_type=result.content_type,
        model=result.model,
        scale=result.scale,
        timings={**result.timings, "store_s": round(time.perf_counter() - started, 4)},
        faces=result.faces,
    )
