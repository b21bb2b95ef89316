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

from models.errors import InvalidOptionError, UnsupportedModelError
from models.image import Image
from models.inference import Forward, output_size, upscale_image, upscale_image_async
from models.tiling import TileConfig

SMALL_TILE = TileConfig(tile=32, pad=4, blend=4)


def _nearest(scale: int) -> Forward:
    """A purely local model: nearest-neighbour upscaling."""
    return lambda batch: batch.repeat(scale, axis=2).repeat(scale, axis=3)


def _torch_forward(module: torch.nn.Module) -> Forward:
    module.eval()

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).numpy()

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


# --- image kinds --------------------------------------------------------------------------------


def test_rgb_through_a_local_model_is_exact() -> None:
    color = _pixels(45, 70, 3)
    result = upscale_image(Image(color), _nearest(2), scale=2, tile=SMALL_TILE)
    assert result.color.dtype == np.float32
    np.testing.assert_allclose(result.color, _nearest_plane(color, 2), rtol=0, atol=1e-6)
    assert result.alpha is None


def test_gray_with_alpha_comes_back_gray_with_alpha() -> None:
    gray, alpha = _pixels(40, 33, 1, seed=1), _pixels(40, 33, seed=2)
    image = Image(gray, alpha, bit_depth=16, format="png", icc_profile=b"icc")
    result = upscale_image(image, _nearest(3), scale=3, tile=SMALL_TILE)
    assert result.color.shape == (120, 99, 1)
    assert result.alpha is not None and result.alpha.shape == (120, 99)
    np.testing.assert_allclose(result.color, _nearest_plane(gray, 3), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.alpha, _nearest_plane(alpha, 3), rtol=0, atol=1e-6)
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
    if result.alpha is not None:
        assert result.alpha.shape == (148, 200)
        assert result.alpha.dtype == np.float32
    assert result.color.dtype == np.float32
    assert result.color.min() >= 0.0 and result.color.max() <= 1.0
    kind = (image.bit_depth, image.format, image.icc_profile)
    assert (result.bit_depth, result.format, result.icc_profile) == kind


def test_gray_is_the_mean_of_the_model_on_replicated_channels(compact: Forward) -> None:
    gray = _pixels(30, 30, 1, seed=5)
    as_rgb = upscale_image(Image(np.repeat(gray, 3, axis=2)), compact, scale=4, tile=SMALL_TILE)
    as_gray = upscale_image(Image(gray), compact, scale=4, tile=SMALL_TILE)
    np.testing.assert_allclose(as_gray.color[:, :, 0], as_rgb.color.mean(axis=2), atol=1e-6)


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
    assert result.color.min() >= 0.0 and result.color.max() <= 1.0


def test_output_size_rounds_half_up_and_never_reaches_zero() -> None:
    assert output_size(3, 5, 1.5) == (5, 8)
    assert output_size(1, 1, 1) == (1, 1)


def test_outscale_resizes_the_network_output(compact2: Forward) -> None:
    color = _pixels(24, 28, 3, seed=6)
    network = upscale_image(Image(color), compact2, scale=2, tile=SMALL_TILE).color
    down = upscale_image(Image(color), compact2, scale=2, outscale=1.5, tile=SMALL_TILE).color
    up = upscale_image(Image(color), compact2, scale=2, outscale=3, tile=SMALL_TILE).color
    area = cv2.resize(network, (42, 36), interpolation=cv2.INTER_AREA)
    lanczos = np.clip(cv2.resize(network, (84, 72), interpolation=cv2.INTER_LANCZOS4), 0, 1)
    np.testing.assert_allclose(down, area, atol=1e-6)
    np.testing.assert_allclose(up, lanczos, atol=1e-6)


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

    def recording(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return compact2(batch)

    image = Image(_pixels(50, 61, 3, seed=7), _pixels(50, 61, seed=8))
    batched = upscale_image(image, recording, scale=2, tile=SMALL_TILE, batch_size=3)
    assert len(shapes) > 2
    assert {shape[1:] for shape in shapes} == {(3, 32, 32)}
    assert max(shape[0] for shape in shapes) == 3
    single = upscale_image(image, compact2, scale=2, tile=SMALL_TILE, batch_size=1)
    np.testing.assert_allclose(batched.color, single.color, atol=1e-5)
    assert batched.alpha is not None and single.alpha is not None
    np.testing.assert_allclose(batched.alpha, single.alpha, atol=1e-5)


def test_async_driver_equals_the_sync_one(rrdb: Forward) -> None:
    async def forward_tile(tile: np.ndarray) -> np.ndarray:
        return rrdb(tile[None])[0]

    image = Image(_pixels(45, 38, 1, seed=9), _pixels(45, 38, seed=10), bit_depth=16)
    sync = upscale_image(image, rrdb, scale=2, outscale=2.5, tile=SMALL_TILE)
    result = asyncio.run(
        upscale_image_async(image, forward_tile, scale=2, outscale=2.5, tile=SMALL_TILE)
    )
    assert result.color.shape == sync.color.shape == (113, 95, 1)
    np.testing.assert_allclose(result.color, sync.color, atol=1e-5)
    assert result.alpha is not None and sync.alpha is not None
    np.testing.assert_allclose(result.alpha, sync.alpha, atol=1e-5)
    assert result.bit_depth == 16


class _Batcher:
    """A stand-in for @serve.batch: tiles submitted in one loop turn run as one forward pass."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self.pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self.batch_sizes: list[int] = []

    async def __call__(self, tile: np.ndarray) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending.append((tile, future))
        return await future

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        groups: dict[tuple[int, ...], list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]]
        groups = defaultdict(list)
        for tile, future in pending:
            groups[tile.shape].append((tile, future))
        for group in groups.values():
            self.batch_sizes.append(len(group))
            outputs = self.forward(np.stack([tile for tile, _ in group]))
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
        np.testing.assert_allclose(result.color, alone.color, atol=1e-5)
        if image.alpha is None:
            assert result.alpha is None
        else:
            assert result.alpha is not None and alone.alpha is not None
            np.testing.assert_allclose(result.alpha, alone.alpha, atol=1e-5)


def test_max_in_flight_bounds_the_tiles_submitted_at_once(compact2: Forward) -> None:
    image = Image(_pixels(64, 70, 3, seed=16))
    batcher = _Batcher(compact2)
    result = asyncio.run(
        upscale_image_async(image, batcher, scale=2, tile=SMALL_TILE, max_in_flight=4)
    )
    assert max(batcher.batch_sizes) == 4
    alone = upscale_image(image, compact2, scale=2, tile=SMALL_TILE)
    np.testing.assert_allclose(result.color, alone.color, atol=1e-5)
    with pytest.raises(InvalidOptionError, match="max_in_flight must be a positive integer"):
        asyncio.run(upscale_image_async(image, batcher, scale=2, max_in_flight=0))


def test_a_failing_tile_fails_the_request_and_stops_submitting() -> None:
    calls = 0

    async def failing(tile: np.ndarray) -> np.ndarray:
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
