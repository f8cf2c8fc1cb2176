"""LAVT's Pixel-Word Attention Module (PWAM) and language gate.

Equations (LAVT, Yang et al. 2022; ``lib/backbone.py`` of LAVT-RIS), V visual tokens, L words,
m word mask (1 = real word)::

    Q  = IN(W_q V)                      K = (W_k L) * m        Vl = (W_v L) * m
    A  = softmax_T(Q K^T / sqrt(C_k) + (1 - m) * (-1e4))
    G  = IN(W_o (A Vl))                 (LAVT's out projection: conv1x1 + InstanceNorm)
    Vm = GELU(W_m V)                    (vis_project: conv1x1 + GELU + dropout)
    F  = GELU(W_p (Vm * G))             (project_mm: conv1x1 + GELU + dropout)
    S  = tanh(W_2 ReLU(W_1 F))          (res_gate); the next stage gets V + S * F

1x1 convolutions over tokens are written as ``nn.Linear`` on (B, N, C) tokens (the same map, and no
transposes); IN is InstanceNorm1d without affine parameters (normalise each channel over the
tokens). With ``num_heads > 1`` the channels split into heads but the scale stays 1/sqrt(C_k), as
in LAVT. ``spatial_cues`` appends normalised (x, y) coordinates to V where it enters W_q and W_m.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import trunc_normal_

from ..config import FusionConfig


def instance_norm_tokens(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm1d (no affine) on tokens: (B, N, C), each channel normalised over N. Stats in fp32.

    Two plain means, not ``torch.var_mean``: over the middle dimension var_mean and its backward took
    2-4x as long on the CPU (10 of a default training step's 200 ms); the results agree to 1e-6."""
    xf = x.float()
    centred = xf - xf.mean(dim=1, keepdim=True)
    var = (centred * centred).mean(dim=1, keepdim=True)
    return (centred * torch.rsqrt(var + eps)).to(x.dtype)


def coordinate_channels(H: int, W: int, device=None, dtype=None) -> torch.Tensor:
    """(1, H*W, 2) normalised (x, y) in [-1, 1], row-major like the token order."""
    ys = torch.linspace(-1.0, 1.0, H, device=device) if H > 1 else torch.zeros(1, device=device)
    xs = torch.linspace(-1.0, 1.0, W, device=device) if W > 1 else torch.zeros(1, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(1, H * W, 2).to(dtype)


class PWAM(nn.Module):
    """Pixel-Word Attention Module.

    Args:
        dim: visual width C (input and output).
        text_dim: word feature width Dt.
        config: ``model.fusion``: ``hidden_dim`` (key/value width; null: dim, as LAVT), ``num_heads``
            (LAVT: 1), ``dropout`` (after the GELUs of vis_project / project_mm), ``spatial_cues``
            (append (x, y) coordinate channels to V for W_q and W_m; False: exactly LAVT).

    forward(v (B, N, C), hw (H, W) with N = H*W, words (B, T, Dt), mask (B, T)) -> F (B, N, C)
    """

    def __init__(self, dim: int, text_dim: int, config: Optional[FusionConfig] = None):
        super().__init__()
        config = config or FusionConfig()
        key_dim = value_dim = config.hidden_dim or dim
        num_heads, dropout = config.num_heads, config.dropout
        if key_dim % num_heads:
            raise ValueError(f"model.fusion.num_heads={num_heads} must divide the key/value width ({key_dim})")
        self.dim, self.key_dim, self.value_dim, self.num_heads = dim, key_dim, value_dim, num_heads
        self.spatial_cues = spatial_cues = config.spatial_cues
        vin = dim + 2 if spatial_cues else dim
        self.vis_project = nn.Sequential(nn.Linear(vin, dim), nn.GELU(), nn.Dropout(dropout))
        self.f_query = nn.Linear(vin, key_dim)
        self.f_key = nn.Linear(text_dim, key_dim)
        self.f_value = nn.Linear(text_dim, value_dim)
        self.W = nn.Linear(value_dim, dim)  # out projection (+ IN); LAVT: value_dim == dim
        self.project_mm = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))
        # LAVT's 1x1 convs keep PyTorch's default init, which nn.Linear shares.

    def forward(self, v: torch.Tensor, hw: tuple[int, int], words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._fuse(v, hw, words, mask, need_weights=False)[0]

    def forward_with_attention(self, v: torch.Tensor, hw: tuple[int, int], words: torch.Tensor,
                               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` that also returns A, the softmax weight each pixel gives each word.

        Returns F (B, N, C) and A (B, heads, N, T) float32: each pixel's weights sum to 1 over the
        words with mask 1; padding words (mask 0) get 0. F equals ``forward``'s up to float rounding
        (the softmax is written out instead of the fused attention kernel).
        """
        return self._fuse(v, hw, words, mask, need_weights=True)

    def _fuse(self, v, hw, words, mask, need_weights: bool):
        B, N, _ = v.shape
        if self.spatial_cues:
            coords = coordinate_channels(hw[0], hw[1], device=v.device, dtype=v.dtype).expand(B, -1, -1)
            vin = torch.cat([v, coords], dim=-1)
        else:
            vin = v
        h = self.num_heads
        q = instance_norm_tokens(self.f_query(vin))  # (B, N, Ck)
        m = mask.to(q.dtype).unsqueeze(-1)  # (B, T, 1)
        k = self.f_key(words) * m  # (B, T, Ck)
        val = self.f_value(words) * m  # (B, T, Cv)
        T = k.shape[1]
        q = q.reshape(B, N, h, -1).transpose(1, 2)  # (B, h, N, Ck/h)
        k = k.reshape(B, T, h, -1).transpose(1, 2).to(q.dtype)  # (B, h, T, Ck/h)
        val = val.reshape(B, T, h, -1).transpose(1, 2).to(q.dtype)  # (B, h, T, Cv/h)
        bias = ((m.squeeze(-1) - 1.0) * 1e4).to(q.dtype)[:, None, None, :]  # (B, 1, 1, T): 0 or -1e4
        scale = self.key_dim ** -0.5
        attn = None
        if need_weights:
            attn = torch.softmax((q.float() @ k.float().transpose(-2, -1)) * scale + bias.float(), dim=-1)
            out = (attn @ val.float()).to(q.dtype)  # (B, h, N, Cv/h)
        else:
            out = F.scaled_dot_product_attention(q, k, val, attn_mask=bias, scale=scale)
        out = out.transpose(1, 2).reshape(B, N, self.value_dim)  # (B, N, Cv)
        g = instance_norm_tokens(self.W(out))  # (B, N, C)
        vm = self.vis_project(vin)  # (B, N, C)
        return self.project_mm(vm * g), attn


class LanguageGate(nn.Module):
    """LAVT's res_gate: S = tanh(W2 ReLU(W1 F)), two bias-free linear layers; (B, N, C) -> (B, N, C).

    LAVT zero-initialises W1 and W2 in the layer but its backbone ``init_weights`` then re-draws every
    Linear from a truncated normal (std 0.02); we use that effective init (two zero matrices would
    never receive a gradient).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)
        trunc_normal_(self.fc1.weight, std=0.02)
        trunc_normal_(self.fc2.weight, std=0.02)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc2(torch.relu(self.fc1(f))))
