"""Out of device memory: smaller batches, then smaller tiles, then a named 503 error."""

from __future__ import annotations

import pytest
import torch

from models.errors import DeviceOutOfMemoryError
from models.fallback import MIN_SIDE, forward_or_split


class Tight:
    """Nearest-neighbour x2 that 'runs out of memory' above ``capacity`` input pixels a pass."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.passes: list[tuple[int, ...]] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] * batch.shape[2] * batch.shape[3] > self.capacity:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.passes.append(tuple(batch.shape))
        return batch.repeat_interleave(2, 2).repeat_interleave(2, 3)


def expected(batch: torch.Tensor) -> torch.Tensor:
    return batch.repeat_interleave(2, 2).repeat_interleave(2, 3)


def test_a_batch_that_does_not_fit_is_split() -> None:
    batch = torch.rand(4, 3, 64, 64)
    tight = Tight(capacity=2 * 64 * 64)
    out = forward_or_split(tight, batch, scale=2)
    torch.testing.assert_close(out, expected(batch))
    assert tight.passes == [(2, 3, 64, 64), (2, 3, 64, 64)]


def test_a_tile_that_does_not_fit_is_tiled_smaller() -> None:
    batch = torch.rand(1, 3, 256, 256)
    tight = Tight(capacity=128 * 128)
    out = forward_or_split(tight, batch, scale=2)
    torch.testing.assert_close(out, expected(batch))  # nearest neighbour tiles seamlessly
    assert {shape[2:] for shape in tight.passes} == {(128, 128)}


def test_below_the_floor_it_is_a_named_error() -> None:
    tight = Tight(capacity=MIN_SIDE * MIN_SIDE - 1)
    with pytest.raises(DeviceOutOfMemoryError):
        forward_or_split(tight, torch.rand(2, 3, 2 * MIN_SIDE, 2 * MIN_SIDE), scale=2)


def test_other_errors_are_not_retried() -> None:
    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        forward_or_split(broken, torch.rand(2, 3, 64, 64), scale=2)
