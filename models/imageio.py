"""Bytes ↔ :class:`~models.image.Image`: sniff, decode within limits, encode PNG / JPEG / WebP.

The type is sniffed from the bytes (magic numbers), never from a file name or a client's content type.
Every kind comes back as the same kind: gray stays gray, alpha stays alpha, 16-bit PNG stays 16-bit.
Decisions:

* Animated images (APNG, animated WebP, GIF with several frames, multi-page TIFF) are refused with
  :class:`AnimatedImageError`: upscaling one frame and returning a still would silently drop the rest,
  and upscaling every frame multiplies the cost by the frame count. A JPEG's extra MPO frames
  (previews, depth maps from phone cameras) are not animation: the primary image is used.
* Pillow decodes 16-bit colour PNGs only as 8-bit, so those go through OpenCV; we write 16-bit PNGs
  ourselves (a few lines of zlib) so that gray + alpha and the ICC profile survive, which
  ``cv2.imencode`` cannot do. Other 16-bit colour inputs (TIFF) are read as 8-bit.
* 16-bit images written as JPEG or WebP are reduced to 8-bit; gray images written as WebP become RGB
  (WebP has no gray mode). Alpha to JPEG is refused rather than flattened.
* The EXIF orientation is applied to the pixels and EXIF is not written back (it would rotate twice;
  it also drops location data). The ICC profile is kept, except a CMYK one (CMYK is converted to RGB
  without colour management, so its profile no longer describes the pixels) and one over
  ``MAX_ICC_BYTES``.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image as PILImage

from models.errors import (
    AnimatedImageError,
    CorruptImageError,
    EmptyInputError,
    ImageError,
    ImageTooLargeError,
    InvalidOptionError,
    UnsupportedImageTypeError,
)
from models.formats import (
    DEFAULT_QUALITY,
    INPUT_FORMATS,
    check_encodable,
    output_format,
    sniff_format,
)
from models.image import Image

if TYPE_CHECKING:
    from models.limits import Limits

# zlib level for PNG. On a 2048² upscaled photo: level 6 (Pillow's default) 2.8 s / 3.55 MB,
# level 3 0.9 s / 3.93 MB, level 1 0.5 s / 4.2 MB. Outputs are large, so encode time matters more.
PNG_COMPRESS_LEVEL = 1

# Real colour profiles are a few KB (sRGB 3 KB; large camera/printer profiles under 1 MB); larger
# ones are dropped, or a tiny image could carry megabytes into every result.
MAX_ICC_BYTES = 1 << 20

_PILLOW_NAMES = {f: f.upper() for f in INPUT_FORMATS}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
# Pillow mode → the mode we convert to before reading the pixels; anything else is refused.
_TARGET_MODES = {
    "1": "L",
    "L": "L",
    "LA": "LA",
    "La": "LA",
    "P": "RGB",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}
# EXIF orientation → (transpose, flip vertically, flip horizontally), as ImageOps.exif_transpose does.
_ORIENTATIONS = {
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),
    7: (True, True, True),
    8: (True, True, False),
}
_EXIF_ORIENTATION_TAG = 0x0112


# --- decoding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, read without decoding the pixels; sizes are upright (EXIF applied)."""

    format: str
    width: int
    height: int
    has_alpha: bool

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes) -> ImageHeader:
    """The format, upright size and alpha of encoded bytes, without decoding the pixels.

    Raises (models.errors): EmptyInputError, UnsupportedImageTypeError, CorruptImageError,
    AnimatedImageError, ImageTooLargeError (decompression bombs).
    """
    if not data:
        raise EmptyInputError("the image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageTypeError(
            "not an image we accept: send PNG, JPEG or WebP (still GIF, BMP and TIFF are also read)"
        )
    with _pillow_errors(fmt):
        pil = PILImage.open(io.BytesIO(data), formats=[_PILLOW_NAMES[fmt]])
    with pil, _pillow_errors(fmt):
        # A JPEG's MPO frames are previews or depth maps, not animation.
        if fmt != "jpeg" and getattr(pil, "is_animated", False):
            raise AnimatedImageError(
                f"animated or multi-frame {fmt.upper()} images are not supported; send a still image"
            )
        width, height = pil.size
        if _ORIENTATIONS.get(_orientation(pil), (False,))[0]:
            width, height = height, width
        has_alpha = pil.mode in _ALPHA_MODES or "transparency" in pil.info
    return ImageHeader(format=fmt, width=width, height=height, has_alpha=has_alpha)


def decode_image(data: bytes, limits: Limits | None = None, *, face: bool = False) -> Image:
    """Decode PNG, JPEG, WebP (or a still GIF, BMP, TIFF) bytes, upright, as integer pixels,
    refusing bytes and pixels over ``limits`` (the face limits with ``face``) before decoding.

    Raises what ``read_header`` raises, and ImageTooLargeError over a limit.
    """
    if limits is None:
        from models.limits import Limits  # pydantic: only when no limits are given

        limits = Limits()
    limits.check_bytes(len(data))
    header = read_header(data)
    limits.check_input(header.width, header.height, face=face)
    return decode_pixels(data, header)


def decode_pixels(data: bytes, header: ImageHeader) -> Image:
    """Decode bytes whose header was read (and checked against the limits) already."""
    fmt = header.format
    with _pillow_errors(fmt):
        pil = PILImage.open(io.BytesIO(data), formats=[_PILLOW_NAMES[fmt]])
    with pil, _pillow_errors(fmt):
        icc = pil.info.get("icc_profile") or None
        if icc is not None and len(icc) > MAX_ICC_BYTES:
            icc = None  # a profile this large is not a colour profile but a payload riding along
        if fmt == "png" and _png_bit_depth_and_type(data) in ((16, 2), (16, 4), (16, 6)):
            color, alpha = _decode_png16_color(data, pil.width, pil.height)
            # eXIf after the pixel data is only seen by decoding with Pillow: ignored on this path.
            orientation = _orientation(pil) if "exif" in pil.info else 1
        else:
            pil.load()
            if pil.mode == "CMYK":
                icc = None
            color, alpha = _pillow_arrays(pil)
            orientation = _orientation(pil)
    bit_depth = 16 if color.dtype == np.uint16 else 8
    return Image(
        color=np.ascontiguousarray(_orient(color, orientation)),
        alpha=None if alpha is None else np.ascontiguousarray(_orient(alpha, orientation)),
        bit_depth=bit_depth,
        format=fmt,
        icc_profile=icc,
    )


@contextmanager
def _pillow_errors(fmt: str) -> Iterator[None]:
    """Map what Pillow raises on bombs and damaged files to our errors."""
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"decompression bomb refused: {e}") from e
    except Exception as e:  # decoders raise many types (OSError, SyntaxError, struct.error...)
        raise CorruptImageError(f"the {fmt.upper()} image is damaged or truncated: {e}") from e


def _png_bit_depth_and_type(data: bytes) -> tuple[int, int] | None:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _decode_png16_color(
    data: bytes, width: int, height: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit RGB, RGBA or gray + alpha PNG via OpenCV (BGR order; gray + alpha comes as BGRA)."""
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise CorruptImageError(f"the 16-bit PNG image is damaged: {e}") from e
    if bgr is None or bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[:2] != (height, width):
        raise CorruptImageError("the 16-bit PNG image is damaged or truncated")
    if data[25] == 4:
        return bgr[..., :1], bgr[..., 3]
    if bgr.shape[2] == 4:
        return bgr[..., 2::-1], bgr[..., 3]
    return bgr[..., ::-1], None


def _pillow_arrays(pil: PILImage.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 1|3) colour and (H, W) alpha as uint8, or uint16 for 16-bit gray."""
    if pil.mode.startswith("I;16"):
        return np.asarray(pil).astype(np.uint16)[..., None], None
    target = _TARGET_MODES.get(pil.mode)
    if target is None:
        raise UnsupportedImageTypeError(f"images with {pil.mode!r} pixels are not supported")
    if "transparency" in pil.info and target in ("L", "RGB"):
        target += "A"  # a transparent palette entry or colour key becomes an alpha channel
    pixels = np.asarray(pil if pil.mode == target else pil.convert(target))
    if pixels.ndim == 2:
        return pixels[..., None], None
    if pixels.shape[2] in (2, 4):
        return pixels[..., :-1], pixels[..., -1]
    return pixels, None


def _orientation(pil: PILImage.Image) -> int:
    try:
        value = pil.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # damaged EXIF must not refuse an otherwise good image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """A view of (H, W[, C]) pixels turned upright for an EXIF orientation."""
    if orientation not in _ORIENTATIONS:
        return pixels
    transpose, flip_v, flip_h = _ORIENTATIONS[orientation]
    if transpose:
        pixels = pixels.swapaxes(0, 1)
    if flip_v:
        pixels = pixels[::-1]
    if flip_h:
        pixels = pixels[:, ::-1]
    return pixels


# --- encoding -----------------------------------------------------------------------------------


def encode_image(
    image: Image,
    format: str | None = None,
    quality: int | None = None,
    *,
    lossless: bool = False,
    png_level: int = PNG_COMPRESS_LEVEL,
) -> bytes:
    """Encode as PNG, JPEG or WebP (None: the source format if writable, else PNG).

    ``quality`` (1..100) applies to JPEG and lossy WebP; defaults 95 and 90. ``lossless`` writes
    lossless WebP (at libwebp's fastest effort, ignoring quality). Raises InvalidOptionError for an
    unknown format, a bad quality, alpha to JPEG or a side over the format's maximum.
    """
    fmt = output_format(format, image.format)
    level = _quality(fmt, quality)
    _check_encodable(image, fmt, lossless)
    if fmt == "png" and image.bit_depth == 16:
        return _encode_png16(image, png_level)
    icc = image.icc_profile
    pixels = _quantize(image.color, 255)
    if fmt == "webp" and image.is_gray:
        pixels = np.repeat(pixels, 3, axis=2)  # WebP has no gray mode
        icc = None if icc is not None and icc[16:20] == b"GRAY" else icc
    if image.alpha is not None:
        pixels = np.concatenate([pixels, _quantize(image.alpha, 255)[..., None]], axis=2)
    pil = PILImage.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    options: dict[str, object] = {"icc_profile": icc} if icc else {}
    if fmt == "png":
        options["compress_level"] = png_level
    elif fmt == "webp" and lossless:
        options.update(lossless=True, exact=True, method=0, quality=0)
    else:
        options["quality"] = level
    buffer = io.BytesIO()
    pil.save(buffer, _PILLOW_NAMES[fmt], **options)
    return buffer.getvalue()


def _quality(fmt: str, quality: int | None) -> int | None:
    if quality is None:
        return DEFAULT_QUALITY.get(fmt)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InvalidOptionError(f"quality must be an integer from 1 to 100, got {quality!r}")
    return quality


def _check_encodable(image: Image, fmt: str, lossless: bool) -> None:
    color, alpha = image.color, image.alpha
    if color.ndim != 3 or color.shape[2] not in (1, 3):
        raise ValueError(f"Image.color must be (H, W, 1) or (H, W, 3), got {color.shape}")
    if alpha is not None and alpha.shape != color.shape[:2]:
        raise ValueError(f"Image.alpha must be {color.shape[:2]}, got {alpha.shape}")
    if image.bit_depth not in (8, 16):
        raise ValueError(f"Image.bit_depth must be 8 or 16, got {image.bit_depth}")
    if fmt == "jpeg" and lossless:
        raise InvalidOptionError("JPEG cannot be lossless; use png or webp")
    check_encodable(fmt, image.width, image.height, has_alpha=alpha is not None)


def _quantize(values: np.ndarray, top: int) -> np.ndarray:
    """Pixels as uint8 (``top`` 255) or uint16 (``top`` 65535): floats in [0, 1] are rounded and
    clipped; integers of the other depth are rescaled with rounding; the same depth is kept."""
    dtype = np.uint16 if top > 255 else np.uint8
    if values.dtype == dtype:
        return values
    if values.dtype == np.uint16:  # 16 → 8 bit
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if values.dtype == np.uint8:  # 8 → 16 bit
        return values.astype(np.uint16) * 257
    scaled = values * np.float32(top)
    scaled += 0.5
    np.clip(scaled, 0, top, out=scaled)
    return scaled.astype(dtype)


def _encode_png16(image: Image, level: int) -> bytes:
    """A 16-bit PNG of any channel count, with the ICC profile: one IDAT, Up filter on every row."""
    samples = _quantize(image.color, 65535)
    if image.alpha is not None:
        samples = np.concatenate([samples, _quantize(image.alpha, 65535)[..., None]], axis=2)
    height, width, channels = samples.shape
    rows = samples.astype(">u2").reshape(height, -1).view(np.uint8)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # Up: each byte minus the byte above (mod 256); the first row is unchanged
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    if image.icc_profile:
        chunks.append(
            _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(image.icc_profile))
        )
    chunks.append(_png_chunk(b"IDAT", zlib.compress(filtered.data, level)))
    chunks.append(_png_chunk(b"IEND", b""))
    return _PNG_SIGNATURE + b"".join(chunks)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
