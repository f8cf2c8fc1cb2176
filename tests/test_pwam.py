"""PWAM and the language gate against LAVT's equations, written independently in LAVT's conv layout."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refseg.config import FusionConfig
from refseg.models.pwam import PWAM, LanguageGate


def _conv(lin: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """1x1 Conv1d with the Linear's weights, on (B, C, N)."""
    return F.conv1d(x, lin.weight.unsqueeze(-1), lin.bias)


def lavt_pwam_reference(p: PWAM, V: torch.Tensor, L: torch.Tensor, m: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """LAVT's PWAM, conv layout: V (B, C, N), L (B, Dt, T), m (B, T) -> F (B, C, N)."""
    B, C, N = V.shape
    if p.spatial_cues:
        xs = torch.linspace(-1, 1, W).repeat(H)  # x varies fastest (row-major tokens)
        ys = torch.linspace(-1, 1, H).repeat_interleave(W)
        V = torch.cat([V, torch.stack([xs, ys]).expand(B, 2, N)], dim=1)
    mask = m.float()[:, None, :]  # (B, 1, T)
    Q = F.instance_norm(_conv(p.f_query, V))  # (B, Ck, N)
    K = _conv(p.f_key, L) * mask  # (B, Ck, T)
    Vl = _conv(p.f_value, L) * mask  # (B, Cv, T)
    h, ck, cv = p.num_heads, p.key_dim, p.value_dim
    Qh = Q.reshape(B, h, ck // h, N).transpose(2, 3)  # (B, h, N, ck/h)
    Kh = K.reshape(B, h, ck // h, -1)  # (B, h, ck/h, T)
    Vh = Vl.reshape(B, h, cv // h, -1)  # (B, h, cv/h, T)
    A = torch.softmax(Qh @ Kh / ck ** 0.5 + (1.0 - mask[:, None]) * -1e4, dim=-1)  # (B, h, N, T)
    out = (A @ Vh.transpose(2, 3)).transpose(2, 3).reshape(B, cv, N)  # heads back to channels
    G = F.instance_norm(_conv(p.W, out))
    Vm = F.gelu(_conv(p.vis_project[0], V))
    return F.gelu(_conv(p.project_mm[0], Vm * G))


def _inputs(B=2, C=16, Dt=24, T=7, H=3, W=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(B, H * W, C, generator=g)
    L = torch.randn(B, T, Dt, generator=g)
    m = torch.zeros(B, T, dtype=torch.long)
    m[0, :4] = 1
    m[1, :6] = 1
    return V, L, m


@pytest.mark.parametrize("spatial_cues,heads,hidden", [(False, 1, None), (True, 1, None), (True, 2, 8)])
def test_pwam_matches_lavt_equations(spatial_cues, heads, hidden):
    torch.manual_seed(0)
    p = PWAM(16, 24, FusionConfig(hidden_dim=hidden, num_heads=heads, spatial_cues=spatial_cues)).eval()
    V, L, m = _inputs()
    out = p(V, (3, 5), L, m)
    ref = lavt_pwam_reference(p, V.transpose(1, 2), L.transpose(1, 2), m, 3, 5).transpose(1, 2)
    assert out.shape == (2, 15, 16)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_padded_words_change_nothing():
    torch.manual_seed(0)
    p = PWAM(16, 24).eval()
    V, L, m = _inputs()
    L2 = L.clone()
    L2[m == 0] = torch.randn(int((m == 0).sum()), 24) * 100  # garbage in every padded position
    out, out2 = p(V, (3, 5), L, m), p(V, (3, 5), L2, m)
    torch.testing.assert_close(out, out2, atol=0, rtol=0)
    L3 = L.clone()
    L3[0, 1] += 1.0  # a real word does matter
    assert (p(V, (3, 5), L3, m)[0] - out[0]).abs().max() > 1e-4


def test_spatial_cues_make_pwam_position_aware():
    torch.manual_seed(0)
    V, L, m = _inputs(H=4, W=4)
    perm = torch.randperm(16)
    plain = PWAM(16, 24, FusionConfig(spatial_cues=False)).eval()
    # without cues PWAM is a per-token map plus token-permutation-invariant norms: it commutes with permutations
    torch.testing.assert_close(plain(V[:, perm], (4, 4), L, m), plain(V, (4, 4), L, m)[:, perm], atol=1e-5, rtol=1e-4)
    cued = PWAM(16, 24, FusionConfig(spatial_cues=True)).eval()
    assert (cued(V[:, perm], (4, 4), L, m) - cued(V, (4, 4), L, m)[:, perm]).abs().max() > 1e-3


def test_language_gate_equation_and_residual():
    torch.manual_seed(0)
    gate = LanguageGate(16)
    f = torch.randn(2, 10, 16)
    ref = torch.tanh(F.linear(F.relu(F.linear(f, gate.fc1.weight)), gate.fc2.weight))
    torch.testing.assert_close(gate(f), ref)
    assert gate.fc1.bias is None and gate.fc2.bias is None
    s = gate(f)
    assert s.abs().max() < 1 and s.abs().max() > 0  # tanh range, not stuck at zero
    (gate(f) * f).sum().backward()
    assert gate.fc1.weight.grad.abs().sum() > 0 and gate.fc2.weight.grad.abs().sum() > 0
