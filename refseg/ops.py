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


def _bilinear_weights(n_out: int, n_in: int, extent_in: int, padded: int, align_corners: bool,
                      device, dtype) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D bilinear weights: output pixel j of a signal whose first ``extent_in``
    input pixels (of ``padded``) it covers, read from an ``n_in``-sample map of those ``padded`` pixels."""
    j = torch.arange(n_out, dtype=torch.float64)
    x = (j + 0.5) * extent_in / n_out - 0.5  # the output pixel's centre in input pixels (pixel centres aligned)
    if align_corners:  # map sample k sits at input pixel k * (padded - 1) / (n_in - 1)
        u = x * ((n_in - 1) / (padded - 1)) if padded > 1 and n_in > 1 else torch.zeros_like(x)
    else:  # map sample k covers input pixels [k, k + 1) * padded / n_in
        u = (x + 0.5) * (n_in / padded) - 0.5
    u = u.clamp(0, n_in - 1)
    i0 = u.floor().long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = u - i0
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights[torch.arange(n_out), i0] += 1 - w1
    weights[torch.arange(n_out), i1] += w1
    return weights.to(device=device, dtype=dtype)


def resample_from_stride(x: torch.Tensor, input_size: Sequence[int], size: Sequence[int],
                         align_corners: bool = False, padded_size: Sequence[int] | None = None) -> torch.Tensor:
    """(B, C, h, w) maps over an input of ``input_size`` padded (bottom/right) to ``padded_size``
    (default: (h, w) x 4, the decoder's stride) -> (B, C, H, W) at ``size``, in one bilinear resize.

    What upsampling to the padded input (with ``align_corners``), cropping the padding and resizing
    to ``size`` with pixel centres aligned would give, but with a single interpolation: each output
    pixel reads the two nearest map samples per axis at its own position. Separable, so it is two
    small matrix products (exact bilinear weights, computed in float64).
    """
    h, w = x.shape[-2:]
    H, W = (int(s) for s in size)
    ph, pw = padded_size if padded_size is not None else (4 * h, 4 * w)
    ry = _bilinear_weights(H, h, int(input_size[0]), int(ph), align_corners, x.device, x.dtype)
    rx = _bilinear_weights(W, w, int(input_size[1]), int(pw), align_corners, x.device, x.dtype)
    return torch.einsum("Hh,bchw,Ww->bcHW", ry, x, rx)


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
