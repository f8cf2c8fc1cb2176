"""CrossViT branch: a second token stream at another patch size, fused with the XCiT stream by CLS exchange.

CrossViT (Chen et al. 2021) cross-attention fusion, per stage boundary, between stream A (XCiT,
width C_i) and stream B (this branch, width D)::

    cls_A' = revert_BA( CrossAttn_B( [proj_AB(cls_A), tokens_B] ) )   # A's CLS, in B's width, is the single query
    cls_B' = revert_AB( CrossAttn_A( [proj_BA(cls_B), tokens_A] ) )

(proj/revert = LayerNorm + GELU + Linear, CrossAttn = timm ``CrossAttentionBlock``; both directions
read the streams before the update, as in CrossViT). One query over N tokens: linear in tokens.

The XCiT stream has no CLS of its own: this branch owns one (``xcit_cls_token``) that travels
through the XCA blocks with the patch tokens. What comes back reaches the XCiT patch tokens through
XCA's covariance (weak) and a zero-initialised projection added to every token
(``tokens_A += inject(cls_A')``), so the branch starts as a no-op on the patch tokens and learns how
much to contribute. After the last stage B's CLS is not used, so the last exchange only updates A.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models.crossvit import CrossAttentionBlock
from timm.models.vision_transformer import Block
from timm.models.xcit import PositionalEncodingFourier

from ..config import CrossViTConfig
from .xcit import XCABlockWithPrefix, make_xca_block

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


class CrossViTBranch(nn.Module):
    """The second stream and its exchanges with the XCiT stream.

    Args:
        xcit_dims, xcit_heads: the XCiT stream's width and heads per stage (4 each).
        config: ``model.crossvit``: ``patch_size`` (this stream's, linear patch embedding as CrossViT),
            ``embed_dim``, ``depth`` (blocks per stage), ``num_heads``, ``block``: "vit" (timm ViT
            ``Block``, softmax self-attention over this stream's tokens, as CrossViT) or "xca" (XCiT
            blocks: linear in tokens).
        mlp_ratio, drop_path_rate: of this stream's blocks.

    Use (see ``RefSegModel.forward_features``)::

        tb, hwb = branch.embed(x)              # (B, 1+Hb*Wb, D) with CLS first
        cls = branch.xcit_cls(B)               # (B, 1, C_0): the XCiT stream's CLS
        per stage i: cls = branch.xcit_cls_to_stage(i, cls); <XCiT stage i with cls>;
                     tb = branch.forward_stage(i, tb, hwb)
                     tokens, cls, tb = branch.exchange(i, tokens, cls, tb)
    """

    def __init__(self, xcit_dims: Sequence[int], xcit_heads: Sequence[int], config: Optional[CrossViTConfig] = None,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0):
        super().__init__()
        config = config or CrossViTConfig()  # validated there: widths, heads, depth
        patch_size, embed_dim, depth, num_heads, block = (config.patch_size, config.embed_dim, config.depth,
                                                          config.num_heads, config.block)
        xcit_dims, xcit_heads = list(xcit_dims), list(xcit_heads)
        self.patch_size, self.embed_dim, self.block_type = patch_size, embed_dim, block
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = PositionalEncodingFourier(dim=embed_dim)  # any grid size, like the XCiT stream
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.xcit_cls_token = nn.Parameter(torch.zeros(1, 1, xcit_dims[0]))
        self.xcit_cls_proj = nn.ModuleList([
            nn.Identity() if i == 0 or xcit_dims[i] == xcit_dims[i - 1] else nn.Linear(xcit_dims[i - 1], xcit_dims[i])
            for i in range(4)])
        if block == "vit":
            def make():
                return Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=drop_path_rate)
        else:
            def make():
                return make_xca_block(embed_dim, num_heads, drop_path=drop_path_rate, mlp_ratio=mlp_ratio)
        self.stages = nn.ModuleList([nn.ModuleList([make() for _ in range(depth)]) for _ in range(4)])
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

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
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

    def forward_stage(self, i: int, tb: torch.Tensor, hwb: tuple[int, int]) -> torch.Tensor:
        """This stream's blocks of stage i: (B, 1+Hb*Wb, D) -> same."""
        for blk in self.stages[i]:
            tb = blk(tb, hwb[0], hwb[1], 1) if isinstance(blk, XCABlockWithPrefix) else blk(tb)
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
