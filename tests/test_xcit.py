"""XCiT encoders: timm weight compatibility, stage geometry, CLS carrying, linear cost."""
from __future__ import annotations

import logging

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from refseg.config import load_config
from refseg.models import build_encoder
from refseg.models.xcit import (XCABlockWithPrefix, XCiTColumnar, XCiTHierarchical, default_out_indices,
                                xcit_variant_args)

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def math_attention():
        return sdpa_kernel(SDPBackend.MATH)
except ImportError:  # torch < 2.3
    def math_attention():
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False, enable_math=True)

TIMM_NAME = "xcit_nano_12_p16_224"  # timm 1.0 registers the resolution suffix


@pytest.fixture(scope="module")
def timm_xcit():
    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAME, pretrained=False).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a missed buffer would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _save(model, path, fmt):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:  # official facebookresearch layout: {'model': ...}, DDP prefix, 'pos_embeder'
        torch.save({"model": {"module." + k.replace("pos_embed.", "pos_embeder."): v for k, v in sd.items()},
                    "epoch": 1}, str(path))


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_pretrained_file_loads_and_matches_timm(timm_xcit, tmp_path, fmt):
    path = tmp_path / f"xcit.{fmt}"
    _save(timm_xcit, path, fmt)
    cfg = load_config(overrides=["model.vision.name=xcit_nano_12_p16", f"model.vision.pretrained={path}"])
    enc = build_encoder(cfg).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = timm_xcit.forward_intermediates(x, indices=[3, 5, 7, 11], intermediates_only=True)
        out = enc.forward_intermediates(x, intermediates_only=True)
    assert len(out) == 4
    for a, b in zip(ref, out):
        assert a.shape == b.shape == (2, 128, 4, 6)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    # and a randomly initialised encoder is really different
    with torch.no_grad():
        other = XCiTColumnar("xcit_nano_12_p16").eval().forward_intermediates(x, intermediates_only=True)
    assert (other[3] - ref[3]).abs().max() > 1e-2


def test_pretrained_shape_mismatch_names_the_key(timm_xcit, tmp_path):
    path = tmp_path / "xcit.safetensors"
    _save(timm_xcit, path, "safetensors")
    cfg = load_config(overrides=["model.vision.name=xcit_nano_12_p16", "model.vision.embed_dim=64",
                                 f"model.vision.pretrained={path}"])
    with pytest.raises(ValueError, match=r"shape mismatch for '(patch_embed|pos_embed|blocks)\.[\w.]+'"):
        build_encoder(cfg)


def test_pretrained_reports_unexpected_and_missing_keys(timm_xcit, tmp_path, caplog):
    path = tmp_path / "xcit.safetensors"
    _save(timm_xcit, path, "safetensors")
    cfg = load_config(overrides=["model.vision.name=xcit_nano_12_p16", "model.vision.depth=4",
                                 f"model.vision.pretrained={path}"])
    with caplog.at_level(logging.WARNING, logger="refseg"):
        enc = build_encoder(cfg)
    assert "unexpected" in caplog.text and "blocks.4-11" in caplog.text
    torch.testing.assert_close(enc.blocks[3].attn.qkv.weight, timm_xcit.blocks[3].attn.qkv.weight)
    with pytest.raises(ValueError, match="file not found"):
        build_encoder(load_config(overrides=["model.vision.pretrained=/nonexistent/x.pth"]))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        build_encoder(load_config(overrides=[f"model.vision.pretrained={bad}"]))


def test_variants_and_out_indices():
    assert xcit_variant_args("xcit_small_12_p16")["embed_dim"] == 384
    assert xcit_variant_args("xcit_medium_24_p8_384.fb_dist_in1k")["depth"] == 24
    assert default_out_indices(12) == [3, 5, 7, 11]
    assert default_out_indices(24) == [7, 11, 15, 23]
    assert default_out_indices(4) == [0, 1, 2, 3]
    assert default_out_indices(8)[-1] == 7
    with pytest.raises(ValueError, match="unknown XCiT variant"):
        xcit_variant_args("vit_base_patch16")
    with pytest.raises(ValueError, match="out_indices"):
        XCiTColumnar("xcit_nano_12_p8", depth=4, out_indices=[0, 1, 2, 2])


@pytest.mark.parametrize("patch", [8, 16])
def test_columnar_stage_strides(patch):
    enc = XCiTColumnar("xcit_nano_12_p8", embed_dim=32, depth=4, num_heads=2, patch_size=patch).eval()
    x = torch.randn(1, 3, 64, 96)
    t, (Hp, Wp) = enc.embed(x)
    assert (Hp, Wp) == (64 // patch, 96 // patch) and t.shape == (1, Hp * Wp, 32)
    for i, s in enumerate(enc.out_strides):
        t, hw = enc.forward_stage(i, t, Hp, Wp)
        assert hw == (Hp, Wp)
        assert enc.stage_output(i, t, Hp, Wp).shape == (1, 32, 64 // s, 96 // s)


def test_columnar_resample_module_names():
    # saved checkpoints must keep loading: same resample modules, same parameter names
    enc = XCiTColumnar("xcit_nano_12_p8", embed_dim=32, depth=4, num_heads=2, patch_size=16)
    names = sorted(k for k in enc.state_dict() if k.startswith("resample."))
    assert names == sorted(["resample.0.0.weight", "resample.0.0.bias", "resample.0.1.weight", "resample.0.1.bias",
                            "resample.0.1.running_mean", "resample.0.1.running_var",
                            "resample.0.1.num_batches_tracked", "resample.0.3.weight", "resample.0.3.bias",
                            "resample.1.weight", "resample.1.bias"])


def test_hierarchical_stages_and_prefix_tokens():
    enc = XCiTHierarchical(dims=[16, 32, 32, 64], depths=[1, 1, 1, 1], heads=[1, 2, 2, 4]).eval()
    x = torch.randn(2, 3, 64, 96)
    feats = enc.forward_intermediates(x, intermediates_only=True)
    assert [f.shape for f in feats] == [(2, c, 64 // s, 96 // s) for c, s in zip([16, 32, 32, 64], [4, 8, 16, 32])]
    t, (H, W) = enc.embed(x)
    t, (H, W) = enc.forward_stage(0, t, H, W)
    t, (H, W) = enc.downsample(1, t, H, W)  # a stage is patch merging, then blocks that may carry a CLS
    assert (H, W) == (8, 12) and t.shape == (2, H * W, 32)
    out = enc.forward_blocks(1, torch.cat([torch.randn(2, 1, 32), t], 1), H, W, num_prefix=1)
    assert out.shape == (2, 1 + H * W, 32)


def test_prefix_block_matches_timm_and_carries_cls():
    torch.manual_seed(0)
    blk = XCABlockWithPrefix(32, 4, qkv_bias=True).eval()
    x = torch.randn(2, 12, 32)
    ref = super(XCABlockWithPrefix, blk).forward(x, 3, 4)
    torch.testing.assert_close(blk(x, 3, 4), ref, rtol=0, atol=0)
    cls_a, cls_b = torch.randn(2, 1, 32), torch.randn(2, 1, 32)
    out_a = blk(torch.cat([cls_a, x], 1), 3, 4, num_prefix=1)
    out_b = blk(torch.cat([cls_b, x], 1), 3, 4, num_prefix=1)
    assert out_a.shape == (2, 13, 32)
    # the CLS takes part in XCA's channel covariance, so it changes the patch tokens
    assert (out_a[:, 1:] - out_b[:, 1:]).abs().max() > 1e-6


def _encoder_flops(attention: str, size: int) -> float:
    """FLOPs of one forward pass, attention included on every torch version.

    FlopCounterMode counts the matmuls it sees; a fused scaled_dot_product_attention kernel (the CPU
    flash kernel of torch 2.x) is one opaque op it may not count at all. The math backend computes
    attention as explicit matmuls, which every version counts.
    """
    enc = XCiTColumnar("xcit_nano_12_p8", embed_dim=32, depth=4, num_heads=2, attention=attention).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), math_attention(), counter:
        enc(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def test_xca_cost_is_linear_in_pixels():
    flops = {(a, s): _encoder_flops(a, s) for a in ("xca", "global") for s in (64, 128)}
    # The counter sees the attention: global minus XCA is, per block, QK^T and AV over N tokens
    # (2 * 2N^2C) less XCA's channel attention (2 * 2NCd, d = C / heads): the module's own formula.
    C, depth, d = 32, 4, 16
    for size in (64, 128):
        N = (size // 8) ** 2
        expected = depth * (4 * N * N * C - 4 * N * C * d)
        assert flops["global", size] - flops["xca", size] == pytest.approx(expected, rel=1e-6)
    ratio_xca = flops["xca", 128] / flops["xca", 64]
    ratio_global = flops["global", 128] / flops["global", 64]
    assert ratio_xca == pytest.approx(4.0, rel=0.02)  # 4x the pixels -> 4x the work
    assert ratio_global > 4.3  # softmax attention over tokens grows faster (measured: 6.27)
