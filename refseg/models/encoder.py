"""The vision encoders' one protocol, and the helpers they share.

Every encoder the model takes is an ``Encoder``: a 4-stage pyramid described, as timm describes its
models, by ``feature_info``: one dict per stage with ``num_chs``, ``reduction`` (the stride of
``stage_output``'s map), ``module`` (the module that computes it) and ``num_heads``. The read-only
``out_channels``, ``out_strides``, ``stage_heads`` and ``pad_multiple`` derive from it.

The implementations: ``refseg.models.xcit.XCiTColumnar`` and ``XCiTHierarchical``,
``refseg.models.swin.SwinEncoder``, and ``refseg.models.crossvit.CrossViT``, which wraps an XCiT
encoder and adds its second stream. Stage-wise API, so that the model fuses language *between*
stages::

    tokens, (H, W) = enc.embed(x)                          # x (B,3,H,W), sides multiples of enc.pad_multiple
    for i in range(4):
        tokens, (H, W) = enc.forward_stage(i, tokens, H, W)  # (B, H_i*W_i, C_i)
        fmap = enc.stage_output(i, tokens, H, W)            # (B, C_i, H/s_i, W/s_i), s_i = out_strides[i]

``forward_fused(x, fuse)`` is that loop with ``tokens = fuse(i, tokens, (H, W))`` after every stage
(the model's PWAM and language gate); an encoder that carries more than the patch tokens from stage
to stage (CrossViT's CLS and second stream) overrides it and needs no ``embed``/``forward_stage``.
``forward(x)`` gives the 4 ``stage_output`` maps without fusion; ``forward_intermediates`` and
``forward_features`` follow timm's signatures.

A stage is ``downsample`` (patch merging; identity in a columnar trunk) then ``forward_blocks``.
Encoders whose blocks can carry prefix tokens (XCiT: XCA attends over channels, so extra tokens just
take part in the covariance) set ``supports_prefix_tokens`` and accept ``num_prefix`` there: that is
how CrossViT sends its CLS through them.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn
from timm.layers import trunc_normal_

from ..errors import first_line
from ..ops import pad_to_multiple

logger = logging.getLogger("refseg")

STRIDES = (4, 8, 16, 32)  # the strides of every encoder's 4 stage outputs

# fuse(i, tokens (B, H_i*W_i, C_i), (H_i, W_i)) -> the tokens stage i + 1 starts from
Fuse = Callable[[int, torch.Tensor, tuple[int, int]], torch.Tensor]


def stage_info(channels: Sequence[int], heads: Sequence[int], modules: Sequence[str],
               reductions: Sequence[int] = STRIDES) -> list[dict]:
    """timm's ``feature_info`` (one dict per stage: num_chs, reduction, module) plus ``num_heads``."""
    return [dict(num_chs=int(c), reduction=int(r), module=m, num_heads=int(h))
            for c, r, m, h in zip(channels, reductions, modules, heads)]


class Encoder(nn.Module):
    """Base class of refseg's vision encoders (see the module docstring).

    Subclasses set ``self.feature_info`` (``stage_info``) in ``__init__`` and implement ``embed`` and
    ``forward_blocks`` (and ``downsample`` if stages merge patches), or ``forward_stage``, or
    ``forward_fused``. ``stage_output`` defaults to reshaping the tokens to a map.
    """

    feature_info: list[dict]
    supports_prefix_tokens: bool = False  # forward_blocks takes num_prefix > 0

    # -- geometry, all from feature_info ---------------------------------------------------------
    @property
    def out_channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    @property
    def out_strides(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    @property
    def stage_heads(self) -> list[int]:
        return [f["num_heads"] for f in self.feature_info]

    @property
    def pad_multiple(self) -> int:
        """Input sides must be multiples of this for ``embed`` / ``forward_fused`` (the coarsest stride)."""
        return max(self.out_strides)

    @property
    def trunk_multiple(self) -> int:
        """What the stages alone need (``forward_intermediates``, ``forward_features``): ``pad_multiple``
        unless ``stage_output`` needs more (the columnar trunk: its patch size)."""
        return self.pad_multiple

    # -- stage-wise API -------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B,3,H,W) -> tokens (B, H_0*W_0, C_in) and their grid (H_0, W_0)."""
        raise NotImplementedError

    def downsample(self, i: int, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """What stage ``i`` does before its blocks (patch merging); identity here."""
        return x, (H, W)

    def forward_blocks(self, i: int, x: torch.Tensor, H: int, W: int, num_prefix: int = 0) -> torch.Tensor:
        """Stage ``i``'s blocks on (B, P+H*W, C_i); the first P = ``num_prefix`` tokens are not on the grid."""
        raise NotImplementedError

    def forward_stage(self, i: int, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Stage ``i`` on tokens (B, H*W, C_{i-1}) -> (tokens (B, H_i*W_i, C_i), (H_i, W_i))."""
        x, (H, W) = self.downsample(i, x, H, W)
        return self.forward_blocks(i, x, H, W), (H, W)

    def stage_output(self, i: int, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Tokens (B, H_i*W_i, C_i) of stage ``i`` -> map (B, C_i, H/s_i, W/s_i)."""
        return tokens_to_map(x, H, W)

    def forward_fused(self, x: torch.Tensor, fuse: Optional[Fuse] = None,
                      num_stages: Optional[int] = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Run the first ``num_stages`` stages (default all) on ``x`` (sides multiples of ``pad_multiple``),
        with ``tokens = fuse(i, tokens, (H_i, W_i))`` after stage i. Returns the last tokens and grid."""
        tokens, (H, W) = self.embed(x)
        for i in range(len(self.feature_info) if num_stages is None else num_stages):
            tokens, (H, W) = self.forward_stage(i, tokens, H, W)
            if fuse is not None:
                tokens = fuse(i, tokens, (H, W))
        return tokens, (H, W)

    # -- plain (language-free) use ----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B,3,H,W) -> the 4 ``stage_output`` maps (B, C_i, H'/s_i, W'/s_i), H' = H padded to ``pad_multiple``."""
        feats = []

        def keep(i, tokens, hw):
            feats.append(self.stage_output(i, tokens, *hw))
            return tokens

        self.forward_fused(pad_to_multiple(x, self.pad_multiple), keep)
        return feats

    def forward_intermediates(self, x: torch.Tensor, indices: Union[int, Sequence[int], None] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's API: the raw stage outputs (before ``stage_output``'s resampling), input padded to
        ``trunk_multiple``. ``indices``: stages to return (an int n: the last n; default all).

        Returns the list of maps with ``intermediates_only``, else (last stage's map, list). There is no
        final norm (``norm=True`` is refused); ``stop_early`` stops after the last stage asked for.
        """
        from timm.models._features import feature_take_indices

        if norm:
            raise ValueError("forward_intermediates: refseg's encoders have no final norm (norm=False)")
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"forward_intermediates: output_fmt must be NCHW or NHWC, got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        outs = []

        def keep(i, tokens, hw):
            if i in take:
                fmap = tokens_to_map(tokens, *hw)
                outs.append(fmap.permute(0, 2, 3, 1) if output_fmt == "NHWC" else fmap.contiguous())
            return tokens

        tokens, hw = self.forward_fused(pad_to_multiple(x, self.trunk_multiple), keep,
                                        num_stages=max_index + 1 if stop_early else None)
        if intermediates_only:
            return outs
        return tokens_to_map(tokens, *hw), outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's API: the last stage's raw map (B, C_4, h, w) (input padded to ``trunk_multiple``)."""
        tokens, hw = self.forward_fused(pad_to_multiple(x, self.trunk_multiple))
        return tokens_to_map(tokens, *hw)


# ---------------------------------------------------------------------------------------------
# Shared layers
# ---------------------------------------------------------------------------------------------


def init_linear(module: nn.Module) -> None:
    """timm's XCiT / Swin init: truncated-normal Linear weights (std 0.02), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def tokens_to_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], H, W)


# ---------------------------------------------------------------------------------------------
# Pretrained weights
# ---------------------------------------------------------------------------------------------


def read_state_dict(spec: str) -> dict[str, torch.Tensor]:
    """``model.vision.pretrained``: a local .safetensors/.pth file, or a timm XCiT tag downloaded through timm."""
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file
                sd = load_file(str(path))
            else:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt / foreign file
            raise ValueError(f"model.vision.pretrained: cannot read '{spec}': {first_line(e)}") from None
        for key in ("model", "state_dict", "model_state"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
        if not isinstance(sd, dict):
            raise ValueError(f"model.vision.pretrained: '{spec}' holds no state dict")
        return sd
    looks_like_path = any(s in spec for s in ("/", "\\")) or path.suffix in (".pth", ".pt", ".bin", ".safetensors")
    if looks_like_path or not spec.startswith("xcit_"):
        raise ValueError(f"model.vision.pretrained: file not found: '{spec}'")
    import timm
    arch, dot, tag = spec.partition(".")
    if not timm.is_model(arch) and timm.is_model(arch + "_224"):  # xcit_small_12_p16 -> xcit_small_12_p16_224
        arch += "_224"
    if not timm.is_model(arch):
        raise ValueError(f"model.vision.pretrained: '{spec}' is neither a file nor a timm XCiT model "
                         f"(e.g. xcit_small_12_p16_384.fb_dist_in1k)")
    try:
        model = timm.create_model(arch + dot + tag, pretrained=True)
    except Exception as e:
        raise ValueError(f"model.vision.pretrained: cannot get timm weights '{spec}' ({first_line(e)}); "
                         f"offline? pass a local .safetensors/.pth file instead") from None
    return model.state_dict()


def strip_ddp_prefix(sd: dict) -> dict[str, torch.Tensor]:
    """Tensors only, DDP's ``module.`` prefix removed (a new dict: timm's filters edit theirs in place)."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items() if torch.is_tensor(v)}


def summarize_keys(keys: list[str], n: int = 5) -> str:
    """Readable summary of state-dict keys: block indices as ranges, the rest listed (up to n)."""
    blocks = sorted({int(k.split(".")[1]) for k in keys if re.match(r"blocks\.\d+\.", k)})
    parts = []
    if blocks:
        ranges, start = [], blocks[0]
        for a, b in zip(blocks, blocks[1:] + [None]):
            if b != a + 1:
                ranges.append(f"blocks.{start}" if a == start else f"blocks.{start}-{a}")
                start = b
        parts.append(", ".join(ranges))
    rest = [k for k in keys if not re.match(r"blocks\.\d+\.", k)]
    parts += rest[:n] + (["..."] if len(rest) > n else [])
    return "[" + ", ".join(parts) + "]"
