"""LAVT's SimpleDecoding: a top-down decoder over the four fused stage maps, and an image-guided refiner."""
from __future__ import annotations

from typing import Optional, Sequence

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
        skip_channels: {stride: channels} of extra high-resolution maps (the encoder's conv stem). A
            stride-4 map joins F1; a stride-2 map adds a last stage (width hidden_dim / 2) at stride 2.

    forward([F1 (B,C1,H/4,W/4), F2, F3, F4 (B,C4,H/32,W/32)], skips {stride: (B,c,H/s,W/s)})
        -> logits (B, num_classes, H/s, W/s), s = ``out_stride`` (4, or 2 with a stride-2 skip);
        with ``return_hidden`` also the top-down maps, coarse to fine: [(B, hidden_dim, H/16, W/16),
        (B, hidden_dim, H/8, W/8), ..., (B, out_channels, H/s, W/s)]; the last is what the classifier reads.
    """

    def __init__(self, in_channels: Sequence[int], hidden_dim: int = 128, num_classes: int = 2,
                 skip_channels: Optional[dict[int, int]] = None, align_corners: bool = True):
        super().__init__()
        self.align_corners = bool(align_corners)
        c1, c2, c3, c4 = in_channels
        skip_channels = dict(skip_channels or {})
        self.skip_strides = [s for s in (4, 2) if s in skip_channels]
        self.fuse = nn.ModuleList([_conv_bn_relu_x2(c4 + c3, hidden_dim),
                                   _conv_bn_relu_x2(hidden_dim + c2, hidden_dim),
                                   _conv_bn_relu_x2(hidden_dim + c1 + skip_channels.get(4, 0), hidden_dim)])
        width = hidden_dim
        if 2 in skip_channels:
            width = max(8, hidden_dim // 2)
            self.refine = _conv_bn_relu_x2(hidden_dim + skip_channels[2], width)
        self.out_stride = 2 if 2 in skip_channels else 4
        self.out_channels = width
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor], skips: Optional[dict[int, torch.Tensor]] = None,
                return_hidden: bool = False):
        skips = skips or {}
        if any(s not in skips for s in self.skip_strides):
            raise ValueError(f"decoder: expected stem maps at strides {self.skip_strides}, got {sorted(skips)}")
        x = feats[3]
        hidden = []
        extra = ([], [], [skips[4]] if 4 in self.skip_strides else [])
        for fuse, skip, more in zip(self.fuse, (feats[2], feats[1], feats[0]), extra):
            x = fuse(torch.cat([self.resize(x, skip.shape[-2:]), skip.to(x.dtype), *[m.to(x.dtype) for m in more]], dim=1))
            hidden.append(x)
        if 2 in self.skip_strides:
            s2 = skips[2]
            x = self.refine(torch.cat([self.resize(x, s2.shape[-2:]), s2.to(x.dtype)], dim=1))
            hidden.append(x)
        logits = self.classifier(x)
        return (logits, hidden) if return_hidden else logits

    def resize(self, x: torch.Tensor, size) -> torch.Tensor:
        """``resize`` with this decoder's ``align_corners``."""
        return resize(x, size, self.align_corners)


def resize(x: torch.Tensor, size, align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) maps to ``size``; no-op when already there."""
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class MaskRefiner(nn.Module):
    """Sharpen logits with the image: logits + convs([logits, image]), at stride 2 of the input.

    The decoder predicts at stride 4; bilinear upsampling of even a perfect stride-4 map loses the
    corners and thin parts of small objects (on refshapes at 128 px it caps mIoU near 84; a perfect
    stride-2 map reaches 93). The refiner sees the image but only two semantic channels (the
    logits), so it can move a boundary to a nearby colour edge (receptive field 9x9 at stride 2) but
    cannot pick a different object. Its last conv starts at zero: at initialisation the model is
    exactly the plain decoder. (At full resolution it would cost 3x more for a smaller gain.)

    Args:
        channels: hidden width (0 is not allowed here; the model skips the module instead).
        num_classes: logit channels (2).
        image_channels: 3 (RGB, normalised as the model's input).

    forward(logits (B, K, h, w), image (B, 3, h, w) at the same size) -> (B, K, h, w)
    """

    def __init__(self, channels: int = 16, num_classes: int = 2, image_channels: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_classes + image_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([logits, image.to(logits.dtype)], dim=1)
        # channels-last: thin convolutions over many pixels run about 1.5x faster that way on CPUs
        return logits + self.body(x.contiguous(memory_format=torch.channels_last))
