"""Compiled fixed shapes: warmed once, then no request compiles, and results equal eager ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.compiled import batch_buckets, compile_upscaler, warm_up
from models.image import Image
from models.inference import upscale_image
from models.loading import Upscaler, load_upscaler
from models.policy import TilePolicy
from models.registry import user_model_spec
from models.tiling import TileConfig
from tests.tiny_models import save_tiny_compact

pytestmark = pytest.mark.slow  # compiling costs ~25 s on a CPU


@pytest.fixture(scope="module")
def eager(tmp_path_factory: pytest.TempPathFactory) -> Upscaler:
    path = tmp_path_factory.mktemp("tiny") / "tiny-x2.safetensors"
    sha = save_tiny_compact(path, scale=2)
    return load_upscaler(
        user_model_spec("tiny", sha256=sha, path=str(path)), path, precision="fp32", backend="torch"
    )


def test_batch_buckets_are_powers_of_two() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(4) == [1, 2, 4]
    assert batch_buckets(6) == [1, 2, 4, 8]


def test_a_warmed_model_never_compiles_in_a_request(eager: Upscaler, tmp_path: Path) -> None:
    compiled = compile_upscaler(eager, cache_dir=tmp_path / "cache")
    policy = TilePolicy(TileConfig.for_tile(32), budget_bytes=1 << 30, max_batch=2)
    assert warm_up(compiled, [t.tile for t in policy.compiled_tiles(compiled)], 2) > 0
    rng = np.random.default_rng(0)
    with torch.compiler.set_stance("fail_on_recompile"):
        for height, width in [(20, 25), (50, 70), (32, 32)]:  # smaller than a tile: padded
            image = Image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            tile = policy.tile(compiled, height, width)
            placement = policy.placement(compiled)  # the same padded tiles for both
            results = [
                upscale_image(image, forward, scale=2, tile=tile, batch_size=2, placement=placement)
                for forward in (compiled.forward, eager.forward)
            ]
            assert results[0].color.shape == (height * 2, width * 2, 3)
            diff = np.abs(results[0].color.astype(int) - results[1].color.astype(int))
            assert diff.max() <= 1
        with pytest.raises(RuntimeError, match="recompile"):  # the guard is real
            compiled.forward(torch.zeros(1, 3, 48, 48))


def test_compiled_policy_warms_a_small_and_the_budgets_tile(eager: Upscaler) -> None:
    network = compile_upscaler(eager)
    policy = TilePolicy(None, budget_bytes=2 << 30, max_batch=4)
    tiles = [t.tile for t in policy.compiled_tiles(network)]
    assert tiles[0] == 256 and tiles[-1] >= 256
    assert policy.tile(network, 100, 120).tile == 256
    assert policy.placement(network).fixed_tiles and not policy.placement(eager).fixed_tiles
