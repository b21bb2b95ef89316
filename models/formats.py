"""Image formats by their bytes: what we read, what we write, and what each output format allows.

Nothing here decodes pixels or imports an image library, so the HTTP ingress can sniff and refuse
an upload without loading OpenCV or Pillow's codecs.
"""

from __future__ import annotations

from models.errors import InvalidOptionError

FORMATS = ("png", "jpeg", "webp")
"""Formats we write (and read)."""
INPUT_FORMATS = (*FORMATS, "gif", "bmp", "tiff")
"""Formats we read; an image read from the last three is written as PNG unless told otherwise."""
DEFAULT_QUALITY = {"jpeg": 95, "webp": 90}
MAX_SIDE = {"jpeg": 65_500, "webp": 16_383}
"""The largest width or height each output format can store."""

_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


def sniff_format(data: bytes) -> str | None:
    """The input format named by the magic bytes (one of ``INPUT_FORMATS``), or None."""
    head = bytes(data[:32])
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    # "BM" alone is too weak (text can start with it): also require a known DIB header size.
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    return None


def normalize_format(name: str) -> str:
    """The canonical output format name (``"jpg"`` → ``"jpeg"``); InvalidOptionError if not writable."""
    key = name.strip().lower()
    key = "jpeg" if key == "jpg" else key
    if key not in FORMATS:
        raise InvalidOptionError(
            f"unsupported output format {name!r}; use one of {', '.join(FORMATS)}"
        )
    return key


def output_format(requested: str | None, source: str) -> str:
    """The format a result is written in: the requested one, else the source's if writable, else PNG."""
    if requested is not None:
        return normalize_format(requested)
    return source if source in FORMATS else "png"


def content_type(fmt: str) -> str:
    """The MIME type of an output format."""
    return _CONTENT_TYPES[normalize_format(fmt)]


def check_encodable(fmt: str, width: int, height: int, *, has_alpha: bool) -> None:
    """InvalidOptionError when a ``width`` x ``height`` image cannot be written as ``fmt``."""
    if fmt == "jpeg" and has_alpha:
        raise InvalidOptionError("JPEG cannot store transparency; use png or webp")
    max_side = MAX_SIDE.get(fmt)
    if max_side is not None and max(width, height) > max_side:
        raise InvalidOptionError(
            f"{fmt.upper()} images are limited to {max_side} px per side and this one would be "
            f"{width}x{height}; use png"
        )
