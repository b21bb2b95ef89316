"""Tiling: layout, exact reassembly for local models, and small seams for real architectures."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

from models.canvas import TiledJob
from models.errors import InvalidOptionError, UnsupportedModelError
from models.tiling import (
    ACTIVATION_SAFETY,
    DEFAULT_TILE,
    TILE_LADDER,
    TileConfig,
    tile_for_budget,
    tiles_per_pass,
    window_starts,
)


def _plane(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


Model = Callable[[np.ndarray], np.ndarray]  # N x 3 x H x W -> N x 3 x sH x sW


def _pointwise(scale: int) -> Model:
    """A purely local model: a per-pixel colour mix, then nearest-neighbour upscaling."""
    mix = np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], dtype=np.float32)

    def forward(batch: np.ndarray) -> np.ndarray:
        mixed = np.tanh(np.einsum("ij,njhw->nihw", mix, batch) * 2.0)
        return mixed.repeat(scale, axis=2).repeat(scale, axis=3)

    return forward


def _torch_model(module: torch.nn.Module) -> Model:
    module.eval()

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).numpy()

    return forward


def _job(plane: np.ndarray, scale: int, config: TileConfig) -> TiledJob:
    """A job over an H x W x 3 host plane, as the drivers make one (3 x H x W tensor)."""
    return TiledJob(torch.from_numpy(np.ascontiguousarray(plane.transpose(2, 0, 1))), scale, config)


def _run(job: TiledJob, model: Model) -> np.ndarray:
    outputs = model(torch.stack(job.tiles).numpy())
    for index, output in enumerate(outputs):
        job.put(index, torch.from_numpy(np.ascontiguousarray(output)))
    return job.result().permute(1, 2, 0).numpy()


def _untiled(plane: np.ndarray, model: Model) -> np.ndarray:
    return model(np.ascontiguousarray(plane.transpose(2, 0, 1))[None])[0].transpose(1, 2, 0)


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 8}, "tile must be at least 16"),
        ({"tile": 5000}, "tile must be at most 4096"),
        ({"pad": -1}, "pad must be at least 0"),
        ({"blend": -2}, "blend must be at least 0"),
        ({"tile": 64.0}, "tile must be an integer"),
        ({"pad": True}, "pad must be an integer"),
        ({"tile": 64, "pad": 20, "blend": 16}, "tile - 2*pad - blend must be at least 16"),
    ],
)
def test_config_rejects_bad_values_with_a_message(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message.replace("*", r"\*")):
        TileConfig(**kwargs)  # type: ignore[arg-type]


def test_default_config_blends_and_costs_less_than_real_esrgans_tiling() -> None:
    assert DEFAULT_TILE.pad >= 32  # measured: less context leaves visible seams (bench/)
    assert DEFAULT_TILE.blend > 0
    # computed pixels per image pixel on a large image; Real-ESRGAN's 32/10 tiling runs 52/32
    assert (DEFAULT_TILE.tile / DEFAULT_TILE.stride) ** 2 < (52 / 32) ** 2


@pytest.mark.parametrize(
    ("length", "window", "stride"), [(100, 32, 20), (33, 32, 8), (1000, 256, 192)]
)
def test_window_starts_cover_evenly_and_end_flush(length: int, window: int, stride: int) -> None:
    starts = window_starts(length, window, stride)
    assert starts[0] == 0
    assert starts[-1] + window == length
    gaps = np.diff(starts)
    assert gaps.max() <= stride
    assert gaps.max() - gaps.min() <= 1


def test_window_starts_of_a_short_axis_is_one_window() -> None:
    assert window_starts(20, 32, 16) == [0]


# --- layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(97, 203), (64, 64), (255, 33), (17, 300)])
def test_tiles_are_equal_shaped_views_of_the_image(height: int, width: int) -> None:
    config = TileConfig(tile=48, pad=6, blend=6)
    plane = _plane(height, width)
    job = _job(plane, 2, config)
    shape = (3, min(48, height), min(48, width))
    assert all(tuple(tile.shape) == shape and tile.dtype == torch.float32 for tile in job.tiles)
    # every tile is an actual window of the image
    first, last = job.tiles[0], job.tiles[-1]
    np.testing.assert_array_equal(first, plane[: shape[1], : shape[2]].transpose(2, 0, 1))
    np.testing.assert_array_equal(last, plane[-shape[1] :, -shape[2] :].transpose(2, 0, 1))


def test_image_smaller_than_a_tile_is_one_tile_of_its_own_size() -> None:
    plane = _plane(21, 37)
    job = _job(plane, 4, TileConfig(tile=64, pad=8, blend=8))
    assert len(job.tiles) == 1
    assert tuple(job.tiles[0].shape) == (3, 21, 37)
    assert job.overhead == 1.0
    np.testing.assert_array_equal(_run(job, _pointwise(4)), _untiled(plane, _pointwise(4)))


def test_overhead_counts_computed_pixels() -> None:
    job = _job(_plane(100, 100), 1, TileConfig(tile=64, pad=8, blend=8))
    assert len(job.tiles) == 4
    assert job.overhead == pytest.approx(4 * 64 * 64 / (100 * 100))


# --- reassembly ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(97, 203), (130, 61), (48, 48)])
def test_hard_crop_of_a_local_model_equals_untiled_exactly(height: int, width: int) -> None:
    plane = _plane(height, width, seed=1)
    model = _pointwise(3)
    job = _job(plane, 3, TileConfig(tile=32, pad=4, blend=0))
    assert len(job.tiles) >= 4
    result = _run(job, model)
    assert result.shape == (height * 3, width * 3, 3)
    np.testing.assert_array_equal(result, _untiled(plane, model))


@pytest.mark.parametrize("config", [TileConfig(32, 4, 8), TileConfig(40, 0, 20), DEFAULT_TILE])
def test_blended_tiles_of_a_local_model_equal_untiled(config: TileConfig) -> None:
    plane = _plane(301, 263, seed=2)
    model = _pointwise(2)
    result = _run(_job(plane, 2, config), model)
    np.testing.assert_allclose(result, _untiled(plane, model), rtol=0, atol=1e-6)


def test_blend_weights_sum_to_one_everywhere() -> None:
    job = _job(_plane(151, 97), 2, TileConfig(tile=40, pad=5, blend=9))
    for index, tile in enumerate(job.tiles):
        job.put(index, torch.ones((3, tile.shape[1] * 2, tile.shape[2] * 2)))
    np.testing.assert_allclose(job.result().numpy(), 1.0, rtol=0, atol=1e-6)


def _tight(config: TileConfig, windows: int) -> int:
    """An image length whose windows overlap by exactly the minimum ``2*pad + blend``."""
    return config.tile + (windows - 1) * config.stride


def test_pad_beyond_the_receptive_field_reproduces_a_conv_net() -> None:
    torch.manual_seed(0)
    # 4 stacked 3x3 convs: an output pixel sees 4 input pixels on each side
    model = _torch_model(Compact(num_feat=8, num_conv=2, upscale=2))
    errors = {}
    for pad in (0, 2, 4):
        config = TileConfig(tile=32, pad=pad, blend=4)
        plane = _plane(_tight(config, 3), _tight(config, 2), seed=3)
        errors[pad] = float(
            np.abs(_run(_job(plane, 2, config), model) - _untiled(plane, model)).max()
        )
    assert errors[0] > errors[2] > 1e-3
    assert errors[4] < 1e-5
    # the pad is a floor: looser layouts of other sizes are exact too
    config = TileConfig(tile=32, pad=4, blend=4)
    for height, width in [(70, 90), (33, 101), (64, 65)]:
        plane = _plane(height, width, seed=height)
        result = _run(_job(plane, 2, config), model)
        np.testing.assert_allclose(result, _untiled(plane, model), rtol=0, atol=1e-5)


def test_rrdbnet_seams_are_small_and_shrink_with_pad() -> None:
    torch.manual_seed(0)
    model = _torch_model(ESRGAN(num_filters=8, num_blocks=1, scale=2))
    errors = []
    for pad in (0, 4, 10):
        config = TileConfig(tile=40, pad=pad, blend=0 if pad == 10 else 4)
        plane = _plane(_tight(config, 2), _tight(config, 2), seed=4)
        untiled = _untiled(plane, model)
        result = _run(_job(plane, 2, config), model)
        errors.append(float(np.abs(result - untiled).mean() / untiled.std()))
    assert errors[0] > 1e-3  # seams without context are visible
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


# --- misuse -------------------------------------------------------------------------------------


def test_put_rejects_a_wrong_scale_output() -> None:
    job = _job(_plane(40, 40), 4, TileConfig(tile=32, pad=4, blend=4))
    with pytest.raises(UnsupportedModelError, match="is its scale really 4"):
        job.put(0, torch.zeros((3, 64, 64)))


def test_put_twice_and_early_result_are_refused() -> None:
    job = _job(_plane(40, 40), 1, TileConfig(tile=32, pad=4, blend=4))
    job.put(0, job.tiles[0])
    with pytest.raises(ValueError, match="already put"):
        job.put(0, job.tiles[0])
    with pytest.raises(ValueError, match="out of range"):
        job.put(len(job.tiles), job.tiles[0])
    with pytest.raises(RuntimeError, match="never put"):
        job.result()


def test_plane_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="3 x H x W"):
        TiledJob(torch.zeros((10, 10, 3)), 2, DEFAULT_TILE)


# --- sizing from memory -------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [16, 24, 48, 64, 100, 256, 1000, 4096])
def test_a_tile_alone_makes_a_valid_config(tile: int) -> None:
    config = TileConfig.for_tile(tile)
    assert config.tile == tile and config.stride >= max(8, tile // 4)
    assert TileConfig.for_tile(256) == DEFAULT_TILE
    assert TileConfig.for_tile(64, pad=2) == TileConfig(64, 2, 4)


def test_the_whole_image_is_one_tile_when_it_fits() -> None:
    per_px = 1000
    fits = 200 * 300 * per_px * ACTIVATION_SAFETY
    assert tile_for_budget(200, 300, bytes_per_pixel=per_px, budget_bytes=fits).tile == 300
    smaller = tile_for_budget(200, 300, bytes_per_pixel=per_px, budget_bytes=fits - 1).tile
    assert smaller in TILE_LADDER and smaller * smaller * per_px * ACTIVATION_SAFETY <= fits
    # batches of 4 tiles need a quarter of the area each
    quarter = tile_for_budget(2000, 3000, bytes_per_pixel=per_px, budget_bytes=fits, batch=4).tile
    assert quarter < smaller and 4 * quarter**2 * per_px * ACTIVATION_SAFETY <= fits
    # never below the smallest rung, whatever the budget
    assert tile_for_budget(500, 500, bytes_per_pixel=per_px, budget_bytes=1).tile == TILE_LADDER[0]
    # a side over MAX_TILE is tiled even when memory would allow it whole
    assert tile_for_budget(10, 5000, bytes_per_pixel=1, budget_bytes=10**12).tile < 5000


def test_tiles_per_pass_follow_the_budget() -> None:
    one = 64 * 64 * 100 * ACTIVATION_SAFETY
    assert tiles_per_pass((3, 64, 64), 100, one * 5) == 5
    assert tiles_per_pass((3, 64, 64), 100, one - 1) == 1  # at least one, always
