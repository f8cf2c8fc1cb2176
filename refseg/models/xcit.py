"""XCiT encoders built from timm's XCiT blocks, with a stage-wise API for language fusion.

Two ``Encoder``s (``refseg.models.encoder``: the protocol, timm's ``feature_info``) so the LAVT-style
model can fuse language *between* stages:

- ``XCiTColumnar``: a timm XCiT trunk (``patch_embed``, ``pos_embed``, ``blocks.N`` named exactly as
  in timm, so timm / official checkpoints load) cut into 4 stages at ``out_indices``; each stage's
  output is resampled to strides 4/8/16/32 as in XCiT's dense-prediction backbones.
- ``XCiTHierarchical``: a Swin-like pyramid (conv stem to stride 4, patch merging between stages)
  with XCA blocks in every stage, trained from scratch.

Stage-wise API (both encoders; see ``refseg.models.encoder``)::

    tokens, (Hp, Wp) = enc.embed(x)                      # x (B,3,H,W), H and W multiples of enc.pad_multiple
    for i in range(4):
        tokens, (Hp, Wp) = enc.forward_stage(i, tokens, Hp, Wp)   # (B,N_i,C_i)
        fmap = enc.stage_output(i, tokens, Hp, Wp)       # (B,C_i,H/s_i,W/s_i), s_i = enc.out_strides[i]

Their blocks carry prefix tokens (``forward_blocks(..., num_prefix)``), which is how the CrossViT
wrapper (``refseg.models.crossvit``) sends its CLS token through them.

Everything here is linear in the number of pixels: XCA attends over channels, LPI and the
resampling are convolutions.
"""
from __future__ import annotations

import logging
import re
from functools import partial
from typing import Optional, Sequence

import torch
from torch import nn
from timm.layers import Attention
from timm.models.xcit import ConvPatchEmbed, PositionalEncodingFourier, XCABlock, checkpoint_filter_fn, conv3x3

from .encoder import STRIDES, Encoder, init_linear, read_state_dict, stage_info, strip_ddp_prefix, summarize_keys, \
    tokens_to_map

logger = logging.getLogger("refseg")

# XCiT widths: size -> (embed_dim, num_heads) as timm's variants; "micro" is refseg's CPU-sized width
# (the embedded default, trained from scratch: no pretrained weights exist for it).
_XCIT_SIZES = {"micro": (96, 4), "nano": (128, 4), "tiny": (192, 4), "small": (384, 8), "medium": (512, 8),
               "large": (768, 16)}
_XCIT_NAME = re.compile(r"xcit_(micro|nano|tiny|small|medium|large)_(\d+)_p(8|16)(?:_(?:224|384))?(?:\.[\w]+)?")
ATTENTION_TYPES = ("xca", "global")
OUT_STRIDES = list(STRIDES)  # XCiT's dense-prediction backbones; the hierarchical encoder's stages


def xcit_variant_args(name: str) -> dict:
    """Shape of an XCiT variant from its name: ``xcit_<size>_<depth>_p<patch>`` (timm's names such as
    ``xcit_small_12_p16`` or ``xcit_nano_12_p8_384.fb_dist_in1k``, and any other depth).

    Returns dict(embed_dim, depth, num_heads, patch_size, eta) as in timm's model entrypoints.
    """
    m = _XCIT_NAME.fullmatch(name.strip())
    if m is None or int(m.group(2)) < 1:
        raise ValueError(f"model.vision.name: unknown XCiT variant '{name}' (expected "
                         f"xcit_<micro|nano|tiny|small|medium|large>_<depth>_p<8|16>, e.g. xcit_small_12_p16)")
    size, depth, patch = m.group(1), int(m.group(2)), int(m.group(3))
    dim, heads = _XCIT_SIZES[size]
    # timm: layer-scale init 1.0 for models up to 12 layers, 1e-5 for 24-layer ones
    return dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch, eta=1.0 if depth <= 12 else 1e-5)


def default_out_indices(depth: int) -> list[int]:
    """Blocks that close the 4 stages: XCiT's dense-prediction cuts for 12/24 layers, else evenly spaced."""
    if depth == 12:
        return [3, 5, 7, 11]
    if depth == 24:
        return [7, 11, 15, 23]
    if depth < 4:
        raise ValueError(f"model.vision.depth: the columnar encoder needs at least 4 blocks, got {depth}")
    return [round((k + 1) * depth / 4) - 1 for k in range(4)]


class XCABlockWithPrefix(XCABlock):
    """timm ``XCABlock`` (XCA + LPI + MLP, same parameter names) that can also carry prefix tokens.

    ``x`` is (B, P+N, C) with P = ``num_prefix`` leading (CLS) tokens and N = H*W spatial tokens.
    XCA (a channel x channel attention, any token count) and the MLP see all tokens; LPI (depth-wise
    3x3 convs) sees only the spatial ones. With P = 0 it is exactly timm's block.
    """

    def forward(self, x: torch.Tensor, H: int, W: int, num_prefix: int = 0) -> torch.Tensor:
        if num_prefix == 0:
            return super().forward(x, H, W)
        x = x + self.drop_path1(self.gamma1 * self.attn(self.norm1(x)))
        prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
        tokens = tokens + self.drop_path3(self.gamma3 * self.local_mp(self.norm3(tokens), H, W))
        x = torch.cat([prefix, tokens], dim=1)
        x = x + self.drop_path2(self.gamma2 * self.mlp(self.norm2(x)))
        return x


def make_xca_block(dim: int, num_heads: int, eta: float = 1.0, drop_path: float = 0.0,
                   attention: str = "xca", mlp_ratio: float = 4.0) -> XCABlockWithPrefix:
    """An XCiT block as timm builds it (qkv bias, LayerNorm eps 1e-6, GELU).

    ``attention="global"`` swaps XCA for standard multi-head softmax attention over tokens (timm
    ``Attention``, same width and heads; quadratic in tokens) - only for the scaling comparison.
    """
    if attention not in ATTENTION_TYPES:
        raise ValueError(f"model.vision.attention: expected one of {ATTENTION_TYPES}, got '{attention}'")
    blk = XCABlockWithPrefix(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=drop_path,
                             norm_layer=partial(nn.LayerNorm, eps=1e-6), eta=eta)
    if attention == "global":
        blk.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
    return blk


def _resampler(dim: int, patch: int, stride: int) -> nn.Module:
    """Map (B, dim, H/patch, W/patch) to stride ``stride``: transposed convs up, identity, max-pool down."""
    def up2():
        return nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)

    if stride == patch // 4:
        return nn.Sequential(up2(), nn.BatchNorm2d(dim), nn.GELU(), up2())
    if stride == patch // 2:
        return up2()
    if stride == patch:
        return nn.Identity()
    return nn.MaxPool2d(stride // patch, stride // patch)


def _embed_tokens(x: torch.Tensor, pos_embed: PositionalEncodingFourier) -> tuple[torch.Tensor, tuple[int, int]]:
    """A conv stem's map (B, C, Hp, Wp) -> tokens (B, Hp*Wp, C) plus Fourier positions, and (Hp, Wp)."""
    Hp, Wp = x.shape[-2:]
    pos = pos_embed(1, Hp, Wp).flatten(2).transpose(1, 2)  # (1, N, C)
    return x.flatten(2).transpose(1, 2) + pos.to(x.dtype), (Hp, Wp)


class XCiTColumnar(Encoder):
    """A timm XCiT trunk cut into 4 stages; stage outputs resampled to strides 4/8/16/32.

    Args:
        name: timm XCiT variant (``xcit_nano_12_p8``, ``xcit_small_12_p16``, ``xcit_medium_24_p8``, ...).
        embed_dim, depth, num_heads, patch_size: optional overrides of the variant's shape.
        out_indices: blocks that close each stage (default: [3,5,7,11] for 12 blocks,
            [7,11,15,23] for 24, else evenly spaced ending at depth-1).
        drop_path_rate: stochastic depth, constant over blocks (as timm's XCiT).
        attention: "xca" (default) or "global" (softmax attention over tokens; benchmarks only).

    ``feature_info``: 4 x embed_dim channels at strides 4/8/16/32 (``resample.i``), ``num_heads`` each;
    ``pad_multiple`` 32 (the stride-32 output), ``trunk_multiple`` the patch size.
    ``forward_intermediates`` (the stages' tokens on the patch grid, before resampling) gives the same
    values as timm's ``Xcit.forward_intermediates(x, indices=out_indices)`` with the same weights.
    """

    supports_prefix_tokens = True

    def __init__(self, name: str = "xcit_micro_6_p8", embed_dim: Optional[int] = None, depth: Optional[int] = None,
                 num_heads: Optional[int] = None, patch_size: Optional[int] = None,
                 out_indices: Optional[Sequence[int]] = None, drop_path_rate: float = 0.0, attention: str = "xca"):
        super().__init__()
        args = xcit_variant_args(name)
        for key, value in dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size).items():
            if value is not None:
                args[key] = value
        dim, depth, heads, patch = args["embed_dim"], args["depth"], args["num_heads"], args["patch_size"]
        if patch not in (8, 16):
            raise ValueError(f"model.vision.patch_size: XCiT's convolutional patch embedding supports 8 or 16, got {patch}")
        if dim % heads or dim % 8:
            raise ValueError(f"model.vision.embed_dim: {dim} must be a multiple of 8 and of num_heads={heads}")
        out_indices = list(out_indices) if out_indices is not None else default_out_indices(depth)
        if len(out_indices) != 4 or sorted(set(out_indices)) != out_indices or out_indices[0] < 0 \
                or out_indices[-1] != depth - 1:
            raise ValueError(f"model.vision.out_indices: expected 4 increasing block indices ending at depth-1={depth - 1}, "
                             f"got {out_indices}")
        self.name, self.embed_dim, self.depth, self.num_heads, self.patch_size = name, dim, depth, heads, patch
        self.out_indices = out_indices
        starts = [0] + [i + 1 for i in out_indices[:-1]]
        self.stage_ranges = [(s, e + 1) for s, e in zip(starts, out_indices)]

        # Trunk: names match timm's Xcit so its state dict loads.
        self.patch_embed = ConvPatchEmbed(img_size=224, patch_size=patch, embed_dim=dim, act_layer=nn.GELU)
        self.pos_embed = PositionalEncodingFourier(dim=dim)
        self.blocks = nn.ModuleList([make_xca_block(dim, heads, eta=args["eta"], drop_path=drop_path_rate,
                                                    attention=attention) for _ in range(depth)])
        init_linear(self.blocks)

        # Resampling to strides 4/8/16/32 (XCiT semantic-segmentation backbone's fpn1..4); strides
        # coarser than the patch are max-pooled.
        self.resample = nn.ModuleList([_resampler(dim, patch, s) for s in OUT_STRIDES])
        self.feature_info = stage_info([dim] * 4, [heads] * 4, [f"resample.{i}" for i in range(4)])

    @property
    def trunk_multiple(self) -> int:
        return self.patch_size

    # -- stage-wise API -----------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B,3,H,W) image -> patch tokens (B, Hp*Wp, C) with Fourier positions added, and (Hp, Wp)."""
        return _embed_tokens(self.patch_embed.proj(x), self.pos_embed)

    def forward_blocks(self, i: int, x: torch.Tensor, Hp: int, Wp: int, num_prefix: int = 0) -> torch.Tensor:
        """The blocks of stage ``i`` on (B, P+Hp*Wp, C), P = ``num_prefix`` prefix tokens first (the
        columnar trunk keeps its grid: no ``downsample``)."""
        start, end = self.stage_ranges[i]
        for blk in self.blocks[start:end]:
            x = blk(x, Hp, Wp, num_prefix)
        return x

    def stage_output(self, i: int, x: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """Tokens (B, Hp*Wp, C) of stage ``i`` -> map (B, C, H/s_i, W/s_i) at stride ``out_strides[i]``."""
        return self.resample[i](tokens_to_map(x, Hp, Wp))

    def trunk_state_dict_keys(self) -> list[str]:
        return [k for k in self.state_dict() if k.startswith(("patch_embed.", "pos_embed.", "blocks."))]


class PatchMerging(nn.Module):
    """Swin patch merging: concatenate each 2x2 neighbourhood, LayerNorm, linear to ``out_dim``.

    (B, H*W, C) tokens -> (B, H/2*W/2, out_dim); H and W must be even.
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, tuple[int, int]]:
        B, _, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, (H // 2) * (W // 2), 4 * C)
        return self.reduction(self.norm(x)), (H // 2, W // 2)


class XCiTHierarchical(Encoder):
    """Swin-like XCiT pyramid: conv stem to stride 4, XCA blocks per stage, patch merging between stages.

    Args:
        dims, depths, heads: 4 values each (stage widths, block counts, XCA heads).
        drop_path_rate: stochastic depth, constant over blocks.
        attention: "xca" or "global" (benchmarks only).

    Stage i works at stride 4 * 2**i with ``dims[i]`` channels (``feature_info``: module ``stages.i``);
    ``stage_output`` is a plain reshape.
    """

    supports_prefix_tokens = True

    def __init__(self, dims: Sequence[int] = (64, 128, 256, 512), depths: Sequence[int] = (2, 2, 4, 2),
                 heads: Sequence[int] = (2, 4, 8, 16), drop_path_rate: float = 0.0, attention: str = "xca"):
        super().__init__()
        dims, depths, heads = list(dims), list(depths), list(heads)
        for d, h in zip(dims, heads):
            if d % h or d % 2:
                raise ValueError(f"model.vision.hierarchical_dims: width {d} must be even and a multiple of its heads ({h})")
        if any(d < 1 for d in depths):
            raise ValueError(f"model.vision.hierarchical_depths: every stage needs at least one block, got {depths}")
        # Conv stem to stride 4 (as XCiT's ConvPatchEmbed, two stride-2 conv3x3+BN).
        self.patch_embed = nn.Sequential(conv3x3(3, dims[0] // 2, 2), nn.GELU(), conv3x3(dims[0] // 2, dims[0], 2))
        self.pos_embed = PositionalEncodingFourier(dim=dims[0])
        self.downsamples = nn.ModuleList([nn.Identity()] + [PatchMerging(dims[i - 1], dims[i]) for i in range(1, 4)])
        self.stages = nn.ModuleList([
            nn.ModuleList([make_xca_block(dims[i], heads[i], drop_path=drop_path_rate, attention=attention)
                           for _ in range(depths[i])]) for i in range(4)])
        init_linear(self)
        self.feature_info = stage_info(dims, heads, [f"stages.{i}" for i in range(4)])

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B,3,H,W) -> stride-4 tokens (B, H/4*W/4, dims[0]) with Fourier positions, and (H/4, W/4)."""
        return _embed_tokens(self.patch_embed(x), self.pos_embed)

    def downsample(self, i: int, x: torch.Tensor, Hp: int, Wp: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch merging before stage ``i`` > 0: (B, Hp*Wp, dims[i-1]) -> (B, Hp/2*Wp/2, dims[i])."""
        return self.downsamples[i](x, Hp, Wp) if i > 0 else (x, (Hp, Wp))

    def forward_blocks(self, i: int, x: torch.Tensor, Hp: int, Wp: int, num_prefix: int = 0) -> torch.Tensor:
        """Stage ``i``'s XCA blocks on (B, P+Hp*Wp, dims[i]), P = ``num_prefix`` prefix tokens first."""
        for blk in self.stages[i]:
            x = blk(x, Hp, Wp, num_prefix)
        return x


# ---------------------------------------------------------------------------------------------
# Pretrained weights for the columnar trunk
# ---------------------------------------------------------------------------------------------


def clean_xcit_state_dict(sd: dict[str, torch.Tensor], encoder: XCiTColumnar) -> dict[str, torch.Tensor]:
    """timm or official (facebookresearch) XCiT state dict -> trunk keys only.

    Strips ``module.``, applies timm's ``checkpoint_filter_fn`` (the official ``pos_embeder.`` becomes
    ``pos_embed.``), and drops the classification parts (cls_attn_blocks, head, cls_token, final norm).
    """
    sd = checkpoint_filter_fn(strip_ddp_prefix(sd), encoder)
    return {k: v for k, v in sd.items()
            if not (k.startswith(("cls_attn_blocks.", "head.", "head_dist.", "norm.")) or k == "cls_token")}


def load_xcit_pretrained(encoder: XCiTColumnar, spec: str) -> dict[str, list[str]]:
    """Load trunk weights (timm tag or local file) into ``encoder``.

    Returns {"missing": [...], "unexpected": [...]} (also logged as a warning when non-empty).
    A shape mismatch raises ValueError naming the key; a file with no matching key raises too.
    """
    sd = clean_xcit_state_dict(read_state_dict(spec), encoder)
    own = encoder.state_dict()
    trunk = set(encoder.trunk_state_dict_keys())
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(f"model.vision.pretrained: shape mismatch for '{k}': checkpoint {tuple(v.shape)} vs "
                             f"model {tuple(own[k].shape)} (check model.vision.name / embed_dim / depth / patch_size)")
    matched = [k for k in sd if k in trunk]
    if not matched:
        raise ValueError(f"model.vision.pretrained: '{spec}' has no XCiT trunk weights (no key matches patch_embed./blocks.)")
    missing = sorted(trunk - set(sd))
    unexpected = sorted(k for k in sd if k not in trunk)
    encoder.load_state_dict({k: sd[k] for k in matched}, strict=False)
    if missing or unexpected:
        logger.warning("XCiT weights '%s': %d trunk keys missing %s; %d unexpected keys ignored %s", spec,
                       len(missing), summarize_keys(missing), len(unexpected), summarize_keys(unexpected))
    else:
        logger.info("XCiT weights '%s': all %d trunk tensors loaded", spec, len(matched))
    return {"missing": missing, "unexpected": unexpected}

