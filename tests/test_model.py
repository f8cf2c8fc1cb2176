"""The full RefSegModel: shapes at any size, language sensitivity, padding invariance, checkpoints,
gradient flow, the CrossViT switch, the hierarchical encoder and the Predictor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_OVERRIDES
from refseg.config import load_config
from refseg.data.transforms import encode_text
from refseg.models import CheckpointError, RefSegModel, build_model, load_checkpoint
from refseg.predictor import Predictor


def _cfg(*extra):
    return load_config(overrides=list(TINY_OVERRIDES) + list(extra))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_cfg()).eval()


@pytest.fixture(scope="module")
def tok(model):
    return model.tokenizer


def _text(tok, texts, max_tokens=20):
    return encode_text(tok, texts, max_tokens)


@pytest.mark.parametrize("hw", [(64, 64), (200, 300), (61, 97)])
def test_logits_at_input_size(model, tok, hw):
    ids, mask = _text(tok, ["the red circle on the left", "a square"])
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw), ids, mask)
    assert out.deep_logits is None  # eval mode: the auxiliary heads are not run
    out = out.logits
    assert out.shape == (2, 2, *hw)
    assert torch.isfinite(out).all()


def test_forward_features_strides(model, tok):
    ids, mask = _text(tok, ["x"])
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 64, 96), ids, mask)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [f.shape[1] for f in feats] == list(model.encoder.out_channels)


def test_expression_changes_logits_and_padding_does_not(model, tok):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a20 = model(x, *_text(tok, ["the big red circle on the left"], 20)).logits
        a32 = model(x, *_text(tok, ["the big red circle on the left"], 32)).logits
        b20 = model(x, *_text(tok, ["a small blue square at the bottom"], 20)).logits
    torch.testing.assert_close(a32, a20, atol=1e-4, rtol=1e-4)
    assert (a20 - b20).abs().max() > 1e-3


def test_save_load_round_trip_is_bit_exact(model, tok, tmp_path):
    ck = tmp_path / "ck"
    model.save_pretrained(ck)
    model.save_pretrained(ck)  # overwriting an existing checkpoint works too
    assert {p.name for p in ck.iterdir()} == {"config.yaml", "model.safetensors", "text", "tokenizer"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dirs left behind
    loaded, tok2 = load_checkpoint(ck)
    assert not loaded.training
    assert loaded.config.to_dict() == model.config.to_dict()
    ids, mask = _text(tok2, ["the circle on the right"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x, ids, mask).logits, model(x, ids, mask).logits)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_from_pretrained_errors_are_one_line(model, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        RefSegModel.from_pretrained(tmp_path / "nope")
    ck = tmp_path / "ck"
    model.save_pretrained(ck)
    (ck / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read weights") as e:
        RefSegModel.from_pretrained(ck)
    assert "\n" not in str(e.value)
    model.save_pretrained(ck)
    data = yaml.safe_load((ck / "config.yaml").read_text())
    data["model"]["decoder"]["hidden_dim"] = 16
    (ck / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match="does not match"):
        RefSegModel.from_pretrained(ck)
    (ck / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="missing config.yaml"):
        RefSegModel.from_pretrained(ck)


def test_gradients_reach_every_part():
    torch.manual_seed(0)
    cfg = _cfg()
    m = build_model(cfg).train()
    ids, mask = _text(m.tokenizer, ["the circle on the left", "the square"])
    out = m(torch.randn(2, 3, 64, 64), ids, mask)
    labels = torch.randint(0, 2, (2, 64, 64))
    from refseg.engine.losses import SegmentationLoss
    assert cfg.loss.deep_supervision_weight > 0 and out.deep_logits is not None
    SegmentationLoss(cfg.loss)(out, labels).backward()  # as the trainer computes it

    def grad(prefix):
        gs = [p.grad.abs().sum().item() for n, p in m.named_parameters() if n.startswith(prefix) and p.grad is not None]
        return sum(gs) if gs else 0.0

    for part in ("encoder.patch_embed.", "encoder.blocks.0.", "encoder.blocks.3.", "encoder.resample.",
                 "pwams.0.", "pwams.3.", "gates.0.", "gates.2.", "norms.", "decoder.", "deep_heads.",
                 "crossvit.inject.", "crossvit.patch_embed.", "crossvit.stages.0.", "crossvit.exchanges.0."):
        assert grad(part) > 0, f"no gradient reaches {part}"
    # parameters that train must all take part (DDP without find_unused_parameters)
    unused = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused


def test_crossvit_switch():
    off = build_model(_cfg("model.crossvit.enabled=false")).eval()
    assert off.crossvit is None
    assert not [n for n, _ in off.named_parameters() if "crossvit" in n]
    ids, mask = _text(off.tokenizer, ["left"])
    with torch.no_grad():
        assert off(torch.randn(1, 3, 61, 97), ids, mask).logits.shape == (1, 2, 61, 97)
    on = build_model(_cfg("model.crossvit.patch_size=32")).eval()
    assert on.pad_multiple == 32 and any("crossvit" in n for n, _ in on.named_parameters())
    with torch.no_grad():
        assert on(torch.randn(1, 3, 61, 97), ids, mask).logits.shape == (1, 2, 61, 97)


def test_hierarchical_encoder_trains():
    m = build_model(_cfg("model.vision.arch=xcit_hierarchical", "model.vision.hierarchical_dims=[16,32,32,64]",
                         "model.vision.hierarchical_depths=[1,1,1,1]", "model.vision.hierarchical_heads=[1,2,2,4]"))
    ids, mask = _text(m.tokenizer, ["the circle", "the square"])
    out = m(torch.randn(2, 3, 61, 97), ids, mask).logits
    assert out.shape == (2, 2, 61, 97)
    out.mean().backward()
    assert m.encoder.stages[3][0].attn.qkv.weight.grad.abs().sum() > 0
    assert m.crossvit.xcit_cls_proj[3].weight.grad is not None  # CLS carried to the wider stage
    with pytest.raises(ValueError, match="xcit_columnar and swin encoders only"):
        build_model(_cfg("model.vision.arch=xcit_hierarchical", "model.vision.pretrained=xcit_nano_12_p8"))


def test_predictor_returns_mask_at_image_size(model, tmp_path):
    ck = tmp_path / "ck"
    model.save_pretrained(ck)
    pred = Predictor.from_pretrained(ck, device="cpu")
    img = np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    mask = pred.predict(img, "the circle on the left")
    assert mask.shape == (50, 90) and mask.dtype == bool
    prob = pred.predict_proba(img, "the circle on the left")
    assert prob.shape == (50, 90) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
    assert np.array_equal(mask, prob > 0.5) or np.mean(mask != (prob > 0.5)) < 1e-3
    assert pred.predict(img, ["left", "right"]).shape == (2, 50, 90)
    with pytest.raises(ValueError, match="image"):
        pred.predict(img.astype(np.float32), "x")
    with pytest.raises(ValueError, match="text"):
        pred.predict(img, "  ")


def test_text_dropout_frozen_trainable_and_lavt(tok):
    """Frozen: no dropout. Trainable layers: dropout while training (refseg's choice, and LAVT-One's),
    or none with model.text.train_dropout=false (LAVT: its BERT stays in eval mode while layers train)."""
    ids, mask = _text(tok, ["the red circle on the left"])
    m = build_model(_cfg()).train()
    assert m.text_encoder.frozen and not m.text_encoder.model.training
    assert torch.equal(m.text_encoder(ids, mask), m.text_encoder(ids, mask))
    ft = build_model(_cfg("model.text.trainable_layers=[0]")).train()
    assert ft.text_encoder.model.training
    torch.manual_seed(0)
    assert not torch.equal(ft.text_encoder(ids, mask), ft.text_encoder(ids, mask))  # dropout draws differ
    assert not ft.eval().text_encoder.model.training
    lavt = build_model(_cfg("model.text.trainable_layers=[0]", "model.text.train_dropout=false")).train()
    assert lavt.training and not lavt.text_encoder.model.training
    out = lavt.text_encoder(ids, mask)
    assert torch.equal(out, lavt.text_encoder(ids, mask)) and out.requires_grad  # no dropout, still trains
    assert any(p.requires_grad for p in lavt.text_encoder.parameters())


def test_deep_supervision_heads_and_loss(tok):
    """Two extra mask heads on the decoder's stride-16 / stride-8 maps, at the input size, trained
    with the same mask loss; absent (and not in the state dict) when the model config has none."""
    from refseg.config import LossConfig
    from refseg.engine.losses import SegmentationLoss

    torch.manual_seed(0)
    m = build_model(_cfg()).train()
    assert m.config.decoder.deep_supervision
    ids, mask = _text(tok, ["the red circle", "a square"])
    x = torch.randn(2, 3, 61, 97)
    out = m(x, ids, mask)
    deep = out.deep_logits
    assert [tuple(d.shape) for d in deep] == [(2, 2, 61, 97)] * 2
    assert not torch.allclose(deep[0], deep[1])
    with torch.no_grad():
        assert m.eval()(x, ids, mask).deep_logits is None  # inference does not run the heads
    m.train()
    labels = torch.randint(0, 2, (2, 61, 97))
    plain = SegmentationLoss(LossConfig(dice_weight=1.0, deep_supervision_weight=0.0))(out, labels)
    ds = SegmentationLoss(LossConfig(dice_weight=1.0, deep_supervision_weight=0.4))
    total = ds(out, labels)
    expected = plain + 0.4 * (ds.mask_loss(deep[0], labels) + ds.mask_loss(deep[1], labels))
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(h.weight.grad.abs().sum() > 0 for h in m.deep_heads)
    # the decoder's coarse stages get gradient through the heads alone
    m.zero_grad(set_to_none=True)
    out = m(x, ids, mask)
    ds.mask_loss(out.deep_logits[0], labels).backward()
    assert m.decoder.fuse[0][0].weight.grad.abs().sum() > 0 and m.decoder.classifier.weight.grad is None
    no_heads = build_model(_cfg("model.decoder.deep_supervision=false")).train()
    assert not any(k.startswith("deep_heads") for k in no_heads.state_dict())
    assert no_heads(x, ids, mask).deep_logits is None


def test_old_checkpoint_loads_and_predicts(model, tmp_path):
    """A checkpoint written in the format before config_version (full run config, data.image_size,
    no decoder.deep_supervision key) loads through the migrations and gives the same logits."""
    ck = tmp_path / "old"
    model.save_pretrained(ck)
    data = yaml.safe_load((ck / "config.yaml").read_text())
    data.pop("config_version")
    data["data"]["image_size"] = data["model"].pop("image_size")
    dec = data["model"]["decoder"]
    dec.pop("deep_supervision")
    dec.update(stem_skips=False, refine_channels=0, semantic_classes=0)
    data["model"]["vision"].update(out_strides=None, global_blocks=[])
    data["loss"]["semantic_weight"] = 0.0
    data["loss"]["deep_supervision_weight"] = 0.4 if model.config.decoder.deep_supervision else 0.0
    (ck / "config.yaml").write_text(yaml.safe_dump(data))
    loaded, tok2 = load_checkpoint(ck)
    assert loaded.config.to_dict() == model.config.to_dict()
    ids, mask = _text(tok2, ["the circle on the right"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x, ids, mask).logits, model(x, ids, mask).logits)


def test_building_a_model_prints_nothing(capfd):
    """Library use is quiet: no transformers load-report tables or progress bars."""
    build_model(_cfg())
    captured = capfd.readouterr()
    assert captured.out == "" and "LOAD REPORT" not in captured.err and "Loading weights" not in captured.err


@pytest.mark.parametrize("align_corners,centre", [(True, 5.0), (False, 5.5)])
def test_decoder_upsampling_convention(align_corners, centre):
    """align_corners=False keeps stride-4 cell centres on the pixels they summarise (cell 1 covers
    pixels 4..7, centre 5.5); LAVT's True stretches the grid (cell 1 lands at 1 * 15 / 3 = 5.0)."""
    from refseg.models.decoder import SimpleDecoder

    from refseg.config import DecoderConfig

    dec = SimpleDecoder([8, 8, 8, 8], DecoderConfig(hidden_dim=8, align_corners=align_corners))
    cell = torch.zeros(1, 1, 4, 4)
    cell[0, 0, 1, 1] = 1.0
    up = dec.resize(cell, (16, 16))[0, 0]
    w = up.clamp(min=0)
    ys = torch.arange(16.0)
    assert float((w.sum(1) * ys).sum() / w.sum()) == pytest.approx(centre, abs=1e-4)
    m = build_model(_cfg(f"model.decoder.align_corners={str(align_corners).lower()}")).eval()
    assert m.decoder.align_corners is align_corners
