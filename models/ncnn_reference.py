"""A reference interpreter of ncnn graphs in torch ops, for the conversion's self-check.

It runs only the layer types and options the Real-ESRGAN graphs use (convolutions with fused
ReLU/LeakyReLU, PReLU, nearest upsampling, pixel shuffle, concat, sums) and refuses any other with
``UnsupportedModelError`` rather than guess at its semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from models.errors import UnsupportedModelError
from models.ncnn_format import NcnnGraph, NcnnLayer, Weighted


def run_graph(graph: NcnnGraph, weights: dict[str, Weighted], x: torch.Tensor) -> torch.Tensor:
    """The output blob of ``graph`` with ``weights`` on input ``x`` (NCHW); refuses unknown ops."""
    blobs = {graph.input: x}
    for layer in graph.layers:
        if layer.type == "Input":
            continue
        inputs = [blobs[name] for name in layer.bottoms]
        outputs = _run_layer(layer, inputs, weights.get(layer.name))
        blobs.update(zip(layer.tops, outputs, strict=True))
    return blobs[graph.output]


def _run_layer(
    layer: NcnnLayer, xs: list[torch.Tensor], weighted: Weighted | None
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
    weighted: Weighted,
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
def one_thread() -> Iterator[None]:
    """Run the block with torch on one thread, restoring the previous count when it ends."""
    # Hundreds of tiny convolutions run 5-10x faster on one thread than on a busy thread pool.
    # The thread count is process-wide: conversion runs while a model loads, before it serves.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
