"""LAVT's SimpleDecoding: a top-down decoder over the four fused stage maps."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from ..config import DecoderConfig
from ..ops import resize


def _conv_bn_relu_x2(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_classes, H/4, W/4)
    hidden_states: list[torch.Tensor]  # top-down maps, coarse to fine, (B, hidden_dim, H/s, W/s), s = 16, 8, 4


class SimpleDecoder(nn.Module):
    """From F4 up: bilinear upsample, concat with the next map, 2x[conv3x3-BN-ReLU], ..., 1x1 conv.

    Args:
        in_channels: widths of F1..F4 (strides 4, 8, 16, 32).
        config: ``model.decoder`` (hidden width, the upsampling convention).
        num_classes: 2 (background, object).

    forward([F1 (B,C1,H/4,W/4), F2, F3, F4 (B,C4,H/32,W/32)]) -> DecoderOutput(logits (B, num_classes,
    H/4, W/4), hidden_states [(B, hidden_dim, H/16, W/16), (.., H/8, W/8), (.., H/4, W/4)]); the last
    hidden state is what the classifier reads.
    """

    out_stride = 4

    def __init__(self, in_channels: Sequence[int], config: Optional[DecoderConfig] = None, num_classes: int = 2):
        super().__init__()
        config = config or DecoderConfig()
        self.align_corners = bool(config.align_corners)
        hidden = config.hidden_dim
        c1, c2, c3, c4 = in_channels
        self.fuse = nn.ModuleList([_conv_bn_relu_x2(c4 + c3, hidden), _conv_bn_relu_x2(hidden + c2, hidden),
                                   _conv_bn_relu_x2(hidden + c1, hidden)])
        self.out_channels = hidden
        self.classifier = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> DecoderOutput:
        x = feats[3]
        hidden = []
        for fuse, skip in zip(self.fuse, (feats[2], feats[1], feats[0])):
            x = fuse(torch.cat([self.resize(x, skip.shape[-2:]), skip.to(x.dtype)], dim=1))
            hidden.append(x)
        return DecoderOutput(self.classifier(x), hidden)

    def resize(self, x: torch.Tensor, size) -> torch.Tensor:
        """Bilinear resize with this decoder's ``align_corners``."""
        return resize(x, size, self.align_corners)
