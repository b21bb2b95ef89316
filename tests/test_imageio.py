"""Image I/O: every kind of input decoded and written back as the same kind, limits and bad input."""

from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms, ImageFile, ImageOps

from models import formats
from models.errors import (
    AnimatedImageError,
    CorruptImageError,
    EmptyInputError,
    ImageTooLargeError,
    InvalidOptionError,
    UnsupportedImageTypeError,
)
from models.formats import content_type, normalize_format, sniff_format
from models.image import Image
from models.imageio import MAX_ICC_BYTES, decode_image, encode_image, read_header
from models.limits import Limits

RNG = np.random.default_rng(1234)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _u16(*shape: int) -> np.ndarray:
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def _save(pil: PILImage.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _after_ihdr(png: bytes, chunk: bytes) -> bytes:
    return png[:33] + chunk + png[33:]


def _cv2_png16(rgb_or_rgba: np.ndarray) -> bytes:
    channels = rgb_or_rgba.shape[2]
    bgr = cv2.cvtColor(rgb_or_rgba, cv2.COLOR_RGB2BGR if channels == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buffer = cv2.imencode(".png", bgr)
    assert ok
    return buffer.tobytes()


def _cv2_decode(data: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None
    return pixels


def _u8_of(values: np.ndarray) -> np.ndarray:
    assert values.dtype == np.uint8, values.dtype  # decoding keeps 8-bit pixels as they are
    return values


def _u16_of(values: np.ndarray) -> np.ndarray:
    assert values.dtype == np.uint16, values.dtype
    return values


def _exif(orientation: int) -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# --- sniffing and names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "pil_format"),
    [
        ("png", "PNG"),
        ("jpeg", "JPEG"),
        ("webp", "WEBP"),
        ("gif", "GIF"),
        ("bmp", "BMP"),
        ("tiff", "TIFF"),
    ],
)
def test_sniff_format_reads_magic_bytes(fmt: str, pil_format: str) -> None:
    data = _save(PILImage.fromarray(_u8(4, 4, 3)), pil_format)
    assert sniff_format(data) == fmt


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world", b"%PDF-1.7\n", b"BMW is a car brand, not a bitmap", b"RIFF\0\0\0\0WAVE"],
)
def test_sniff_format_refuses_non_images(data: bytes) -> None:
    assert sniff_format(data) is None


def test_normalize_format_and_content_type() -> None:
    assert normalize_format("JPG") == "jpeg"
    assert normalize_format(" png ") == "png"
    assert normalize_format("WebP") == "webp"
    assert content_type("jpg") == "image/jpeg"
    assert [content_type(f) for f in formats.FORMATS] == ["image/png", "image/jpeg", "image/webp"]
    for bad in ("gif", "tiff", "", "image/png"):
        with pytest.raises(InvalidOptionError, match="unsupported output format"):
            normalize_format(bad)


# --- every kind comes back as the same kind -----------------------------------------------------


def test_rgb_png_round_trip_is_exact() -> None:
    source = _u8(7, 5, 3)
    image = decode_image(_save(PILImage.fromarray(source), "PNG"))
    assert (image.color.dtype, image.color.shape, image.alpha) == (np.uint8, (7, 5, 3), None)
    assert (image.bit_depth, image.format) == (8, "png")
    assert np.array_equal(_u8_of(image.color), source)
    again = decode_image(encode_image(image))
    assert np.array_equal(again.color, image.color)
    assert np.array_equal(np.asarray(PILImage.open(io.BytesIO(encode_image(image)))), source)


def test_rgba_png_keeps_alpha_separate() -> None:
    source = _u8(6, 4, 4)
    image = decode_image(_save(PILImage.fromarray(source), "PNG"))
    assert image.color.shape == (6, 4, 3)
    assert image.alpha is not None and image.alpha.shape == (6, 4)
    assert np.array_equal(_u8_of(image.color), source[..., :3])
    assert np.array_equal(_u8_of(image.alpha), source[..., 3])
    written = PILImage.open(io.BytesIO(encode_image(image)))
    assert written.mode == "RGBA"
    assert np.array_equal(np.asarray(written), source)


def test_gray_and_gray_alpha_png_stay_gray() -> None:
    gray = _u8(5, 6)
    image = decode_image(_save(PILImage.fromarray(gray), "PNG"))
    assert image.color.shape == (5, 6, 1) and image.alpha is None and image.is_gray
    assert np.array_equal(_u8_of(image.color[..., 0]), gray)
    written = PILImage.open(io.BytesIO(encode_image(image)))
    assert written.mode == "L" and np.array_equal(np.asarray(written), gray)

    la = _u8(5, 6, 2)
    image = decode_image(_save(PILImage.fromarray(la), "PNG"))
    assert image.color.shape == (5, 6, 1) and image.alpha is not None
    assert np.array_equal(_u8_of(image.alpha), la[..., 1])
    written = PILImage.open(io.BytesIO(encode_image(image)))
    assert written.mode == "LA" and np.array_equal(np.asarray(written), la)


def test_gray_with_transparent_key_gets_alpha() -> None:
    gray = np.array([[0, 7], [7, 200]], np.uint8)
    image = decode_image(_save(PILImage.fromarray(gray), "PNG", transparency=7))
    assert image.alpha is not None
    assert np.array_equal(_u8_of(image.alpha), [[255, 0], [0, 255]])


def test_palette_becomes_rgb_and_transparent_palette_rgba() -> None:
    palette_image = PILImage.fromarray(_u8(8, 8, 3)).quantize(16)
    expected = np.asarray(palette_image.convert("RGB"))
    image = decode_image(_save(palette_image, "PNG"))
    assert image.alpha is None and np.array_equal(_u8_of(image.color), expected)

    data = _save(palette_image, "PNG", transparency=3)
    expected_rgba = np.asarray(PILImage.open(io.BytesIO(data)).convert("RGBA"))
    image = decode_image(data)
    assert image.alpha is not None
    assert np.array_equal(_u8_of(image.color), expected_rgba[..., :3])
    assert np.array_equal(_u8_of(image.alpha), expected_rgba[..., 3])
    assert 0 < np.count_nonzero(image.alpha == 0) < 64  # index 3 is transparent, the rest opaque


def test_one_bit_becomes_gray() -> None:
    bits = RNG.integers(0, 2, (6, 9)).astype(bool)
    image = decode_image(_save(PILImage.fromarray(bits), "PNG"))
    assert image.color.shape == (6, 9, 1) and image.bit_depth == 8
    assert np.array_equal(image.color[..., 0], bits * 255)


def test_cmyk_jpeg_becomes_rgb_and_drops_the_cmyk_profile() -> None:
    cmyk = PILImage.frombytes("CMYK", (8, 8), _u8(8, 8, 4).tobytes())
    data = _save(cmyk, "JPEG", quality=100, icc_profile=b"pretend this is a CMYK profile")
    decoded_by_pillow = PILImage.open(io.BytesIO(data))
    assert decoded_by_pillow.mode == "CMYK" and "icc_profile" in decoded_by_pillow.info
    image = decode_image(data)
    assert image.color.shape == (8, 8, 3) and image.icc_profile is None
    assert np.array_equal(_u8_of(image.color), np.asarray(decoded_by_pillow.convert("RGB")))


def test_16_bit_gray_png_round_trip_is_exact() -> None:
    source = _u16(5, 7)
    image = decode_image(_save(PILImage.fromarray(source), "PNG"))
    assert (image.bit_depth, image.color.shape, image.alpha) == (16, (5, 7, 1), None)
    assert np.array_equal(_u16_of(image.color[..., 0]), source)
    written = PILImage.open(io.BytesIO(encode_image(image)))
    assert written.mode.startswith("I;16") and np.array_equal(np.asarray(written), source)
    assert np.array_equal(decode_image(encode_image(image)).color, image.color)


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_color_png_round_trip_is_exact(channels: int) -> None:
    source = _u16(6, 5, channels)
    image = decode_image(_cv2_png16(source))
    assert (image.bit_depth, image.color.shape) == (16, (6, 5, 3))
    assert np.array_equal(_u16_of(image.color), source[..., :3])
    if channels == 4:
        assert image.alpha is not None and np.array_equal(_u16_of(image.alpha), source[..., 3])
    else:
        assert image.alpha is None
    data = encode_image(image)
    assert data[24:26] == bytes([16, 2 if channels == 3 else 6])
    # An independent decoder reads back the very same 16-bit values.
    bgr = _cv2_decode(data)
    assert bgr.dtype == np.uint16
    assert np.array_equal(bgr[..., 2::-1], source[..., :3])
    assert np.array_equal(decode_image(data).color, image.color)


def test_16_bit_gray_alpha_png_round_trip_is_exact() -> None:
    gray, alpha = _u16(4, 6, 1), _u16(4, 6)
    image = Image(color=gray / np.float32(65535), alpha=alpha / np.float32(65535), bit_depth=16)
    data = encode_image(image)
    assert data[24:26] == bytes([16, 4])
    bgra = _cv2_decode(data)
    assert np.array_equal(bgra[..., 0], gray[..., 0]) and np.array_equal(bgra[..., 3], alpha)
    back = decode_image(data)
    assert back.is_gray and back.bit_depth == 16 and back.alpha is not None
    assert np.array_equal(_u16_of(back.color), gray)
    assert np.array_equal(_u16_of(back.alpha), alpha)


def test_16_bit_to_jpeg_and_webp_is_reduced_to_8_bit() -> None:
    smooth = np.linspace(0, 65535, 16 * 16 * 3).astype(np.uint16).reshape(16, 16, 3)
    image = decode_image(_cv2_png16(smooth))
    for fmt in ("jpeg", "webp"):
        back = decode_image(encode_image(image, fmt, quality=100))
        assert back.bit_depth == 8 and back.format == fmt
        assert np.abs(back.as_float().color - image.as_float().color).max() < 0.03


# --- EXIF orientation and ICC -------------------------------------------------------------------


def test_exif_orientation_6_jpeg_swaps_width_and_height() -> None:
    data = _save(PILImage.fromarray(_u8(2, 4, 3)), "JPEG", exif=_exif(6))
    assert PILImage.open(io.BytesIO(data)).size == (4, 2)
    image = decode_image(data)
    assert (image.height, image.width) == (4, 2)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation: int) -> None:
    source = _u8(3, 5, 4)
    data = _save(PILImage.fromarray(source), "PNG", exif=_exif(orientation))
    expected = np.asarray(ImageOps.exif_transpose(PILImage.open(io.BytesIO(data))))
    image = decode_image(data)
    assert image.alpha is not None
    assert np.array_equal(_u8_of(image.color), expected[..., :3])
    assert np.array_equal(_u8_of(image.alpha), expected[..., 3])


def test_exif_orientation_applies_to_16_bit_color_png() -> None:
    source = _u16(2, 3, 3)
    image = decode_image(_after_ihdr(_cv2_png16(source), _png_chunk(b"eXIf", _exif(6))))
    assert image.bit_depth == 16
    assert np.array_equal(_u16_of(image.color), np.rot90(source, -1))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_icc_profile_is_kept_and_written_back(fmt: str) -> None:
    data = _save(PILImage.fromarray(_u8(8, 8, 3)), fmt.upper(), icc_profile=SRGB)
    image = decode_image(data)
    assert image.icc_profile == SRGB
    for out in formats.FORMATS:
        written = PILImage.open(io.BytesIO(encode_image(image, out)))
        assert written.info.get("icc_profile") == SRGB, out


def test_icc_profile_survives_the_16_bit_path() -> None:
    data = _after_ihdr(
        _cv2_png16(_u16(3, 3, 3)), _png_chunk(b"iCCP", b"sRGB\x00\x00" + zlib.compress(SRGB))
    )
    image = decode_image(data)
    assert image.icc_profile == SRGB and image.bit_depth == 16
    assert decode_image(encode_image(image)).icc_profile == SRGB
    assert PILImage.open(io.BytesIO(encode_image(image))).info["icc_profile"] == SRGB


def test_gray_icc_profile_is_dropped_when_webp_makes_the_image_rgb() -> None:
    gray_profile = bytes(16) + b"GRAY" + bytes(108)
    image = Image(color=np.full((4, 4, 1), 0.5, np.float32), icc_profile=gray_profile)
    back = decode_image(encode_image(image, "webp"))
    assert back.color.shape == (4, 4, 3) and back.icc_profile is None


# --- encoding options ---------------------------------------------------------------------------


def test_default_format_keeps_writable_sources_and_falls_back_to_png() -> None:
    pixels = _u8(4, 4, 3)
    for pil_format, expected in [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp")]:
        image = decode_image(_save(PILImage.fromarray(pixels), pil_format))
        assert sniff_format(encode_image(image)) == expected
    for pil_format in ("GIF", "BMP", "TIFF"):
        image = decode_image(_save(PILImage.fromarray(pixels), pil_format))
        assert image.format == pil_format.lower()
        assert sniff_format(encode_image(image)) == "png"


def test_still_gif_bmp_tiff_decode_exactly() -> None:
    pixels = _u8(5, 4, 3)
    for pil_format in ("BMP", "TIFF"):
        image = decode_image(_save(PILImage.fromarray(pixels), pil_format))
        assert np.array_equal(_u8_of(image.color), pixels)
    palette_image = PILImage.fromarray(pixels).quantize(8)
    image = decode_image(_save(palette_image, "GIF"))
    assert np.array_equal(_u8_of(image.color), np.asarray(palette_image.convert("RGB")))


def test_default_qualities() -> None:
    image = decode_image(_save(PILImage.fromarray(_u8(16, 16, 3)), "PNG"))
    assert encode_image(image, "jpeg") == encode_image(image, "jpeg", 95)
    assert encode_image(image, "jpeg") != encode_image(image, "jpeg", 50)
    assert encode_image(image, "webp") == encode_image(image, "webp", 90)
    assert len(encode_image(image, "webp", 10)) < len(encode_image(image, "webp", 100))


def test_lossy_round_trip_is_close() -> None:
    smooth = np.linspace(0, 1, 32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
    image = Image(color=smooth)
    for fmt in ("jpeg", "webp"):
        back = decode_image(encode_image(image, fmt))
        assert back.format == fmt and np.abs(back.as_float().color - smooth).max() < 0.06


def test_lossless_webp_is_exact_even_under_transparent_pixels() -> None:
    source = _u8(6, 7, 4)
    source[0, :, 3] = 0
    image = decode_image(_save(PILImage.fromarray(source), "PNG"))
    back = decode_image(encode_image(image, "webp", lossless=True))
    assert back.format == "webp" and back.alpha is not None and image.alpha is not None
    assert np.array_equal(back.color, image.color) and np.array_equal(back.alpha, image.alpha)


@pytest.mark.parametrize("quality", [0, 101, -5, 2.5, True])
def test_quality_out_of_range_is_refused(quality: object) -> None:
    image = Image(color=np.zeros((2, 2, 3), np.float32))
    with pytest.raises(InvalidOptionError, match="quality"):
        encode_image(image, "jpeg", quality)  # type: ignore[arg-type]


def test_alpha_to_jpeg_is_refused() -> None:
    image = Image(color=np.zeros((2, 2, 3), np.float32), alpha=np.ones((2, 2), np.float32))
    with pytest.raises(InvalidOptionError, match="JPEG cannot store transparency"):
        encode_image(image, "jpg")
    assert sniff_format(encode_image(image, "webp")) == "webp"


def test_too_wide_for_webp_is_refused() -> None:
    image = Image(color=np.zeros((1, 16_384, 3), np.float32))
    with pytest.raises(InvalidOptionError, match="16383"):
        encode_image(image, "webp")
    assert sniff_format(encode_image(image, "png")) == "png"


def test_quantization_rounds_and_clips() -> None:
    values = np.array([[-0.3, 0.0, 10.49 / 255, 10.51 / 255, 1.0, 1.7]], np.float32)[..., None]
    written = PILImage.open(io.BytesIO(encode_image(Image(color=values), "png")))
    assert np.asarray(written).tolist() == [[0, 0, 10, 11, 255, 255]]


def test_malformed_image_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="alpha"):
        encode_image(Image(color=np.zeros((2, 2, 3), np.float32), alpha=np.zeros((3, 2))))


# --- bad input and limits -----------------------------------------------------------------------


def test_zero_bytes() -> None:
    with pytest.raises(EmptyInputError):
        decode_image(b"")


@pytest.mark.parametrize(
    "data", [b"just some text\n", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", b"BMW is a car brand"]
)
def test_non_images_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImageTypeError):
        decode_image(data)


def test_byte_limit_is_checked_first() -> None:
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(b"not even an image", Limits(max_upload_bytes=10))
    assert (caught.value.limit, caught.value.actual) == (10, 17)


@pytest.mark.parametrize(
    "data",
    [
        _save(PILImage.fromarray(_u8(32, 32, 3)), "PNG"),
        _save(PILImage.fromarray(_u8(32, 32, 3)), "JPEG"),
        _save(PILImage.fromarray(_u8(32, 32, 3)), "WEBP"),
        _cv2_png16(_u16(32, 32, 3)),
    ],
    ids=["png", "jpeg", "webp", "png16"],
)
def test_truncated_images_are_corrupt(data: bytes) -> None:
    for cut in (len(data) // 2, 40):
        with pytest.raises(CorruptImageError):
            decode_image(data[:cut])


def test_magic_bytes_then_garbage_is_corrupt() -> None:
    with pytest.raises(CorruptImageError):
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(100))


def _png_header(width: int, height: int, depth: int = 8, colour_type: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(cv2, "imdecode", refuse)


def test_header_claiming_a_huge_image_is_refused_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_decoding(monkeypatch)
    started = time.perf_counter()
    for depth, colour_type in ((8, 2), (16, 2), (16, 6)):
        with pytest.raises(ImageTooLargeError):
            decode_image(_png_header(100_000, 100_000, depth, colour_type))
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(("depth", "colour_type"), [(8, 2), (16, 2), (8, 0)])
def test_pixel_limit_comes_from_the_header(
    monkeypatch: pytest.MonkeyPatch, depth: int, colour_type: int
) -> None:
    _no_decoding(monkeypatch)
    # 8000 x 7000 = 56 MP: over our default 50 MP, under Pillow's own 89 MP guard.
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(_png_header(8000, 7000, depth, colour_type))
    assert (caught.value.limit, caught.value.actual) == (50_000_000, 56_000_000)
    with pytest.raises(ImageTooLargeError):
        decode_image(_png_header(20, 20, depth, colour_type), Limits(max_input_pixels=399))


def test_image_at_the_pixel_limit_is_accepted() -> None:
    data = _save(PILImage.fromarray(_u8(20, 20, 3)), "PNG")
    assert decode_image(data, Limits(max_input_pixels=400)).pixels == 400


def _frames(mode: str = "RGB") -> list[PILImage.Image]:
    return [PILImage.fromarray(_u8(8, 8, 3)).convert(mode) for _ in range(3)]


@pytest.mark.parametrize("pil_format", ["PNG", "WEBP", "GIF", "TIFF"])
def test_animated_and_multi_frame_images_are_refused(pil_format: str) -> None:
    first, *rest = _frames()
    data = _save(first, pil_format, save_all=True, append_images=rest)
    assert getattr(PILImage.open(io.BytesIO(data)), "n_frames", 1) == 3
    with pytest.raises(AnimatedImageError):
        decode_image(data)


def test_single_frame_apng_is_a_still_image() -> None:
    first = _frames()[0]
    data = _save(first, "PNG", save_all=True, append_images=[])
    assert np.array_equal(_u8_of(decode_image(data).color), np.asarray(first))


def test_mpo_jpeg_uses_the_primary_image() -> None:
    first = PILImage.new("RGB", (8, 8), (200, 30, 30))
    second = PILImage.new("RGB", (8, 8), (30, 30, 200))
    data = _save(first, "MPO", save_all=True, append_images=[second], quality=100)
    assert getattr(PILImage.open(io.BytesIO(data)), "n_frames", 1) == 2
    image = decode_image(data)
    assert image.format == "jpeg" and image.color.shape == (8, 8, 3)
    assert np.abs(_u8_of(image.color).astype(int) - (200, 30, 30)).max() <= 2


def test_output_limit() -> None:
    limits = Limits(max_output_pixels=100)
    limits.check_output(10, 10)
    with pytest.raises(ImageTooLargeError) as caught:
        limits.check_output(10, 11)
    assert (caught.value.limit, caught.value.actual) == (100, 110)
    assert Limits().max_output_pixels == 128_000_000


def test_face_requests_have_their_own_pixel_limit() -> None:
    data = _save(PILImage.fromarray(_u8(20, 20, 3)), "PNG")
    limits = Limits(max_input_pixels=400, max_face_input_pixels=399)
    assert decode_image(data, limits).pixels == 400
    with pytest.raises(ImageTooLargeError):
        decode_image(data, limits, face=True)


@pytest.mark.parametrize(
    ("mode", "orientation", "size", "alpha"),
    [
        ("RGB", 1, (30, 20), False),
        ("RGBA", 1, (30, 20), True),
        ("LA", 6, (20, 30), True),
        ("P", 8, (20, 30), False),
        ("L", 3, (30, 20), False),
    ],
)
def test_header_is_read_without_decoding(
    monkeypatch: pytest.MonkeyPatch, mode: str, orientation: int, size: tuple[int, int], alpha: bool
) -> None:
    pil = PILImage.new(mode, (30, 20))
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    data = _save(pil, "PNG", exif=exif.tobytes())
    _no_decoding(monkeypatch)
    header = read_header(data)
    assert (header.format, (header.width, header.height), header.has_alpha) == ("png", size, alpha)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_limits_must_be_positive_integers(bad: object) -> None:
    with pytest.raises(ValueError, match="max_input_pixels"):
        Limits(max_input_pixels=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["WEBP", "JPEG"])
def test_an_oversized_icc_profile_is_dropped(fmt: str) -> None:
    huge = SRGB + b"\0" * (MAX_ICC_BYTES + 1)
    data = _save(PILImage.fromarray(_u8(2, 2, 3)), fmt, icc_profile=huge)
    image = decode_image(data)
    assert image.icc_profile is None
    assert len(encode_image(image, "png")) < 10_000  # the result does not carry it either
    kept = decode_image(_save(PILImage.fromarray(_u8(2, 2, 3)), fmt, icc_profile=SRGB))
    assert kept.icc_profile == SRGB


def test_a_png_with_an_oversized_icc_profile_is_refused_by_name() -> None:
    # Pillow will not inflate an iCCP chunk over 1 MB (PngImagePlugin.MAX_TEXT_CHUNK)
    huge = SRGB + b"\0" * (MAX_ICC_BYTES + 1)
    data = _save(PILImage.fromarray(_u8(2, 2, 3)), "PNG", icc_profile=huge)
    with pytest.raises(CorruptImageError):
        decode_image(data)
