"""The RetinaFace ResNet-50 network, laid out to load facexlib's ``detection_Resnet50_Final.pth``.

Module and parameter names (``body.*``, ``fpn.*``, ``ssh1.*``, ``ClassHead.0.*``, ...) follow facexlib's
``retinaface.py``/``retinaface_net.py`` exactly, so the published state dict loads with ``strict=True``.
With 256 channels facexlib's leaky slope is 0, hence plain ReLUs here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter

# ResNet-50 stages feeding the pyramid, as in facexlib's cfg_re50.
RETURN_LAYERS = {"layer2": "1", "layer3": "2", "layer4": "3"}
IN_CHANNELS = (512, 1024, 2048)
OUT_CHANNELS = 256
ANCHORS_PER_CELL = 2


def _conv_bn(cin: int, cout: int, kernel: int, *, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out_channels, 1, relu=True)
        self.output2 = _conv_bn(in_channels[1], out_channels, 1, relu=True)
        self.output3 = _conv_bn(in_channels[2], out_channels, 1, relu=True)
        self.merge1 = _conv_bn(out_channels, out_channels, 3, relu=True)
        self.merge2 = _conv_bn(out_channels, out_channels, 3, relu=True)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out1 = self.output1(feats[0])
        out2 = self.output2(feats[1])
        out3 = self.output3(feats[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[2:], mode="nearest"))
        return [out1, out2, out3]


class SSH(nn.Module):
    """Single-stage context module: 3x3, 5x5 and 7x7 receptive fields concatenated."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv3X3 = _conv_bn(cin, cout // 2, 3, relu=False)
        self.conv5X5_1 = _conv_bn(cin, cout // 4, 3, relu=True)
        self.conv5X5_2 = _conv_bn(cout // 4, cout // 4, 3, relu=False)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4, 3, relu=True)
        self.conv7x7_3 = _conv_bn(cout // 4, cout // 4, 3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        c7_2 = self.conv7X7_2(c5_1)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(c7_2)], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    """A 1x1 conv whose output is flattened to (N, H*W*anchors, values)."""

    def __init__(self, cin: int, values: int) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(cin, ANCHORS_PER_CELL * values, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.values)


def _heads(values: int) -> nn.ModuleList:
    return nn.ModuleList(_Head(OUT_CHANNELS, values) for _ in range(3))


class RetinaFace(nn.Module):
    """RetinaFace ResNet-50. ``forward`` takes BGR minus (104, 117, 123), 0-255 scale, NCHW.

    Returns ``(loc, scores, landmarks)``: (N, P, 4) box offsets, (N, P, 2) softmax class scores
    (column 1 is "face") and (N, P, 10) landmark offsets, for the P priors of ``priors.prior_boxes``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(resnet50(weights=None), RETURN_LAYERS)
        self.fpn = FPN(IN_CHANNELS, OUT_CHANNELS)
        self.ssh1 = SSH(OUT_CHANNELS, OUT_CHANNELS)
        self.ssh2 = SSH(OUT_CHANNELS, OUT_CHANNELS)
        self.ssh3 = SSH(OUT_CHANNELS, OUT_CHANNELS)
        self.ClassHead = _heads(2)
        self.BboxHead = _heads(4)
        self.LandmarkHead = _heads(10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pyramid = self.fpn(list(self.body(x).values()))
        feats = [self.ssh1(pyramid[0]), self.ssh2(pyramid[1]), self.ssh3(pyramid[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        landm = torch.cat(
            [head(f) for head, f in zip(self.LandmarkHead, feats, strict=True)], dim=1
        )
        return loc, F.softmax(logits, dim=-1), landm
