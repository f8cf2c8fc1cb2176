"""Small tensor operations shared by the model, the loss, evaluation and the Predictor."""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) maps to ``size`` (H, W); no-op when already there.

    ``align_corners=False`` keeps pixel centres aligned (the image's own resize convention); LAVT
    upsamples with True.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple``."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def object_margin(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(K, 2, h, w) logits -> (K, H, W) object-minus-background logit, bilinearly resized to ``size``.

    Bilinear resizing is linear, so resizing the margin equals the margin of the resized logits, with
    half the memory on large photos. The mask is ``margin > 0`` (argmax; ties go to background).
    """
    return resize(logits[:, 1:] - logits[:, :1], size)[:, 0]


def autocast(device: torch.device | str, mixed_precision: str = "auto"):
    """The autocast context for inference on ``device``.

    ``auto``: bf16 on CUDA, fp32 elsewhere (on CPUs bf16 is only faster with native bf16 units, and
    scoring should not depend on which CPU runs it); ``no``: fp32; ``bf16``/``fp16``: that dtype.
    """
    device = torch.device(device)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if device.type == "cuda" else "no"
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
