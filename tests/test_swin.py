"""Swin encoder: LAVT's block order (pad, then shift), timm weight layouts, stage geometry, drop path."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock

from refseg.models.crossvit import CrossViT
from refseg.models.swin import SwinBlock, SwinEncoder, load_swin_pretrained, swin_variant_args

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))  # widths 16/32/64/128


def tiny_encoder(**kw) -> SwinEncoder:
    return SwinEncoder("swin_tiny", **{**TINY, "drop_path_rate": 0.0, **kw}).eval()


def timm_swin(img_size: int = 384) -> SwinTransformer:
    """timm's Swin with the tiny widths, window 12 kept and shifted in every stage (always_partition)."""
    torch.manual_seed(0)
    model = SwinTransformer(img_size=img_size, window_size=12, always_partition=True, num_classes=5,
                            drop_path_rate=0.0, **TINY).eval()
    with torch.no_grad():  # norms away from 1/0 and non-zero biases, so a missed tensor would show
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def original_release_layout(sd: dict[str, torch.Tensor]) -> dict:
    """timm state dict -> the original Swin release's file: {'model': ...}, patch merging at the end of
    stage i (timm: start of stage i + 1), 'head.' not 'head.fc.', buffers saved, a DDP prefix."""
    out = {}
    for k, v in sd.items():
        if ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample.", f"layers.{i - 1}.downsample.")
        out["module." + k.replace("head.fc.", "head.")] = v
    for k in sd:
        if k.endswith("attn.qkv.weight"):
            out["module." + k.replace("qkv.weight", "relative_position_index")] = torch.zeros(144, 144, dtype=torch.long)
    out["module.layers.0.blocks.1.attn_mask"] = torch.zeros(64, 144, 144)
    return {"model": out, "epoch": 300}


@pytest.mark.parametrize("size,maps", [((480, 480), [(120, 120), (60, 60), (30, 30), (15, 15)]),
                                       ((97, 130), [(25, 33), (13, 17), (7, 9), (4, 5)])])
def test_stage_api_shapes(size, maps):
    enc = tiny_encoder()
    assert enc.out_channels == [16, 32, 64, 128] and enc.out_strides == [4, 8, 16, 32]
    assert enc.stage_heads == [1, 2, 4, 8] and enc.pad_multiple == 1
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        t, (H, W) = enc.embed(x)
        assert t.shape == (1, H * W, 16) and (H, W) == maps[0]
        fmaps = []
        for i in range(4):
            t, (H, W) = enc.forward_stage(i, t, H, W)
            assert (H, W) == maps[i] and t.shape == (1, H * W, enc.out_channels[i])
            fmaps.append(enc.stage_output(i, t, H, W))
        for a, b in zip(fmaps, enc.forward_intermediates(x, intermediates_only=True)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="CrossViT branch needs an XCiT encoder"):
        CrossViT(enc)


def test_backward_at_odd_size():
    enc = tiny_encoder().train()
    out = enc(torch.randn(2, 3, 61, 75))
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_timm_file_loads_and_matches_timm_where_the_orders_agree(tmp_path):
    """384 px, window 12: maps 96/48/24/12, all multiples of the window, so pad-then-shift (LAVT) and
    shift-then-pad (timm) are the same computation; every stage has shifted blocks."""
    ref_model = timm_swin()
    path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in ref_model.state_dict().items()}, str(path))
    enc = tiny_encoder()
    report = load_swin_pretrained(enc, str(path))
    assert report["missing"] == [] and report["unexpected"] == [] and report["resized"] == []
    assert len(report["loaded"]) == len(enc.state_dict())
    x = torch.randn(2, 3, 384, 384)
    with torch.no_grad():
        ref = ref_model.forward_intermediates(x, intermediates_only=True)
        out = enc.forward_intermediates(x, intermediates_only=True)
    for a, b, s in zip(ref, out, (96, 48, 24, 12)):
        assert b.shape[-2:] == (s, s)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    with torch.no_grad():  # a randomly initialised encoder is really different
        other = tiny_encoder().forward_intermediates(x, intermediates_only=True)
    assert (other[3] - ref[3]).abs().max() > 1e-2


def test_original_release_layout_loads_the_same(tmp_path):
    ref_model = timm_swin()
    path = tmp_path / "swin_tiny_patch4_window12_384_22k.pth"
    torch.save(original_release_layout(ref_model.state_dict()), str(path))
    enc = tiny_encoder()
    report = load_swin_pretrained(enc, str(path))
    assert report["missing"] == [] and report["unexpected"] == [] and len(report["loaded"]) == len(enc.state_dict())
    for k, v in ref_model.state_dict().items():
        if k in enc.state_dict():
            torch.testing.assert_close(enc.state_dict()[k], v, atol=0, rtol=0)


def test_loader_reports_missing_resized_and_mismatched(tmp_path, caplog):
    sd = timm_swin().state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith("layers.3.blocks.1.")}
    partial["layers.0.blocks.0.attn.relative_position_bias_table"] = torch.randn(13 * 13, 1)  # a window-7 table
    partial["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(partial, str(path))
    enc = tiny_encoder()
    n = len(enc.state_dict())
    with caplog.at_level(logging.INFO, logger="refseg"):
        report = load_swin_pretrained(enc, str(path))
    assert report["resized"] == ["layers.0.blocks.0.attn.relative_position_bias_table"]
    assert report["unexpected"] == ["extra.weight"]
    assert report["missing"] and all(k.startswith("layers.3.blocks.1.") for k in report["missing"])
    verbatim = n - len(report["missing"]) - 1
    assert f"{verbatim}/{n} encoder tensors loaded verbatim" in caplog.text
    assert enc.layers[0].blocks[0].attn.relative_position_bias_table.shape == (23 * 23, 1)

    torch.save({"model": {"layers.1.blocks.0.norm1.weight": torch.ones(48)}}, str(tmp_path / "wide.pth"))
    with pytest.raises(ValueError, match="layers.1.blocks.0.norm1.weight"):
        load_swin_pretrained(tiny_encoder(), str(tmp_path / "wide.pth"))
    torch.save({"model": {"blocks.0.weight": torch.ones(3)}}, str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="no Swin weights"):
        load_swin_pretrained(tiny_encoder(), str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="not found"):
        load_swin_pretrained(tiny_encoder(), str(tmp_path / "absent.pth"))


def reference_shifted_block(block: SwinBlock, x: torch.Tensor, window: int = 12) -> torch.Tensor:
    """LAVT's shifted-window block written out window by window from the raw tensors.

    x (B, H, W, C): norm1, zero-pad bottom/right to the window multiple, roll by -window/2, attention
    inside each window with the relative-position bias and a -100 bias between tokens of different
    regions of the padded map (region edges at Hp - window and Hp - shift), roll back, crop, MLP.
    """
    p = {k: v for k, v in block.state_dict().items()}
    B, H, W, C = x.shape
    heads, shift = block.attn.num_heads, window // 2
    hd = C // heads
    y = F.layer_norm(x, (C,), p["norm1.weight"], p["norm1.bias"])
    Hp, Wp = math.ceil(H / window) * window, math.ceil(W / window) * window
    y = F.pad(y, (0, 0, 0, Wp - W, 0, Hp - H))
    y = torch.roll(y, (-shift, -shift), (1, 2))

    def region(i: int, n: int) -> int:
        return 0 if i < n - window else (1 if i < n - shift else 2)

    out = torch.empty_like(y)
    for wy in range(0, Hp, window):
        for wx in range(0, Wp, window):
            cells = [(r, c) for r in range(wy, wy + window) for c in range(wx, wx + window)]
            tok = torch.stack([y[:, r, c] for r, c in cells], 1)  # (B, N, C)
            lab = torch.tensor([region(r, Hp) * 3 + region(c, Wp) for r, c in cells])
            rel = torch.tensor([[(ri - rj + window - 1) * (2 * window - 1) + (ci - cj + window - 1)
                                 for rj, cj in cells] for ri, ci in cells])
            bias = p["attn.relative_position_bias_table"][rel].permute(2, 0, 1)  # (heads, N, N)
            bias = bias + (lab[:, None] != lab[None, :]).float() * -100.0
            q, k, v = F.linear(tok, p["attn.qkv.weight"], p["attn.qkv.bias"]).split(C, dim=-1)
            q, k, v = (t.reshape(B, -1, heads, hd).transpose(1, 2) for t in (q, k, v))
            a = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5 + bias, dim=-1)
            o = F.linear((a @ v).transpose(1, 2).reshape(B, -1, C), p["attn.proj.weight"], p["attn.proj.bias"])
            for n, (r, c) in enumerate(cells):
                out[:, r, c] = o[:, n]
    out = torch.roll(out, (shift, shift), (1, 2))[:, :H, :W]
    x = x + out
    h = F.layer_norm(x, (C,), p["norm2.weight"], p["norm2.bias"])
    h = F.linear(F.gelu(F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"])
    return x + h


def test_block_pads_before_shifting_as_lavt():
    """At 15x15 (480 px, stride 32) the order matters: LAVT's order reproduced, timm's block differs;
    at 24x24 all three agree."""
    torch.manual_seed(0)
    block = SwinBlock(16, num_heads=2, window_size=12, shift=True).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 1.0)  # strong positional bias: order shows
    for side, timm_agrees in ((15, False), (24, True)):
        x = torch.randn(2, side, side, 16)
        timm_block = SwinTransformerBlock(16, input_resolution=(side, side), num_heads=2, window_size=12,
                                          shift_size=6).eval()
        timm_block.load_state_dict(block.state_dict(), strict=False)
        assert timm_block.window_size == (12, 12) and timm_block.shift_size == (6, 6)
        with torch.no_grad():
            ours, ref, theirs = block(x), reference_shifted_block(block, x), timm_block(x)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        gap = (theirs - ref).abs().max().item()
        assert (gap < 1e-5) if timm_agrees else (gap > 1e-2), (side, gap)


def test_unshifted_block_keeps_the_window_on_small_maps():
    """A 7x7 map keeps window 12 (padded), as in LAVT; timm would shrink the window to 7."""
    blk = SwinBlock(16, num_heads=2, window_size=12, shift=True)
    assert blk.window_size == (12, 12) and blk.shift_size == (6, 6)
    x = torch.randn(1, 7, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(blk.eval()(x), reference_shifted_block(blk, x), atol=1e-5, rtol=0)


def test_drop_path_schedule_is_linear_over_all_blocks():
    enc = SwinEncoder("swin_tiny", drop_path_rate=0.3)  # depths 2, 2, 6, 2
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for stage in enc.layers for b in stage.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 12), atol=1e-7, rtol=0)
    assert all(getattr(b.drop_path2, "drop_prob", 0.0) == getattr(b.drop_path1, "drop_prob", 0.0)
               for stage in enc.layers for b in stage.blocks)
    small = tiny_encoder(drop_path_rate=0.5)
    plain = tiny_encoder(drop_path_rate=0.0)
    plain.load_state_dict(small.state_dict())  # the same weights without stochastic depth
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # eval(): drop path is the identity, whatever the rate and the random state
        torch.manual_seed(0)
        torch.testing.assert_close(small(x)[3], plain(x)[3], atol=0, rtol=0)
        small.train()
        torch.manual_seed(0)
        a = small(x)[3]
        torch.manual_seed(0)
        a_again = small(x)[3]
        torch.manual_seed(1)
        b = small(x)[3]
    torch.testing.assert_close(a, a_again, atol=0, rtol=0)  # train(): drawn from the global RNG
    assert (a - b).abs().max() > 1e-3 and (a - plain(x)[3]).abs().max() > 1e-3


def test_variants():
    assert swin_variant_args("swin_base") == dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32])
    assert swin_variant_args("swin_large_patch4_window12_384.ms_in22k")["embed_dim"] == 192
    assert swin_variant_args("tiny")["depths"] == [2, 2, 6, 2]
    assert swin_variant_args("small")["depths"] == [2, 2, 18, 2]
    for bad in ("swin_huge", "xcit_small_12_p16"):
        with pytest.raises(ValueError, match="unknown Swin variant"):
            swin_variant_args(bad)
    with pytest.raises(ValueError, match="num_heads"):
        SwinEncoder("swin_tiny", embed_dim=16, num_heads=(3, 3, 3, 3))
