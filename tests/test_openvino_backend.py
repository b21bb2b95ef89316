"""OpenVINO CPU backend on tiny random networks of the real architectures: same output as torch,
any shape through one compiled object, concurrent callers, named errors."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("openvino")

from models import openvino_backend
from models.errors import InvalidOptionError, UnsupportedModelError
from models.loading import Upscaler, load_upscaler
from models.openvino_backend import (
    OpenVinoForward,
    available,
    compile_for_cpu,
    cpu_description,
    native_bf16,
    resolve_precision,
)
from models.registry import ModelKind, ModelSpec, WeightsSource
from tests.tiny_models import save_tiny_compact, save_tiny_rrdb

CPU = torch.device("cpu")
TOLERANCE = 1e-5  # [0, 1] units: fp32 convolutions in another library, same arithmetic


def _load(path: Path, name: str) -> Upscaler:
    spec = ModelSpec(
        name=name,
        kind=ModelKind.UPSCALE,
        arch="any",
        scale=None,
        weights=WeightsSource(filename=path.name, sha256=None),
    )
    return load_upscaler(spec, path, device=CPU, precision="fp32")


@pytest.fixture(scope="module", params=["compact-x4", "rrdb-x4", "rrdb-x2"])
def upscaler(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Upscaler:
    folder = tmp_path_factory.mktemp("tiny-openvino")
    kind, scale = request.param.split("-x")
    path = folder / f"{request.param}.safetensors"
    save = save_tiny_compact if kind == "compact" else save_tiny_rrdb
    save(path, scale=int(scale), seed=3)
    return _load(path, request.param)


@pytest.fixture(scope="module")
def compiled(upscaler: Upscaler) -> OpenVinoForward:
    return compile_for_cpu(upscaler.module, threads=2)


def torch_forward(upscaler: Upscaler, batch: torch.Tensor) -> torch.Tensor:
    """What ``Upscaler.forward`` runs, without its padding and clamping."""
    with torch.inference_mode():
        return upscaler.module(batch.contiguous(memory_format=torch.channels_last)).float()


def test_helpers() -> None:
    assert available()
    assert "flags:" in cpu_description()
    assert resolve_precision("fp32") == "fp32"
    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")
    with pytest.raises(InvalidOptionError, match="precision must be one of"):
        resolve_precision("fp16")


@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (2, 3, 24, 40), (3, 3, 32, 18)])
def test_matches_torch(upscaler: Upscaler, compiled: OpenVinoForward, shape: tuple) -> None:
    torch.manual_seed(sum(shape))
    batch = torch.rand(shape)
    got = compiled(batch)
    n, c, h, w = shape
    assert got.dtype == torch.float32
    assert tuple(got.shape) == (n, c, h * upscaler.scale, w * upscaler.scale)
    assert (got - torch_forward(upscaler, batch)).abs().max().item() < TOLERANCE


def test_a_tile_size_seen_twice_gets_a_model_of_its_own(upscaler: Upscaler) -> None:
    forward = compile_for_cpu(upscaler.module, threads=1, static_sizes=1)
    batch, other = torch.rand(2, 3, 20, 20), torch.rand(1, 3, 12, 14)
    for _ in range(3):  # dynamic, then sized (compiled on the second call), then sized
        assert (forward(batch) - torch_forward(upscaler, batch)).abs().max().item() < TOLERANCE
    assert forward.static_sizes_compiled == [(20, 20)]
    single = batch[:1]  # the same tile size in another batch size: N stays dynamic
    assert (forward(single) - torch_forward(upscaler, single)).abs().max().item() < TOLERANCE
    for _ in range(2):  # the cache is full: other sizes stay on the dynamic model
        assert (forward(other) - torch_forward(upscaler, other)).abs().max().item() < TOLERANCE
    assert forward.static_sizes_compiled == [(20, 20)]


def test_takes_channels_last_and_non_contiguous_batches(
    upscaler: Upscaler, compiled: OpenVinoForward
) -> None:
    plane = torch.rand(1, 3, 40, 40)
    window = plane[:, :, 4:28, 6:30]  # a tile view, as the tiler cuts them
    expected = torch_forward(upscaler, window.contiguous())
    assert (compiled(window) - expected).abs().max().item() < TOLERANCE
    cl = window.contiguous(memory_format=torch.channels_last)
    assert (compiled(cl) - expected).abs().max().item() < TOLERANCE


def test_concurrent_callers_each_get_their_own_result(
    upscaler: Upscaler, compiled: OpenVinoForward
) -> None:
    inputs = [torch.rand(1, 3, 24, 24) for _ in range(4)]  # one size: its compile races calls
    inputs += [torch.rand(2, 3, 16, 20) for _ in range(4)]
    expected = [torch_forward(upscaler, x) for x in inputs]
    results: dict[int, list[torch.Tensor]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(first: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                for i in range(first, len(inputs), 4):
                    results.setdefault(i, []).append(compiled(inputs[i]))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(results) == list(range(len(inputs)))
    for i, outputs in results.items():
        assert len(outputs) == 3
        for out in outputs:
            assert (out - expected[i]).abs().max().item() < TOLERANCE


def test_bf16_is_close_where_native(upscaler: Upscaler) -> None:
    if not native_bf16():
        with pytest.raises(InvalidOptionError, match="no native bf16"):
            compile_for_cpu(upscaler.module, threads=1, precision="bf16")
        return
    forward = compile_for_cpu(upscaler.module, threads=1, precision="bf16")
    batch = torch.rand(1, 3, 16, 16)
    reference = torch_forward(upscaler, batch)
    assert forward.precision == "bf16"
    assert (forward(batch) - reference).abs().max().item() < 0.1  # bf16 keeps 8 bits of mantissa


class Svd(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x)[0]  # no OpenVINO conversion exists for it


def test_a_module_that_cannot_be_converted_is_a_named_error() -> None:
    with pytest.raises(UnsupportedModelError, match="OpenVINO cannot convert this model"):
        compile_for_cpu(Svd(), threads=1)


def test_bad_arguments_are_refused(upscaler: Upscaler, compiled: OpenVinoForward) -> None:
    with pytest.raises(InvalidOptionError, match="threads must be a positive integer"):
        compile_for_cpu(upscaler.module, threads=0)
    with pytest.raises(InvalidOptionError, match="float32 module on the CPU"):
        compile_for_cpu(torch.nn.Conv2d(3, 3, 3).double(), threads=1)
    with pytest.raises(InvalidOptionError, match="N x 3 x H x W"):
        compiled(torch.rand(3, 16, 16))


def test_without_openvino_the_module_imports_and_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino → ImportError
    openvino_backend._core.cache_clear()
    try:
        assert not available()
        with pytest.raises(UnsupportedModelError, match="pip install openvino"):
            compile_for_cpu(Svd(), threads=1)
    finally:
        openvino_backend._core.cache_clear()
