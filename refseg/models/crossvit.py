"""CrossViT: an XCiT encoder wrapped with a second token stream at another patch size, fused by CLS exchange.

CrossViT (Chen et al. 2021) cross-attention fusion, per stage boundary, between stream A (XCiT,
width C_i) and stream B (this branch, width D)::

    cls_A' = revert_BA( CrossAttn_B( [proj_AB(cls_A), tokens_B] ) )   # A's CLS, in B's width, is the single query
    cls_B' = revert_AB( CrossAttn_A( [proj_BA(cls_B), tokens_A] ) )

(proj/revert = LayerNorm + GELU + Linear, CrossAttn = timm ``CrossAttentionBlock``; both directions
read the streams before the update, as in CrossViT). One query over N tokens: linear in tokens.

``CrossViT`` is itself an ``Encoder`` (``refseg.models.encoder``): it drives the wrapped encoder's
stages (``embed``, ``downsample``, ``forward_blocks``) in its ``forward_fused`` and adds the second
stream, so no encoder knows about CLS tokens. The XCiT stream has no CLS of its own: the wrapper owns
one (``xcit_cls_token``) that travels through the XCA blocks as a prefix token with the patch tokens. What comes back reaches the XCiT patch tokens through
XCA's covariance (weak) and a zero-initialised projection added to every token
(``tokens_A += inject(cls_A')``), so the branch starts as a no-op on the patch tokens and learns how
much to contribute. After the last stage B's CLS is not used, so the last exchange only updates A.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models.crossvit import CrossAttentionBlock
from timm.models.xcit import PositionalEncodingFourier

from ..config import CrossViTConfig
from .encoder import Encoder, Fuse
from .xcit import make_xca_block

def _proj(din: int, dout: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(din), nn.GELU(), nn.Linear(din, dout))


class CLSExchange(nn.Module):
    """CrossViT cross-attention fusion of two streams' CLS tokens (see module docstring).

    forward(cls_a (B,1,Ca), tokens_a (B,Na,Ca), cls_b (B,1,Cb), tokens_b (B,Nb,Cb)) -> (cls_a', cls_b')
    With ``update_b=False`` only A's CLS is updated (cls_b is returned unchanged, no B-side parameters).
    """

    def __init__(self, dim_a: int, dim_b: int, heads_a: int, heads_b: int, update_b: bool = True):
        super().__init__()
        self.update_b = update_b
        self.proj_ab = _proj(dim_a, dim_b)
        self.attn_b = CrossAttentionBlock(dim_b, heads_b, qkv_bias=True)
        self.revert_ba = _proj(dim_b, dim_a)
        if update_b:
            self.proj_ba = _proj(dim_b, dim_a)
            self.attn_a = CrossAttentionBlock(dim_a, heads_a, qkv_bias=True)
            self.revert_ab = _proj(dim_a, dim_b)

    def forward(self, cls_a, tokens_a, cls_b, tokens_b):
        new_a = self.revert_ba(self.attn_b(torch.cat([self.proj_ab(cls_a), tokens_b.to(cls_a.dtype)], dim=1)))
        if self.update_b:
            cls_b = self.revert_ab(self.attn_a(torch.cat([self.proj_ba(cls_b), tokens_a.to(cls_b.dtype)], dim=1)))
        return new_a, cls_b


class CrossViT(Encoder):
    """An encoder whose blocks carry prefix tokens (XCiT), wrapped with CrossViT's second stream.

    Args:
        encoder: the wrapped ``Encoder`` (``supports_prefix_tokens``: XCiTColumnar or XCiTHierarchical).
            It is not a submodule here: the model owns it as ``encoder`` (state-dict keys ``encoder.*``,
            this module's ``crossvit.*``), so ``.to()`` / ``state_dict`` of a CrossViT alone leave it out.
        config: ``model.crossvit``: ``patch_size`` (this stream's, linear patch embedding as CrossViT),
            ``embed_dim``, ``depth`` (XCA blocks per stage: linear in tokens), ``num_heads``.
        mlp_ratio, drop_path_rate: of this stream's blocks.

    ``feature_info`` is the wrapped encoder's; ``pad_multiple`` the least common multiple of its and
    ``patch_size``. ``forward_fused(x, fuse)`` runs, per stage i: the XCiT CLS carried to stage i's
    width, the encoder's patch merging, its blocks with the CLS as a prefix token, this stream's
    blocks, the CLS exchange, then ``fuse``.
    """

    def __init__(self, encoder: Encoder, config: Optional[CrossViTConfig] = None,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0):
        super().__init__()
        if not encoder.supports_prefix_tokens:
            raise ValueError(f"model.crossvit: the CrossViT branch needs an XCiT encoder, not "
                             f"{type(encoder).__name__} (its blocks cannot carry the CLS token)")
        self._wrapped = (encoder,)  # a tuple: not registered as a submodule (see the class docstring)
        self.feature_info = [dict(f) for f in encoder.feature_info]
        config = config or CrossViTConfig()  # validated there: widths, heads, depth
        patch_size, embed_dim, depth, num_heads = config.patch_size, config.embed_dim, config.depth, config.num_heads
        xcit_dims, xcit_heads = encoder.out_channels, encoder.stage_heads
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = PositionalEncodingFourier(dim=embed_dim)  # any grid size, like the XCiT stream
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.xcit_cls_token = nn.Parameter(torch.zeros(1, 1, xcit_dims[0]))
        self.xcit_cls_proj = nn.ModuleList([
            nn.Identity() if i == 0 or xcit_dims[i] == xcit_dims[i - 1] else nn.Linear(xcit_dims[i - 1], xcit_dims[i])
            for i in range(4)])
        self.stages = nn.ModuleList([
            nn.ModuleList([make_xca_block(embed_dim, num_heads, drop_path=drop_path_rate, mlp_ratio=mlp_ratio)
                           for _ in range(depth)]) for _ in range(4)])
        self.exchanges = nn.ModuleList([
            CLSExchange(xcit_dims[i], embed_dim, xcit_heads[i], num_heads, update_b=i < 3) for i in range(4)])
        self.inject = nn.ModuleList([nn.Linear(xcit_dims[i], xcit_dims[i]) for i in range(4)])

        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.xcit_cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for lin in self.inject:  # start as a no-op on the XCiT patch tokens
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @property
    def encoder(self) -> Encoder:
        """The wrapped encoder."""
        return self._wrapped[0]

    @property
    def pad_multiple(self) -> int:
        return math.lcm(self.encoder.pad_multiple, self.patch_size)

    @property
    def trunk_multiple(self) -> int:
        return math.lcm(self.encoder.trunk_multiple, self.patch_size)

    def stage_output(self, i: int, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return self.encoder.stage_output(i, x, H, W)

    def forward_fused(self, x: torch.Tensor, fuse: Optional[Fuse] = None,
                      num_stages: Optional[int] = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """As ``Encoder.forward_fused``, both streams: ``fuse`` sees the XCiT patch tokens after the exchange."""
        enc = self.encoder
        tokens, (H, W) = enc.embed(x)
        tb, hwb = self.embed_branch(x)
        cls = self.xcit_cls(x.shape[0])
        for i in range(len(self.feature_info) if num_stages is None else num_stages):
            cls = self.xcit_cls_to_stage(i, cls)
            tokens, (H, W) = enc.downsample(i, tokens, H, W)
            t = enc.forward_blocks(i, torch.cat([cls.to(tokens.dtype), tokens], dim=1), H, W, num_prefix=1)
            cls, tokens = t[:, :1], t[:, 1:]
            tb = self.forward_branch(i, tb, hwb)
            tokens, cls, tb = self.exchange(i, tokens, cls, tb)
            if fuse is not None:
                tokens = fuse(i, tokens, (H, W))
        return tokens, (H, W)

    # -- the second stream and the exchanges --------------------------------------------------------
    def embed_branch(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B,3,H,W), sides multiples of patch_size -> tokens (B, 1+Hb*Wb, D) (CLS first), (Hb, Wb)."""
        t = self.patch_embed(x)
        Hb, Wb = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2) + self.pos_embed(1, Hb, Wb).flatten(2).transpose(1, 2).to(t.dtype)
        cls = self.cls_token.expand(t.shape[0], -1, -1).to(t.dtype)
        return torch.cat([cls, t], dim=1), (Hb, Wb)

    def xcit_cls(self, batch: int) -> torch.Tensor:
        """The XCiT stream's initial CLS, (B, 1, C_0)."""
        return self.xcit_cls_token.expand(batch, -1, -1)

    def xcit_cls_to_stage(self, i: int, cls: torch.Tensor) -> torch.Tensor:
        """Carry the XCiT CLS (B,1,C_{i-1}) to stage i's width (identity when widths match)."""
        return self.xcit_cls_proj[i](cls)

    def forward_branch(self, i: int, tb: torch.Tensor, hwb: tuple[int, int]) -> torch.Tensor:
        """This stream's blocks of stage i: (B, 1+Hb*Wb, D) -> same."""
        for blk in self.stages[i]:
            tb = blk(tb, hwb[0], hwb[1], 1)
        return tb

    def exchange(self, i: int, tokens: torch.Tensor, cls: torch.Tensor, tb: torch.Tensor):
        """CLS exchange at the end of stage i.

        tokens (B,N,C_i) XCiT patch tokens, cls (B,1,C_i) XCiT CLS, tb (B,1+M,D) this stream.
        Returns (tokens + inject(cls'), cls', tb with its CLS replaced).
        """
        new_cls, cls_b = self.exchanges[i](cls, tokens, tb[:, :1], tb[:, 1:])
        tokens = tokens + self.inject[i](new_cls).to(tokens.dtype)
        if self.exchanges[i].update_b:
            tb = torch.cat([cls_b.to(tb.dtype), tb[:, 1:]], dim=1)
        return tokens, new_cls, tb
