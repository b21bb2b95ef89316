"""GFPGAN v1.4 as a RestoreFn: calling convention with a stand-in module, then the real architecture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.GFPGAN import GFPGAN

from models.errors import InvalidOptionError, UnsupportedModelError
from models.face.restore import (
    GFPGAN_V14_CONFIG,
    load_gfpgan,
    load_gfpgan_module,
    make_restore_fn,
)


class _Recorder(torch.nn.Module):
    """Returns ``(0.5 * x, [])`` like GFPGAN's ``(image, rgbs)`` and records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, dict]] = []

    def forward(self, x: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, list]:
        self.calls.append((x.clone(), kwargs))
        return 0.5 * x, []


def _crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 512, 512), dtype=np.float32)


def test_restore_fn_maps_to_and_from_minus_one_one() -> None:
    module = _Recorder()
    restore = make_restore_fn(module, torch.device("cpu"))
    crops = _crops(1)
    out = restore(crops)
    x, kwargs = module.calls[0]
    np.testing.assert_allclose(x.numpy(), crops * 2 - 1, atol=1e-6)
    assert kwargs == {"return_rgb": False, "randomize_noise": False}
    # y = 0.5 * (2c - 1)  ->  (y + 1) / 2 = c / 2 + 0.25
    np.testing.assert_allclose(out, crops / 2 + 0.25, atol=1e-6)
    assert out.dtype == np.float32


def test_restore_fn_clamps_and_chunks() -> None:
    class Loud(_Recorder):
        def forward(self, x: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, list]:
            self.calls.append((x.clone(), kwargs))
            return 3 * x, []

    module = Loud()
    restore = make_restore_fn(module, torch.device("cpu"), max_batch=2)
    crops = _crops(5)
    out = restore(crops)
    assert [len(x) for x, _ in module.calls] == [2, 2, 1]
    assert out.shape == crops.shape
    assert out.min() == 0.0
    assert out.max() == 1.0
    np.testing.assert_allclose(out, np.clip((3 * (crops * 2 - 1) + 1) / 2, 0, 1), atol=1e-5)


def test_restore_fn_rejects_wrong_shapes() -> None:
    restore = make_restore_fn(_Recorder(), torch.device("cpu"))
    with pytest.raises(InvalidOptionError):
        restore(np.zeros((1, 3, 256, 256), np.float32))
    with pytest.raises(InvalidOptionError):
        restore(np.zeros((3, 512, 512), np.float32))
    with pytest.raises(InvalidOptionError):
        make_restore_fn(_Recorder(), torch.device("cpu"), max_batch=0)


def test_load_gfpgan_rejects_other_models(tmp_path: Path) -> None:
    compact = tmp_path / "compact.pth"
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    torch.save({"params": net.state_dict()}, compact)
    with pytest.raises(UnsupportedModelError, match="not GFPGAN"):
        load_gfpgan(compact, "cpu")
    unknown = tmp_path / "unknown.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, unknown)
    with pytest.raises(UnsupportedModelError):
        load_gfpgan(unknown, "cpu")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(UnsupportedModelError):
        load_gfpgan(garbage, "cpu")


@pytest.mark.slow  # one fp32 GFPGAN forward: ~6 s on a quiet 2-core CPU
def test_real_v14_architecture_round_trip(tmp_path: Path) -> None:
    """Random v1.4 weights saved like GFPGANv1.4.pth, loaded by our loader, one 512 face."""
    torch.manual_seed(0)
    reference = GFPGAN(**GFPGAN_V14_CONFIG)
    path = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": reference.state_dict()}, path)
    del reference

    module = load_gfpgan_module(path, "cpu")
    saved = torch.load(path, weights_only=True)["params_ema"]
    loaded = module.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not module.training

    out = make_restore_fn(module, torch.device("cpu"))(_crops(1, seed=3))
    assert out.shape == (1, 3, 512, 512)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert 0.0 <= out.min() < out.max() <= 1.0
    assert out.std() > 0.01  # a picture, not a constant


def test_load_gfpgan_builds_a_restore_fn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _Recorder()
    seen: list[tuple[Path, torch.device]] = []

    def fake_load(path: Path, device: torch.device) -> torch.nn.Module:
        seen.append((path, device))
        return module

    monkeypatch.setattr("models.face.restore.load_gfpgan_module", fake_load)
    restore = load_gfpgan(tmp_path / "w.pth", "cpu", max_batch=1)
    restore(_crops(2))
    assert seen == [(tmp_path / "w.pth", torch.device("cpu"))]
    assert [len(x) for x, _ in module.calls] == [1, 1]
