"""Swin Transformer encoder (LAVT's backbone) from timm's modules, with the XCiT encoders' stage-wise API.

Parameters, names and initialisation are timm's (``timm.models.swin_transformer``: ``PatchEmbed``,
``PatchMerging``, ``WindowAttention``, ``Mlp``, LayerNorms), so timm's Swin weights load verbatim
and the original Swin release loads with the patch-merging layers renumbered (as timm does).

What is not timm's is the order inside a shifted-window block, which follows LAVT (and the Swin
segmentation code it derives from): the normalised map is padded at the bottom/right to a multiple
of the window *before* the cyclic shift, and the shifted-window mask is built for the padded map.
timm rolls the unpadded map and pads afterwards. With window 12 both give the same result on 24x24
and 30x30 maps, but not on 15x15, the stride-32 map of a 480 px input: there timm's first window
wraps rows 0-2 of the map around to rows 6-14, LAVT's holds zero padding instead. The window is also
never shrunk to the map (timm shrinks it, and drops the shift, for maps up to the window's size).

Stage-wise API (the ``Encoder`` protocol of ``refseg.models.encoder``)::

    tokens, (H, W) = enc.embed(x)                               # x (B,3,H,W), any size
    for i in range(4):
        tokens, (H, W) = enc.forward_stage(i, tokens, H, W)     # (B, H_i*W_i, C_i); merging first for i > 0
        fmap = enc.stage_output(i, tokens, H, W)                # (B, C_i, H_i, W_i), H_i = ceil(H / 4 / 2**i)

There is no final norm: the language-fused model normalises each stage's PWAM output itself. The
blocks take no prefix tokens, so the CrossViT wrapper (which sends a CLS through them) needs XCiT.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import PatchEmbed, calculate_drop_path_rates
from timm.models.swin_transformer import (PatchMerging, SwinTransformerBlock, checkpoint_filter_fn, window_partition,
                                          window_reverse)

from ..config import SWIN_NAME
from .encoder import Encoder, init_linear, read_state_dict, stage_info, strip_ddp_prefix, summarize_keys

logger = logging.getLogger("refseg")

# Swin variants as LAVT builds them (lib/segmentation.py): size -> (embed_dim, depths, num_heads).
SWIN_SIZES = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def swin_variant_args(name: str) -> dict:
    """Shape of a Swin variant from its name (``base``, ``swin_base``, ``swin_base_patch4_window12_384``).

    Returns dict(embed_dim, depths, num_heads).
    """
    m = SWIN_NAME.fullmatch(name.strip())
    if m is None:
        raise ValueError(f"model.vision.name: unknown Swin variant '{name}' "
                         f"(expected swin_tiny, swin_small, swin_base or swin_large)")
    dim, depths, heads = SWIN_SIZES[m.group(1)]
    return dict(embed_dim=dim, depths=list(depths), num_heads=list(heads))


class SwinBlock(SwinTransformerBlock):
    """timm's ``SwinTransformerBlock`` (same parameters) with LAVT's order: pad to the window, then shift.

    The window and shift stay as given whatever the map size. forward(x (B, H, W, C)) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 12, shift: bool = False,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__(dim, input_resolution=(window_size, window_size), num_heads=num_heads,
                         window_size=window_size, shift_size=window_size // 2 if shift else 0,
                         always_partition=True, dynamic_mask=True, mlp_ratio=mlp_ratio, drop_path=drop_path)

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """Shifted-window attention on the normalised map (B, H, W, C)."""
        B, H, W, C = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (-W) % ww, 0, (-H) % wh))  # zeros after norm1, as LAVT pads
        Hp, Wp = x.shape[1:3]
        mask = None
        if any(self.shift_size):
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
            mask = self.get_attn_mask(x)  # regions of the padded map (nW, wh*ww, wh*ww): 0 or -100
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, wh, ww, C), self.window_size, Hp, Wp)
        if any(self.shift_size):
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :H, :W].contiguous()


class SwinStage(nn.Module):
    """Patch merging (stages after the first, as in timm) then Swin blocks alternating shift 0 / window // 2.

    forward(x (B, H, W, C_in)) -> (B, ceil(H/2), ceil(W/2), C) (or (B, H, W, C) without merging).
    """

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, window_size: int,
                 drop_path: Sequence[float], downsample: bool, mlp_ratio: float = 4.0):
        super().__init__()
        self.downsample = PatchMerging(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([SwinBlock(dim, num_heads, window_size, shift=j % 2 == 1, mlp_ratio=mlp_ratio,
                                               drop_path=drop_path[j]) for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class SwinEncoder(Encoder):
    """Swin Transformer trunk (no classifier, no final norm) with LAVT's padding, any input size.

    Args:
        name: variant, ``swin_tiny`` / ``swin_small`` / ``swin_base`` / ``swin_large`` (LAVT's shapes).
        embed_dim, depths, num_heads: optional overrides of the variant's shape (4 values each).
        window_size: attention window (LAVT: 12, with the window-12 ImageNet-22k weights).
        drop_path_rate: stochastic depth rising linearly from 0 over all blocks to this (LAVT: 0.3).
        mlp_ratio: MLP width over the block width.

    ``feature_info``: C, 2C, 4C, 8C channels at strides 4/8/16/32 (``layers.i``); ``pad_multiple`` 1:
    any size (the patch embedding and patch merging pad as LAVT's do).
    """

    def __init__(self, name: str = "swin_base", embed_dim: Optional[int] = None, depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None, window_size: int = 12, drop_path_rate: float = 0.3,
                 mlp_ratio: float = 4.0):
        super().__init__()
        args = swin_variant_args(name)
        dim = embed_dim or args["embed_dim"]
        depths = list(depths) if depths is not None else args["depths"]
        heads = list(num_heads) if num_heads is not None else args["num_heads"]
        if len(depths) != 4 or len(heads) != 4 or min(depths) < 1:
            raise ValueError(f"model.vision: Swin needs 4 stages of at least one block, got depths={depths}, heads={heads}")
        dims = [dim * 2 ** i for i in range(4)]
        for d, h in zip(dims, heads):
            if d % h:
                raise ValueError(f"model.vision.num_heads: stage width {d} is not a multiple of {h} heads")
        if window_size < 2:
            raise ValueError(f"model.vision.window_size: must be at least 2, got {window_size}")
        self.name, self.embed_dim, self.depths, self.num_heads, self.window_size = name, dim, depths, heads, window_size
        self.patch_embed = PatchEmbed(img_size=None, patch_size=4, embed_dim=dim, norm_layer=nn.LayerNorm,
                                      output_fmt="NHWC", strict_img_size=False, dynamic_img_pad=True)
        dpr = calculate_drop_path_rates(drop_path_rate, depths, stagewise=True)
        self.layers = nn.ModuleList([
            SwinStage(dims[max(i - 1, 0)], dims[i], depths[i], heads[i], window_size, dpr[i], downsample=i > 0,
                      mlp_ratio=mlp_ratio) for i in range(4)])
        init_linear(self)  # timm's and LAVT's init: truncated-normal Linear weights, zero biases
        self.feature_info = stage_info(dims, heads, [f"layers.{i}" for i in range(4)])

    @property
    def pad_multiple(self) -> int:
        return 1

    # -- stage-wise API -----------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B,3,H,W) -> tokens (B, H/4*W/4, C) (sides padded up to multiples of 4), and (H/4, W/4)."""
        x = self.patch_embed(x)  # (B, Hp, Wp, C), LayerNorm'd
        B, Hp, Wp, C = x.shape
        return x.reshape(B, Hp * Wp, C), (Hp, Wp)

    def forward_stage(self, i: int, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Stage ``i`` on tokens (B, H*W, C_{i-1}): patch merging (i > 0, odd sides padded), then its blocks.

        Returns (tokens (B, H_i*W_i, C_i), (H_i, W_i)); ``stage_output`` is a plain reshape (already at
        stride 4 * 2**i), so ``forward`` gives maps (B, C_i, ceil(H/4/2**i), ceil(W/4/2**i)).
        """
        x = self.layers[i](x.reshape(x.shape[0], H, W, x.shape[-1]))
        B, H, W, C = x.shape
        return x.reshape(B, H * W, C), (H, W)


# ---------------------------------------------------------------------------------------------
# Pretrained weights
# ---------------------------------------------------------------------------------------------

_CLASSIFIER = ("head.", "norm.")  # the classification head and the final norm (the encoder has neither)


def clean_swin_state_dict(sd: dict[str, torch.Tensor], encoder: SwinEncoder) -> dict[str, torch.Tensor]:
    """timm or original-release Swin state dict -> this encoder's key names and window.

    Strips ``module.``, then timm's ``checkpoint_filter_fn``: drops the buffers, renumbers the original
    release's patch merging (at the end of stage i) to timm's place (the start of stage i + 1) and
    resizes relative-position tables of another window (``resize_rel_pos_bias_table``). Drops the head
    and the final norm. A table whose head count differs raises ValueError naming the key; one for a
    block the encoder lacks is passed through unchanged (reported as unexpected).
    """
    sd = strip_ddp_prefix(sd)
    own = encoder.state_dict()
    aside = {}
    for k, v in list(sd.items()):
        if not k.endswith("relative_position_bias_table"):
            continue
        if k not in own:  # timm's filter would look for the block to resize to
            aside[k] = sd.pop(k)
        elif v.shape != own[k].shape and (v.ndim != 2 or v.shape[1] != own[k].shape[1]):
            raise _mismatch(k, v, own[k])
    sd = checkpoint_filter_fn(sd, encoder)
    sd.update(aside)
    return {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIER)}


def _mismatch(k: str, v: torch.Tensor, own: torch.Tensor) -> ValueError:
    return ValueError(f"model.vision.pretrained: shape mismatch for '{k}': checkpoint {tuple(v.shape)} vs "
                      f"model {tuple(own.shape)} (check model.vision.name / embed_dim / depths / num_heads)")


def load_swin_pretrained(encoder: SwinEncoder, spec: str) -> dict[str, list[str]]:
    """Load Swin weights from a local .safetensors/.pth file (timm's layout or the original release's).

    Relative-position tables of another window size are resized (timm's ``resize_rel_pos_bias_table``);
    any other shape mismatch raises ValueError naming the key, as does a file with no Swin weights.
    Logs the fraction of the encoder's tensors loaded verbatim. Returns {"loaded", "resized",
    "missing", "unexpected"}: lists of keys.
    """
    sd = strip_ddp_prefix(read_state_dict(spec))
    raw = {k: tuple(v.shape) for k, v in sd.items()}
    sd = clean_swin_state_dict(sd, encoder)
    own = encoder.state_dict()
    loaded, resized = [], []
    for k, v in sd.items():
        if k not in own:
            continue
        if own[k].shape != v.shape:
            raise _mismatch(k, v, own[k])
        (resized if k.endswith("relative_position_bias_table") and raw.get(k) != tuple(v.shape) else loaded).append(k)
    if not loaded:
        raise ValueError(f"model.vision.pretrained: '{spec}' has no Swin weights (no key matches patch_embed./layers.)")
    missing = sorted(set(own) - set(loaded) - set(resized))
    unexpected = sorted(k for k in sd if k not in own)
    encoder.load_state_dict({k: sd[k] for k in loaded + resized}, strict=False)
    report = (f"Swin weights '{spec}': {len(loaded)}/{len(own)} encoder tensors loaded verbatim"
              + (f", {len(resized)} relative-position tables resized to window {encoder.window_size}" if resized else "")
              + (f"; {len(missing)} missing {summarize_keys(missing)}" if missing else "")
              + (f"; {len(unexpected)} unexpected keys ignored {summarize_keys(unexpected)}" if unexpected else ""))
    (logger.warning if missing or unexpected or resized else logger.info)(report)
    return {"loaded": loaded, "resized": resized, "missing": missing, "unexpected": unexpected}
