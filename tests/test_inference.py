"""The upscale drivers: image kinds, outscale, sync/async agreement and isolation of requests."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import cv2
import numpy as np
import pytest
import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

from models.canvas import TiledJob
from models.errors import InvalidOptionError, UnsupportedModelError
from models.image import Image
from models.inference import (
    CPU,
    Forward,
    Placement,
    output_size,
    upscale_image,
    upscale_image_async,
)
from models.tiling import TileConfig

SMALL_TILE = TileConfig(tile=32, pad=4, blend=4)


def _nearest(scale: int) -> Forward:
    """A purely local model: nearest-neighbour upscaling."""
    return lambda batch: batch.repeat_interleave(scale, 2).repeat_interleave(scale, 3)


def _torch_forward(module: torch.nn.Module) -> Forward:
    module.eval()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(batch).clamp(0, 1)

    return forward


@pytest.fixture(scope="module")
def compact() -> Forward:
    torch.manual_seed(0)
    return _torch_forward(Compact(num_feat=8, num_conv=2, upscale=4))


@pytest.fixture(scope="module")
def compact2() -> Forward:
    torch.manual_seed(2)
    return _torch_forward(Compact(num_feat=8, num_conv=3, upscale=2))


@pytest.fixture(scope="module")
def rrdb() -> Forward:
    torch.manual_seed(1)
    return _torch_forward(ESRGAN(num_filters=8, num_blocks=1, scale=2))


def _pixels(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _nearest_plane(plane: np.ndarray, scale: int) -> np.ndarray:
    return plane.repeat(scale, axis=0).repeat(scale, axis=1)


def _q(values: np.ndarray, top: int = 255) -> np.ndarray:
    """Floats in [0, 1] as the integers the drivers return."""
    return np.floor(values.astype(np.float64) * top + 0.5).astype(np.int64)


def _close(a: np.ndarray, b: np.ndarray, atol: int = 1) -> None:
    np.testing.assert_allclose(a.astype(np.int64), b.astype(np.int64), rtol=0, atol=atol)


# --- image kinds --------------------------------------------------------------------------------


def test_rgb_through_a_local_model_is_exact() -> None:
    color = _pixels(45, 70, 3)
    result = upscale_image(Image(color), _nearest(2), scale=2, tile=SMALL_TILE)
    assert result.color.dtype == np.uint8
    _close(result.color, _q(_nearest_plane(color, 2)), atol=0)
    assert result.alpha is None


def test_gray_with_alpha_comes_back_gray_with_alpha() -> None:
    gray, alpha = _pixels(40, 33, 1, seed=1), _pixels(40, 33, seed=2)
    image = Image(gray, alpha, bit_depth=16, format="png", icc_profile=b"icc")
    result = upscale_image(image, _nearest(3), scale=3, tile=SMALL_TILE)
    assert result.color.shape == (120, 99, 1)
    assert result.alpha is not None and result.alpha.shape == (120, 99)
    assert result.color.dtype == result.alpha.dtype == np.uint16
    _close(result.color, _q(_nearest_plane(gray, 3), 65535))
    _close(result.alpha, _q(_nearest_plane(alpha, 3), 65535))
    assert (result.bit_depth, result.format, result.icc_profile) == (16, "png", b"icc")


@pytest.mark.parametrize(
    "image",
    [
        Image(_pixels(37, 50, 3), bit_depth=8, format="jpeg"),
        Image(_pixels(37, 50, 1), bit_depth=16, format="png"),
        Image(_pixels(37, 50, 3), _pixels(37, 50), bit_depth=8, format="webp"),
        Image(_pixels(37, 50, 3), _pixels(37, 50), bit_depth=16, format="png", icc_profile=b"p"),
        Image(_pixels(37, 50, 1), _pixels(37, 50), bit_depth=8, format="png"),
    ],
    ids=["rgb8", "gray16", "rgba8", "rgba16-icc", "gray-alpha"],
)
def test_every_kind_comes_back_the_same_kind(image: Image, compact: Forward) -> None:
    result = upscale_image(image, compact, scale=4, tile=SMALL_TILE)
    assert result.color.shape == (148, 200, image.color.shape[2])
    assert result.is_gray == image.is_gray
    assert result.has_alpha == image.has_alpha
    dtype = np.uint16 if image.bit_depth == 16 else np.uint8
    if result.alpha is not None:
        assert result.alpha.shape == (148, 200)
        assert result.alpha.dtype == dtype
    assert result.color.dtype == dtype
    kind = (image.bit_depth, image.format, image.icc_profile)
    assert (result.bit_depth, result.format, result.icc_profile) == kind


def test_gray_is_the_mean_of_the_model_on_replicated_channels(compact: Forward) -> None:
    gray = _pixels(30, 30, 1, seed=5)
    as_rgb = upscale_image(Image(np.repeat(gray, 3, axis=2)), compact, scale=4, tile=SMALL_TILE)
    as_gray = upscale_image(Image(gray), compact, scale=4, tile=SMALL_TILE)
    _close(as_gray.color[:, :, 0], np.rint(as_rgb.color.mean(axis=2)))


# --- sizes and outscale -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outscale", "expected"), [(1, (21, 37)), (2, (42, 74)), (3.5, (74, 130)), (8, (168, 296))]
)
def test_outscale_sizes(outscale: float, expected: tuple[int, int]) -> None:
    assert output_size(21, 37, outscale) == expected
    image = Image(_pixels(21, 37, 3), _pixels(21, 37))
    result = upscale_image(image, _nearest(4), scale=4, outscale=outscale, tile=SMALL_TILE)
    assert result.color.shape == (*expected, 3)
    assert result.alpha is not None and result.alpha.shape == expected


def test_output_size_rounds_half_up_and_never_reaches_zero() -> None:
    assert output_size(3, 5, 1.5) == (5, 8)
    assert output_size(1, 1, 1) == (1, 1)


def test_outscale_resizes_the_network_output(compact2: Forward) -> None:
    color = _pixels(24, 28, 3, seed=6)
    network = upscale_image(Image(color), compact2, scale=2, tile=SMALL_TILE).color
    down = upscale_image(Image(color), compact2, scale=2, outscale=1.5, tile=SMALL_TILE).color
    up = upscale_image(Image(color), compact2, scale=2, outscale=3, tile=SMALL_TILE).color
    area = cv2.resize(network, (42, 36), interpolation=cv2.INTER_AREA)
    lanczos = cv2.resize(network, (84, 72), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(down, area)
    np.testing.assert_array_equal(up, lanczos)


@pytest.mark.parametrize("outscale", [0.5, 0.99, 8.01, float("nan"), float("inf"), "2", True])
def test_invalid_outscale_is_refused(outscale: object) -> None:
    with pytest.raises(InvalidOptionError, match="outscale must be"):
        upscale_image(Image(_pixels(8, 8, 3)), _nearest(2), scale=2, outscale=outscale)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="outscale must be"):
        output_size(8, 8, outscale)  # type: ignore[arg-type]


@pytest.mark.parametrize("batch_size", [0, -1, 2.0])
def test_invalid_batch_size_is_refused(batch_size: object) -> None:
    with pytest.raises(InvalidOptionError, match="batch_size must be a positive integer"):
        upscale_image(Image(_pixels(8, 8, 3)), _nearest(2), scale=2, batch_size=batch_size)  # type: ignore[arg-type]


def test_a_model_of_the_wrong_scale_is_named() -> None:
    with pytest.raises(UnsupportedModelError, match="is its scale really 4"):
        upscale_image(Image(_pixels(20, 20, 3)), _nearest(2), scale=4)


# --- batching -----------------------------------------------------------------------------------


def test_batches_hold_equal_tiles_up_to_batch_size(compact2: Forward) -> None:
    shapes: list[tuple[int, ...]] = []

    def recording(batch: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(batch.shape))
        return compact2(batch)

    image = Image(_pixels(50, 61, 3, seed=7), _pixels(50, 61, seed=8))
    batched = upscale_image(image, recording, scale=2, tile=SMALL_TILE, batch_size=3)
    assert len(shapes) > 2
    assert {shape[1:] for shape in shapes} == {(3, 32, 32)}
    assert max(shape[0] for shape in shapes) == 3
    single = upscale_image(image, compact2, scale=2, tile=SMALL_TILE, batch_size=1)
    _close(batched.color, single.color)
    assert batched.alpha is not None and single.alpha is not None
    _close(batched.alpha, single.alpha)


def test_async_driver_equals_the_sync_one(rrdb: Forward) -> None:
    async def forward_tile(tile: torch.Tensor) -> torch.Tensor:
        return rrdb(tile[None])[0]

    image = Image(_pixels(45, 38, 1, seed=9), _pixels(45, 38, seed=10), bit_depth=16)
    sync = upscale_image(image, rrdb, scale=2, outscale=2.5, tile=SMALL_TILE)
    result = asyncio.run(
        upscale_image_async(image, forward_tile, scale=2, outscale=2.5, tile=SMALL_TILE)
    )
    assert result.color.shape == sync.color.shape == (113, 95, 1)
    _close(result.color, sync.color, atol=2)
    assert result.alpha is not None and sync.alpha is not None
    _close(result.alpha, sync.alpha, atol=2)
    assert result.bit_depth == 16


class _Batcher:
    """A stand-in for @serve.batch: tiles submitted in one loop turn run as one forward pass."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self.pending: list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] = []
        self.batch_sizes: list[int] = []

    async def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending.append((tile, future))
        return await future

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        groups: dict[tuple[int, ...], list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]]]
        groups = defaultdict(list)
        for tile, future in pending:
            groups[tuple(tile.shape)].append((tile, future))
        for group in groups.values():
            self.batch_sizes.append(len(group))
            outputs = self.forward(torch.stack([tile for tile, _ in group]))
            for (_, future), output in zip(group, outputs, strict=True):
                future.set_result(output)


def test_concurrent_async_requests_share_batches_but_not_pixels(compact2: Forward) -> None:
    images = [
        Image(_pixels(40, 70, 3, seed=11)),
        Image(_pixels(64, 45, 1, seed=12), _pixels(64, 45, seed=13)),
        Image(_pixels(33, 33, 3, seed=14), _pixels(33, 33, seed=15)),
    ]
    batcher = _Batcher(compact2)

    async def run_all() -> list[Image]:
        calls = [upscale_image_async(im, batcher, scale=2, tile=SMALL_TILE) for im in images]
        return list(await asyncio.gather(*calls))

    results = asyncio.run(run_all())
    # the largest request has 12 tiles: bigger batches merged tiles of different requests
    assert max(batcher.batch_sizes) > 12
    for image, result in zip(images, results, strict=True):
        alone = upscale_image(image, compact2, scale=2, tile=SMALL_TILE)
        assert result.color.shape == alone.color.shape
        _close(result.color, alone.color)
        if image.alpha is None:
            assert result.alpha is None
        else:
            assert result.alpha is not None and alone.alpha is not None
            _close(result.alpha, alone.alpha)


def test_max_in_flight_bounds_the_tiles_submitted_at_once(compact2: Forward) -> None:
    image = Image(_pixels(64, 70, 3, seed=16))
    batcher = _Batcher(compact2)
    result = asyncio.run(
        upscale_image_async(image, batcher, scale=2, tile=SMALL_TILE, max_in_flight=4)
    )
    assert max(batcher.batch_sizes) == 4
    alone = upscale_image(image, compact2, scale=2, tile=SMALL_TILE)
    _close(result.color, alone.color)
    with pytest.raises(InvalidOptionError, match="max_in_flight must be a positive integer"):
        asyncio.run(upscale_image_async(image, batcher, scale=2, max_in_flight=0))


def test_a_failing_tile_fails_the_request_and_stops_submitting() -> None:
    calls = 0

    async def failing(tile: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        number = calls
        await asyncio.sleep(0)
        if number == 3:
            raise RuntimeError("device lost")
        return _nearest(2)(tile[None])[0]

    image = Image(_pixels(100, 100, 3, seed=17))
    with pytest.raises(RuntimeError, match="device lost"):
        asyncio.run(upscale_image_async(image, failing, scale=2, tile=SMALL_TILE, max_in_flight=2))
    assert 3 <= calls < 10  # of 25 tiles: the rest were never submitted


# --- device placement ---------------------------------------------------------------------------


def test_decoded_integer_pixels_go_through_exactly() -> None:
    rng = np.random.default_rng(20)
    eight = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    eight.flags.writeable = False  # decoded pixels are often read-only views
    result = upscale_image(Image(eight), _nearest(2), scale=2, tile=SMALL_TILE)
    np.testing.assert_array_equal(result.color, _nearest_plane(eight, 2))
    sixteen = rng.integers(0, 65536, (20, 30, 1), dtype=np.uint16)
    alpha = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    image = Image(sixteen, alpha, bit_depth=16)
    result = upscale_image(image, _nearest(3), scale=3, tile=SMALL_TILE)
    assert result.color.dtype == np.uint16 and result.alpha is not None
    _close(result.color, _nearest_plane(sixteen, 3), atol=1)
    _close(result.alpha, _nearest_plane(alpha, 3), atol=1)


def test_the_canvas_leaves_the_device_only_over_its_budget() -> None:
    meta = torch.device("meta")
    canvas = TiledJob.canvas_bytes(100, 200, 4)
    assert Placement(meta).canvas_device(100, 200, 4) == meta
    assert Placement(meta, canvas_budget_bytes=canvas).canvas_device(100, 200, 4) == meta
    assert Placement(meta, canvas_budget_bytes=canvas - 1).canvas_device(100, 200, 4) == CPU
    image = Image(_pixels(40, 50, 3, seed=21))
    small = Placement(canvas_budget_bytes=1)  # host canvas: the same result
    _close(
        upscale_image(image, _nearest(2), scale=2, tile=SMALL_TILE, placement=small).color,
        upscale_image(image, _nearest(2), scale=2, tile=SMALL_TILE).color,
        atol=0,
    )


def test_activation_bytes_per_pixel_grow_with_the_network() -> None:
    from models.loading import activation_bytes_per_pixel

    torch.manual_seed(0)
    small = activation_bytes_per_pixel(
        Compact(num_feat=8, num_conv=2, upscale=2).eval(), dtype_bytes=4
    )
    wide = activation_bytes_per_pixel(
        Compact(num_feat=32, num_conv=2, upscale=2).eval(), dtype_bytes=4
    )
    x4 = activation_bytes_per_pixel(
        Compact(num_feat=8, num_conv=2, upscale=4).eval(), dtype_bytes=4
    )
    half = activation_bytes_per_pixel(
        Compact(num_feat=8, num_conv=2, upscale=2).eval(), dtype_bytes=2
    )
    assert small < wide and small < x4 and half * 2 == small


def test_the_openvino_backend_serves_the_same_pixels(tmp_path) -> None:
    pytest.importorskip("openvino")
    from models.loading import load_upscaler
    from models.registry import user_model_spec
    from tests.tiny_models import save_tiny_rrdb

    path = tmp_path / "tiny-rrdb.pth"
    spec = user_model_spec("tiny", sha256=save_tiny_rrdb(path, scale=2), path=str(path))
    torch_net = load_upscaler(spec, path, precision="fp32", backend="torch")
    ov_net = load_upscaler(spec, path, precision="fp32", backend="openvino")
    auto_net = load_upscaler(spec, path, precision="fp32", backend="auto")
    assert (torch_net.backend, ov_net.backend, auto_net.backend) == (
        "torch",
        "openvino",
        "openvino",
    )
    image = Image(_pixels(40, 52, 3, seed=22))
    results = [
        upscale_image(image, net.forward, scale=2, tile=SMALL_TILE).color
        for net in (torch_net, ov_net)
    ]
    _close(results[0], results[1], atol=1)
    with pytest.raises(InvalidOptionError, match="backend must be one of"):
        load_upscaler(spec, path, backend="tensorrt")
