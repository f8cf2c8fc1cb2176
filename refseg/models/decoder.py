"""LAVT's SimpleDecoding: a top-down decoder over the four fused stage maps."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu_x2(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SimpleDecoder(nn.Module):
    """From F4 up: bilinear upsample, concat with the next map, 2x[conv3x3-BN-ReLU], ..., 1x1 conv.

    Args:
        in_channels: widths of F1..F4 (strides 4, 8, 16, 32).
        hidden_dim: width of the top-down path (LAVT: C4 / 2).
        num_classes: 2 (background, object).

    forward([F1 (B,C1,H/4,W/4), F2, F3, F4 (B,C4,H/32,W/32)]) -> logits (B, num_classes, H/4, W/4)
    """

    def __init__(self, in_channels: Sequence[int], hidden_dim: int = 128, num_classes: int = 2):
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.fuse = nn.ModuleList([_conv_bn_relu_x2(c4 + c3, hidden_dim),
                                   _conv_bn_relu_x2(hidden_dim + c2, hidden_dim),
                                   _conv_bn_relu_x2(hidden_dim + c1, hidden_dim)])
        self.classifier = nn.Conv2d(hidden_dim, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[3]
        for fuse, skip in zip(self.fuse, (feats[2], feats[1], feats[0])):
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = fuse(torch.cat([x, skip.to(x.dtype)], dim=1))
        return self.classifier(x)
