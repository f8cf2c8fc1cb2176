"""LAVT's details as options: the Swin model config, preprocessing (PIL resizing, raw-id truncation),
weight decay as LAVT's train.py groups it, fp32 scoring at resized ground truth."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import TINY_OVERRIDES
from refseg.config import load_config
from refseg.data.transforms import encode_text, image_to_uint8, normalize_pixels, resize_mask
from refseg.engine.evaluate import scoring_precision
from refseg.engine.schedule import parameter_groups
from refseg.errors import ConfigError
from refseg.models import build_model
from refseg.models.swin import SwinEncoder
from refseg.models.text import load_tokenizer
from refseg.processing import RefSegProcessor

SWIN_TINY = ["model.vision.arch=swin", "model.vision.name=swin_tiny", "model.vision.embed_dim=16",
             "model.vision.swin_depths=[1,1,2,1]", "model.vision.swin_heads=[1,2,4,8]",
             "model.crossvit.enabled=false", "model.decoder.hidden_dim=32", "model.image_size=64"]


def swin_cfg(*extra):
    return load_config(overrides=SWIN_TINY + list(extra))


def test_swin_config_is_checked_when_it_loads():
    cfg = swin_cfg()
    assert cfg.model.vision.window_size == 12
    with pytest.raises(ConfigError, match="model: crossvit.enabled=true needs an XCiT encoder"):
        load_config(overrides=[o for o in SWIN_TINY if "crossvit" not in o])
    with pytest.raises(ConfigError, match="model.vision.name: 'xcit_small_12_p16' is not a Swin variant"):
        swin_cfg("model.vision.name=xcit_small_12_p16")
    with pytest.raises(ConfigError, match="model.vision.patch_size: an XCiT option"):
        swin_cfg("model.vision.patch_size=16")
    with pytest.raises(ConfigError, match="model.vision.swin_depths: expected 4 positive values"):
        swin_cfg("model.vision.swin_depths=[2,2,2]")
    with pytest.raises(ConfigError, match="model.vision.arch: expected one of"):
        load_config(overrides=["model.vision.arch=swinn"])
    for name in ("lavt_refcoco", "lavt_refcoco+", "lavt_refcocog_umd", "lavt_refcocog_google"):
        c = load_config(f"configs/{name}.yaml")
        assert (c.model.vision.arch, c.model.vision.name, c.model.decoder.hidden_dim) == ("swin", "swin_base", 512)


def test_swin_model_forward_at_any_size_as_lavt_upsamples():
    """pad_multiple 1: no input padding; logits = decoder output resized (align_corners) to the input."""
    torch.manual_seed(0)
    model = build_model(swin_cfg("model.decoder.align_corners=true", "model.fusion.spatial_cues=false")).eval()
    assert isinstance(model.encoder, SwinEncoder) and model.pad_multiple == 1 and len(model.gates) == 3
    tok = load_tokenizer(model.config.text.name)
    ids, mask = encode_text(tok, ["the left one", "a square"], 20)
    x = torch.randn(2, 3, 61, 97)
    with torch.no_grad():
        feats = model.forward_features(x, ids, mask)
        assert [tuple(f.shape[-2:]) for f in feats] == [(16, 25), (8, 13), (4, 7), (2, 4)]
        logits = model(x, ids, mask).logits
        ref = F.interpolate(model.decoder(feats).logits, size=(61, 97), mode="bilinear", align_corners=True)
    torch.testing.assert_close(model.upsample_logits(logits, (61, 97)), ref, atol=1e-6, rtol=0)
    # the processor's one resize to the input size is LAVT's upsampling too (no padding to crop)
    proc = RefSegProcessor.from_config(model.config, tok, pad_multiple=model.pad_multiple)
    torch.testing.assert_close(proc.resample(logits, (61, 97), (61, 97)), ref, atol=1e-5, rtol=0)


def test_pil_resizing_is_lavts_torchvision_pipeline():
    import torchvision.transforms.functional as TF

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (427, 640, 3), dtype=np.uint8)
    mask = rng.random((427, 640)) > 0.5
    ours = normalize_pixels(image_to_uint8(img, 480, "pil"))
    pil = Image.fromarray(img)
    lavt = TF.normalize(TF.to_tensor(TF.resize(pil, [480, 480])), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(ours, lavt, atol=0, rtol=0)
    lavt_mask = np.asarray(TF.resize(Image.fromarray(mask.astype(np.uint8), mode="P"), [480, 480],
                                     interpolation=TF.InterpolationMode.NEAREST)).astype(bool)
    assert np.array_equal(resize_mask(mask, 480, "pil"), lavt_mask)
    # ... and they are real options: OpenCV's bilinear does not anti-alias, the centre-index nearest differs
    assert (normalize_pixels(image_to_uint8(img, 480, "opencv")) - ours).abs().max() > 0.1
    assert not np.array_equal(resize_mask(mask, 480, "opencv"), lavt_mask)


def test_cut_truncation_keeps_the_first_ids_as_lavt(tiny_cfg):
    from refseg.models.text import load_tokenizer

    tok = load_tokenizer(tiny_cfg.model.text.name)
    long = "the large brown and white dog lying on the wooden floor next to the sofa with a red blanket"
    full = tok(long)["input_ids"]
    assert len(full) > 20
    ids, mask = encode_text(tok, [long, "man left"], 20, "cut")
    assert ids[0].tolist() == full[:20] and ids[0, -1] != tok.sep_token_id and mask[0].all()
    sep_ids, _ = encode_text(tok, [long, "man left"], 20, "sep")
    assert sep_ids[0, -1] == tok.sep_token_id and sep_ids[0, :19].tolist() == full[:19]
    short = tok("man left")["input_ids"]
    assert torch.equal(ids[1], sep_ids[1]) and ids[1, :len(short)].tolist() == short
    assert mask[1].tolist() == [1] * len(short) + [0] * (20 - len(short)) and (ids[1, len(short):] == 0).all()


def test_lavt_weight_decay_groups():
    """LAVT's train.py: no decay only for the backbone's norms / relative-position tables; biases, the
    decoder's BatchNorm and the trainable text layers decay."""
    model = build_model(swin_cfg("model.text.trainable_layers=[0]"), load_pretrained=False)
    groups = parameter_groups(model, 1e-3, 0.01, rule="lavt")
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    named = dict(model.named_parameters())

    def decays(name):
        return id(named[name]) in decay

    assert not decays("encoder.layers.0.blocks.0.norm1.weight") and not decays("norms.2.bias")
    assert not decays("encoder.layers.1.downsample.norm.weight") and not decays("encoder.patch_embed.norm.bias")
    assert not decays("encoder.layers.0.blocks.0.attn.relative_position_bias_table")
    for name in ("encoder.layers.0.blocks.0.attn.qkv.bias", "pwams.0.f_query.bias", "gates.0.fc1.weight",
                 "decoder.fuse.0.1.weight", "decoder.fuse.0.1.bias", "decoder.classifier.bias",
                 "text_encoder.model.encoder.layer.0.output.LayerNorm.weight"):
        assert decays(name), name
    refseg = {id(p) for g in parameter_groups(model, 1e-3, 0.01) if g["weight_decay"] > 0 for p in g["params"]}
    assert id(named["decoder.fuse.0.1.weight"]) not in refseg and id(named["pwams.0.f_query.bias"]) not in refseg
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_scoring_precision_is_fp32_at_resized_ground_truth():
    assert scoring_precision("auto", resized_gt=True) == "no"
    assert scoring_precision("auto", resized_gt=False) == "auto"
    assert scoring_precision("bf16", resized_gt=True) == "bf16"
    assert load_config("configs/lavt_refcoco.yaml").eval.mixed_precision == "no"


def test_best_metric_and_text_options_are_choices():
    cfg = load_config(overrides=list(TINY_OVERRIDES) + ["train.best_metric=oIoU", "model.text.truncation=cut"])
    assert cfg.train.best_metric == "oIoU"
    with pytest.raises(ConfigError, match="train.best_metric: expected one of mIoU, oIoU"):
        load_config(overrides=["train.best_metric=miou"])
    with pytest.raises(ConfigError, match="model.image_resize: expected one of opencv, pil"):
        load_config(overrides=["model.image_resize=cv2"])

