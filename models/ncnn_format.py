"""The ncnn model format: the text ``.param`` graph and the ``.bin`` weights it describes.

The ``.param`` file is a text graph; the ``.bin`` holds each weighted layer's blobs in layer order
(Convolution: a tagged weight blob, then its bias as raw fp32; PReLU: raw fp32 slopes). The graph's
layer list gives every blob's size and the hyperparameters. Anything this reader cannot place
(another header, a truncated or longer ``.bin``, quantized weights) is refused with
``UnsupportedModelError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from models.errors import UnsupportedModelError

_MAGIC = "7767517"
_TAG_FP16 = 0x01306B47
_TAG_FP32 = 0x0002C056
_ARRAY_KEY_BASE = -23300

ParamValue = int | float | tuple[float, ...]


@dataclass(frozen=True)
class NcnnLayer:
    """One layer line of a ``.param``: its type, name, blob names and ``key=value`` params."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, ParamValue] = field(default_factory=dict)

    def get_num(self, key: int, default: float) -> float:
        """Param ``key`` as a number, ``default`` if absent; refused if it is an array."""
        value = self.params.get(key, default)
        if isinstance(value, tuple):
            raise UnsupportedModelError(f"layer {self.name}: param {key} is an array")
        return value

    def get_int(self, key: int, default: int) -> int:
        """Param ``key`` as an integer, ``default`` if absent; refused if it is not integral."""
        value = self.get_num(key, default)
        if value != int(value):
            raise UnsupportedModelError(f"layer {self.name}: param {key} is not an integer")
        return int(value)

    def get_floats(self, key: int) -> tuple[float, ...]:
        """Array param ``key`` (stored as ``-23300-key``); a scalar as 1 value; ``()`` if absent."""
        value = self.params.get(_ARRAY_KEY_BASE - key, ())
        return value if isinstance(value, tuple) else (value,)


@dataclass(frozen=True)
class NcnnGraph:
    """A parsed ``.param``: its layers in execution order and its one input and output blob."""

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
class Weighted:
    """A layer and its fp32 ``.bin`` tensors: Convolution (weight, bias), PReLU (slope,)."""

    layer: NcnnLayer
    tensors: tuple[torch.Tensor, ...]


def read_weights(graph: NcnnGraph, data: bytes) -> dict[str, Weighted]:
    """Weighted layers by name, in order; refused unless ``data`` is exactly what ``graph`` says."""
    reader = _BinReader(data)
    weights: dict[str, Weighted] = {}
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
            weights[layer.name] = Weighted(layer, (torch.from_numpy(w), torch.from_numpy(b)))
        elif layer.type == "PReLU":
            slope = reader.raw(layer.get_int(0, 1), f"{layer.name} slopes")
            weights[layer.name] = Weighted(layer, (torch.from_numpy(slope),))
    if reader.offset != len(data):
        raise UnsupportedModelError(
            f"ncnn .bin has {len(data) - reader.offset} bytes more than its .param describes"
        )
    return weights
