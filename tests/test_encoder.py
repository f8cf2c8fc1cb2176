"""The encoder protocol (refseg.models.encoder): pinned state-dict keys, timm's feature_info, timm's API,
CrossViT wrapping an encoder."""
from __future__ import annotations

import hashlib

import pytest
import torch
from timm.models._features import FeatureInfo

from refseg.config import CrossViTConfig
from refseg.models.crossvit import CrossViT
from refseg.models.encoder import Encoder
from refseg.models.swin import SwinEncoder
from refseg.models.xcit import XCiTColumnar, XCiTHierarchical

CROSSVIT = CrossViTConfig(patch_size=16, embed_dim=32, depth=1, num_heads=2)
ENCODERS = {
    "columnar": lambda: XCiTColumnar("xcit_nano_12_p8", embed_dim=32, depth=4, num_heads=2, patch_size=16),
    "hierarchical": lambda: XCiTHierarchical(dims=[16, 32, 32, 64], depths=[1, 1, 1, 1], heads=[1, 2, 2, 4]),
    "swin": lambda: SwinEncoder("swin_tiny", embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
}
# (number of tensors, sha256 of the sorted "key:shape" lines), taken from the code before the encoder
# protocol (commit ccdd8bd): checkpoints, converted LAVT weights and timm's weights load by these names.
PINNED_KEYS = {
    "columnar": (145, "311d1ae436458f18"),
    "hierarchical": (131, "45eb71c8b358bdea"),
    "swin": (117, "78294e1c495ae019"),
    "crossvit_columnar": (248, "c9a53590205a25fc"),
    "crossvit_hierarchical": (252, "bc7efbc9747be72f"),
}
FEATURES = {  # (channels, heads, module of stage i), strides 4/8/16/32 for all
    "columnar": ([32] * 4, [2] * 4, "resample.{}"),
    "hierarchical": ([16, 32, 32, 64], [1, 2, 2, 4], "stages.{}"),
    "swin": ([16, 32, 64, 128], [1, 2, 4, 8], "layers.{}"),
}


def build(name: str) -> Encoder:
    torch.manual_seed(0)
    if name.startswith("crossvit_"):
        return CrossViT(ENCODERS[name[len("crossvit_"):]](), CROSSVIT)
    return ENCODERS[name]()


@pytest.mark.parametrize("name", sorted(PINNED_KEYS))
def test_state_dict_keys_are_pinned(name):
    sd = build(name).state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(sd.items()))
    assert (len(sd), hashlib.sha256(lines.encode()).hexdigest()[:16]) == PINNED_KEYS[name], \
        f"{name}: state-dict keys or shapes changed; saved checkpoints would not load (map old names at load time)"


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_feature_info_is_timms_and_the_geometry_derives_from_it(name):
    enc = build(name).eval()
    channels, heads, module = FEATURES[name]
    assert enc.feature_info == [dict(num_chs=c, reduction=s, module=module.format(i), num_heads=h)
                                for i, (c, s, h) in enumerate(zip(channels, [4, 8, 16, 32], heads))]
    info = FeatureInfo(enc.feature_info, out_indices=(0, 1, 2, 3))  # timm's own reader accepts it
    assert info.channels() == enc.out_channels == channels and info.reduction() == enc.out_strides
    assert enc.stage_heads == heads and enc.pad_multiple == (1 if name == "swin" else 32)
    for f in enc.feature_info:
        enc.get_submodule(f["module"])  # names a real module
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = enc(x)
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 96 // s) for c, s in zip(channels, [4, 8, 16, 32])]


@pytest.mark.parametrize("name", ["columnar", "hierarchical", "swin", "crossvit_hierarchical"])
def test_forward_intermediates_follows_timm(name):
    enc = build(name).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, every = enc.forward_intermediates(x)
        assert len(every) == 4 and torch.equal(final, every[-1])
        assert torch.equal(enc.forward_features(x), final)
        last_two = enc.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(last_two, every[2:])] == [True, True]
        early = enc.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert len(early) == 1 and torch.equal(early[0], every[1])
        nhwc = enc.forward_intermediates(x, indices=[0], output_fmt="NHWC", intermediates_only=True)[0]
        assert torch.equal(nhwc, every[0].permute(0, 2, 3, 1))
        # the stage-wise loop with a fuse step is what the model runs between stages
        seen = []
        enc.forward_fused(x, lambda i, t, hw: seen.append((i, tuple(t.shape), hw)) or t)
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert [s[1][1] for s in seen] == [h * w for _, _, (h, w) in seen]
    with pytest.raises(ValueError, match="no final norm"):
        enc.forward_intermediates(x, norm=True)


def test_crossvit_wraps_an_xcit_encoder_and_refuses_swin():
    enc = ENCODERS["columnar"]()
    wrapped = CrossViT(enc, CrossViTConfig(patch_size=48, embed_dim=32, depth=1, num_heads=2))
    assert wrapped.encoder is enc and wrapped.feature_info == enc.feature_info
    assert wrapped.pad_multiple == 96  # lcm(32, 48): both streams tile the padded input
    assert not [k for k in wrapped.state_dict() if k.startswith(("blocks.", "resample.", "encoder."))]
    x = torch.randn(1, 3, 96, 192)
    with torch.no_grad():
        with_branch, plain = wrapped(x), enc(x)
    assert [f.shape for f in with_branch] == [f.shape for f in plain]
    # the injection starts at zero, but the CLS travels through the XCA blocks: another result
    assert not torch.equal(with_branch[0], plain[0])
    with pytest.raises(ValueError, match="needs an XCiT encoder, not SwinEncoder"):
        CrossViT(ENCODERS["swin"](), CROSSVIT)
