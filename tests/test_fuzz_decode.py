"""Fuzzed decoding, no server: mutated PNG / JPEG / WebP / GIF / BMP / TIFF bytes either decode or
raise a named error (a ``models.errors.SuperResError``), within a per-example deadline, and a header
that declares a huge canvas is refused before the canvas is allocated.

Seeds are small valid files of every kind the service reads; hypothesis mutates them (bit flips,
truncation, splices of other files, random header fields, PNG chunks reordered or dropped with
their CRCs fixed so the decoder sees them, declared sizes up to each format's maximum).
Derandomized and bounded: the same examples on every run.
"""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from PIL import ImageCms

from models.errors import (
    AnimatedImageError,
    CorruptImageError,
    ImageTooLargeError,
    SuperResError,
)
from models.image import Image
from models.imageio import ImageHeader, decode_image, read_header
from models.limits import Limits

LIMITS = Limits(max_input_pixels=1_000_000, max_face_input_pixels=500_000)
# Generous for a ~1 ms decode, so that a loaded CI machine does not flake; a hang still shows.
FUZZ = settings(
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing example is printed
    database=None,
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=False,
)
MAX_HEAP_GROWTH = 256 * 2**20  # far below any canvas a huge header declares (GBs)

# A decoder that loops forever fails here after 2 minutes (pytest-timeout), not after 10.
pytestmark = pytest.mark.timeout(120)


# --- seeds ---------------------------------------------------------------------------------------


def _save(image: PILImage.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to be upright
    return exif.tobytes()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(11)
    rgb = PILImage.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8))
    rgba = PILImage.fromarray(rng.integers(0, 256, (9, 12, 4), dtype=np.uint8))
    gray = rgb.convert("L")
    gray16 = PILImage.fromarray(rng.integers(0, 65536, (7, 10), dtype=np.uint16))
    palette = rgb.convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    frames = [rgb, rgb.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)]
    rgba16 = rng.integers(0, 65536, (6, 5, 4), dtype=np.uint16)
    ok, png16_rgba = cv2.imencode(".png", rgba16)
    assert ok
    return {
        "png-rgb": _save(rgb, "PNG"),
        "png-rgb-icc-interlaced": _save(rgb, "PNG", icc_profile=srgb, interlace=1),
        "png-rgba": _save(rgba, "PNG"),
        "png-gray": _save(gray, "PNG"),
        "png-gray-alpha": _save(rgba.convert("LA"), "PNG"),
        "png-gray16": _save(gray16, "PNG"),
        "png-rgba16": png16_rgba.tobytes(),
        "png-palette-trns": _save(palette, "PNG", transparency=3),
        "png-1bit": _save(rgb.convert("1"), "PNG"),
        "png-exif": _save(rgb, "PNG", exif=_exif_rotated()),
        "apng": _save(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "jpeg": _save(rgb, "JPEG", quality=90),
        "jpeg-progressive-exif": _save(rgb, "JPEG", progressive=True, exif=_exif_rotated()),
        "jpeg-gray": _save(gray, "JPEG"),
        "jpeg-cmyk-icc": _save(rgb.convert("CMYK"), "JPEG", icc_profile=srgb),
        "webp-lossy": _save(rgb, "WEBP", quality=70),
        "webp-lossless": _save(rgb, "WEBP", lossless=True),
        "webp-alpha": _save(rgba, "WEBP", quality=70),
        "webp-animated": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "gif": _save(palette, "GIF", transparency=2),
        "gif-animated": _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "bmp": _save(rgb, "BMP"),
        "bmp-rgba": _save(rgba, "BMP"),
        "bmp-palette": _save(palette, "BMP"),
        "tiff": _save(rgb, "TIFF"),
        "tiff-lzw-rgba": _save(rgba, "TIFF", compression="tiff_lzw"),
        "tiff-tiled": _save(rgb, "TIFF", tiled=True, tile_size=(16, 16)),
        "tiff-gray16": _save(gray16, "TIFF"),
        "tiff-multipage": _save(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
    }


SEEDS = _seeds()
SEED_NAMES = sorted(SEEDS)
ANIMATED = {"apng", "gif-animated", "webp-animated", "tiff-multipage"}


# --- format-aware edits (sizes, PNG chunks) ------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """(type, body) of each chunk, or None when the bytes are not a whole PNG."""
    chunks, pos = [], 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if pos + 12 + length > len(data):
            return None
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks if data[:8] == b"\x89PNG\r\n\x1a\n" and chunks else None


def _png_join(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG of these chunks with every CRC right, so the decoder reads them."""
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        crc = zlib.crc32(kind + body)
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc))
    return b"".join(out)


def _with_png_size(data: bytes, width: int, height: int) -> bytes:
    chunks = _png_chunks(data)
    if not chunks or chunks[0][0] != b"IHDR":
        return data
    body = struct.pack(">II", width, height) + chunks[0][1][8:]
    return _png_join([(b"IHDR", body), *chunks[1:]])


def _jpeg_sof(data: bytes) -> int | None:
    """Offset of the first SOFn segment's marker."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return pos
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


def _with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    at = _jpeg_sof(data)
    if at is None or at + 9 > len(data):
        return data
    size = struct.pack(">HH", min(height, 0xFFFF), min(width, 0xFFFF))
    return data[: at + 5] + size + data[at + 9 :]


def _with_webp_size(data: bytes, width: int, height: int) -> bytes:
    kind = data[12:16]
    width, height = min(max(1, width), 2**24), min(max(1, height), 2**24)
    if kind == b"VP8X" and len(data) >= 30:  # 24-bit canvas size minus one
        size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        return data[:24] + size + data[30:]
    if kind == b"VP8L" and len(data) >= 25:  # 14-bit sizes minus one after the 0x2f signature
        bits = int.from_bytes(data[21:25], "little") & ~0x0FFFFFFF
        bits |= ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
        return data[:21] + bits.to_bytes(4, "little") + data[25:]
    if kind == b"VP8 " and len(data) >= 30:  # 14-bit sizes after the start code
        size = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
        return data[:26] + size + data[30:]
    return data


def _with_gif_size(data: bytes, width: int, height: int) -> bytes:
    size = struct.pack("<HH", min(width, 0xFFFF), min(height, 0xFFFF))
    data = data[:6] + size + data[10:]  # the logical screen
    at = data.find(b"\x2c", 13)  # the first image descriptor, if it can be found
    if at > 0 and at + 9 <= len(data):
        data = data[: at + 5] + size + data[at + 9 :]
    return data


def _with_bmp_size(data: bytes, width: int, height: int) -> bytes:
    if len(data) < 26:
        return data
    size = struct.pack("<ii", min(width, 2**31 - 1), min(height, 2**31 - 1))
    return data[:18] + size + data[26:]


def _with_tiff_size(data: bytes, width: int, height: int) -> bytes:
    """ImageWidth (256) and ImageLength (257) of the first IFD, rewritten in place."""
    if len(data) < 8:
        return data
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return data
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    out = bytearray(data)
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(data):
            break
        tag, kind = struct.unpack(order + "HH", data[at : at + 4])
        if tag in (256, 257):
            value = min(width if tag == 256 else height, 2**32 - 1)
            if kind == 3:  # SHORT
                out[at + 8 : at + 12] = struct.pack(order + "HH", min(value, 0xFFFF), 0)
            else:
                out[at + 8 : at + 12] = struct.pack(order + "I", value)
    return bytes(out)


SIZE_EDITORS: dict[str, Callable[[bytes, int, int], bytes]] = {
    "png": _with_png_size,
    "apng": _with_png_size,
    "jpeg": _with_jpeg_size,
    "webp": _with_webp_size,
    "gif": _with_gif_size,
    "bmp": _with_bmp_size,
    "tiff": _with_tiff_size,
}


def _edit_size(name: str, data: bytes, width: int, height: int) -> bytes:
    return SIZE_EDITORS[name.split("-")[0]](data, width, height)


# --- mutations -----------------------------------------------------------------------------------

SIZES = st.one_of(
    st.integers(0, 64),
    st.sampled_from([255, 256, 1000, 1001, 4096, 16383, 16384, 65535, 65536, 2**31 - 1, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)


@st.composite
def _flip_bits(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        # Half the flips in the first 64 bytes, where the headers are.
        end = min(len(out), 64) if draw(st.booleans()) else len(out)
        out[draw(st.integers(0, end - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


@st.composite
def _truncate(draw: st.DrawFn, data: bytes) -> bytes:
    return data[: draw(st.integers(0, len(data) - 1))]


@st.composite
def _splice(draw: st.DrawFn, data: bytes) -> bytes:
    """A slice of any seed (this one too) inserted or written over a slice of this one."""
    other = SEEDS[draw(st.sampled_from(SEED_NAMES))]
    start = draw(st.integers(0, len(other) - 1))
    piece = other[start : start + draw(st.integers(1, 256))]
    at = draw(st.integers(0, len(data)))
    skip = draw(st.integers(0, len(piece))) if draw(st.booleans()) else 0
    return data[:at] + piece + data[at + skip :]


@st.composite
def _header_field(draw: st.DrawFn, data: bytes) -> bytes:
    """A random 1, 2 or 4 byte integer, either endianness, written in the first 64 bytes."""
    width = draw(st.sampled_from([1, 2, 4]))
    at = draw(st.integers(0, max(0, min(len(data), 64) - width)))
    value = draw(st.integers(0, 2 ** (8 * width) - 1))
    field = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
    return data[:at] + field + data[at + width :]


@st.composite
def _png_chunk_edit(draw: st.DrawFn, data: bytes) -> bytes:
    """PNG chunks dropped, duplicated, swapped or their bodies cut, then every CRC fixed."""
    chunks = _png_chunks(data)
    if not chunks:
        return data
    i = draw(st.integers(0, len(chunks) - 1))
    j = draw(st.integers(0, len(chunks) - 1))
    edit = draw(st.sampled_from(["drop", "duplicate", "swap", "cut", "fix-crc"]))
    if edit == "drop":
        del chunks[i]
    elif edit == "duplicate":
        chunks.insert(j, chunks[i])
    elif edit == "swap":
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif edit == "cut":
        kind, body = chunks[i]
        chunks[i] = (kind, body[: draw(st.integers(0, len(body)))])
    return _png_join(chunks)


@st.composite
def _png_ihdr_field(draw: st.DrawFn, data: bytes) -> bytes:
    """Bit depth, colour type, compression, filter or interlace set to any byte, CRC fixed."""
    chunks = _png_chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        return data
    body = bytearray(chunks[0][1])
    body[draw(st.integers(8, 12))] = draw(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 16, 255]))
    return _png_join([(b"IHDR", bytes(body)), *chunks[1:]])


MUTATIONS = [_flip_bits, _truncate, _splice, _header_field, _png_chunk_edit, _png_ihdr_field]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A seed with one to four mutations (a declared size among them, sometimes)."""
    name = draw(st.sampled_from(SEED_NAMES))
    data = SEEDS[name]
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 5)) == 0:
            data = _edit_size(name, data, draw(SIZES), draw(SIZES))
        elif data:
            data = draw(draw(st.sampled_from(MUTATIONS))(data))
    return name, data


# --- measuring -----------------------------------------------------------------------------------


def _peak_rss() -> int | None:
    """The process's resident high-water mark (Linux), in bytes."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 if found else None


@contextmanager
def bounded_memory(limit: int) -> Iterator[None]:
    """Fails if the block grew the resident high-water mark (C allocations: Pillow, OpenCV) or
    the Python / numpy heap (tracemalloc) by more than ``limit`` bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        rss_before = _peak_rss()
    except OSError:
        rss_before = None
    tracemalloc.start()
    try:
        yield
    finally:
        _, heap_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss_after = _peak_rss()
    assert heap_peak <= limit, f"the Python/numpy heap grew by {heap_peak / 2**20:.0f} MiB"
    if rss_before is not None and rss_after is not None:
        grown = rss_after - rss_before
        assert grown <= limit, f"the resident set grew by {grown / 2**20:.0f} MiB"


def _named(call: Callable[[], Any]) -> Any:
    """The call's result, or None when it raised a named error; anything else propagates."""
    try:
        return call()
    except SuperResError:
        return None


# --- the properties ------------------------------------------------------------------------------


def test_every_seed_is_a_valid_file() -> None:
    """Mutations start from real files: the stills decode, the animations are refused as such."""
    for name, data in SEEDS.items():
        if name in ANIMATED:
            with pytest.raises(AnimatedImageError):
                decode_image(data, LIMITS)
        else:
            image = decode_image(data, LIMITS)
            assert image.width > 0 and image.height > 0, name


@settings(FUZZ, max_examples=300)
@given(sample=mutated())
def test_read_header_raises_only_named_errors(sample: tuple[str, bytes]) -> None:
    header = _named(lambda: read_header(sample[1]))
    if header is not None:
        assert isinstance(header, ImageHeader)
        assert header.width >= 0 and header.height >= 0


@settings(FUZZ, max_examples=600)
@given(sample=mutated(), face=st.booleans())
def test_decode_raises_only_named_errors_and_stays_within_limits(
    sample: tuple[str, bytes], face: bool
) -> None:
    data = sample[1]
    with bounded_memory(MAX_HEAP_GROWTH):
        image = _named(lambda: decode_image(data, LIMITS, face=face))
    if image is None:
        return
    assert isinstance(image, Image)
    assert image.color.ndim == 3 and image.color.shape[2] in (1, 3), image.color.shape
    assert image.color.dtype in (np.uint8, np.uint16)
    assert image.alpha is None or image.alpha.shape == image.color.shape[:2]
    assert image.pixels <= (LIMITS.max_face_input_pixels if face else LIMITS.max_input_pixels)
    header = read_header(data)  # what the limits were checked against is what was decoded
    assert (header.width, header.height) == (image.width, image.height)


@settings(FUZZ, max_examples=100)
@given(
    name=st.sampled_from(SEED_NAMES),
    width=st.integers(1001, 2**32 - 1),
    height=st.integers(1001, 2**32 - 1),
)
def test_a_huge_declared_canvas_is_refused_before_it_is_allocated(
    name: str, width: int, height: int
) -> None:
    data = _edit_size(name, SEEDS[name], width, height)
    with bounded_memory(MAX_HEAP_GROWTH):
        image = _named(lambda: decode_image(data, LIMITS))
    # Refused, or the format could not hold the size and the file still says something small.
    assert image is None or image.pixels <= LIMITS.max_input_pixels


@pytest.mark.parametrize("name", SEED_NAMES)
def test_a_declared_size_over_the_limit_is_refused_as_too_large(name: str) -> None:
    """A header declaring 2000 x 2000 is ImageTooLargeError (413), before any pixel is decoded;
    except an animation (refused as such first) and a WebP whose frame still says 9 x 12 (its
    canvas and frame disagree: a damaged file)."""
    data = _edit_size(name, SEEDS[name], 2000, 2000)
    expected = AnimatedImageError if name in ANIMATED else ImageTooLargeError
    expected = CorruptImageError if name == "webp-alpha" else expected
    with bounded_memory(MAX_HEAP_GROWTH), pytest.raises(expected):
        decode_image(data, LIMITS)
