"""The full RefSegModel: the processor -> model -> output contract, shapes at any size, language
sensitivity, padding invariance, the loss in the model, checkpoints, gradient flow, the CrossViT switch,
the hierarchical encoder and the Predictor."""
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
from refseg.processing import RefSegProcessor


def _cfg(*extra):
    return load_config(overrides=list(TINY_OVERRIDES) + list(extra))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_cfg()).eval()


@pytest.fixture(scope="module")
def processor(model):
    return RefSegProcessor.from_config(model.config)


@pytest.fixture(scope="module")
def tok(processor):
    return processor.tokenizer


def _text(tok, texts, max_tokens=20):
    return encode_text(tok, texts, max_tokens)


def _padded(n, multiple):
    return -(-n // multiple) * multiple


@pytest.mark.parametrize("hw", [(64, 64), (200, 300), (61, 97)])
def test_logits_at_stride_4_and_masks_at_any_size(model, processor, tok, hw):
    ids, mask = _text(tok, ["the red circle on the left", "a square"])
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw), ids, mask)
    assert out.loss is None and out.attentions is None
    pm = model.pad_multiple
    assert out.logits.shape == (2, 2, _padded(hw[0], pm) // 4, _padded(hw[1], pm) // 4)
    assert torch.isfinite(out.logits).all()
    # the loss's view: the decoder's upsampling to the padded input, cropped to the input
    assert model.upsample_logits(out.logits, hw).shape == (2, 2, *hw)
    # the processor's: one resize to any size; at the input size it equals the loss's view
    masks = processor.post_process_masks(out.logits, (33, 170), input_size=hw)
    assert masks.shape == (2, 33, 170) and masks.dtype == torch.bool
    up = model.upsample_logits(out.logits, hw)
    margin = processor.post_process_logits(out.logits, hw, input_size=hw)
    torch.testing.assert_close(margin, up[:, 1] - up[:, 0], atol=1e-5, rtol=1e-5)


def test_output_fields_do_not_depend_on_mode(tok):
    """train/eval change the arithmetic (dropout, BatchNorm statistics), never which fields exist."""
    torch.manual_seed(0)
    m = build_model(_cfg())
    ids, mask = _text(tok, ["the red circle", "a square"])
    x, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    fields = {}
    for mode in (True, False):
        m.train(mode)
        for with_labels in (True, False):
            out = m(x, ids, mask, labels=labels if with_labels else None)
            fields[mode, with_labels] = (out.loss is not None, tuple(out.logits.shape))
    assert fields[True, True] == fields[False, True] == (True, (2, 2, 16, 16))
    assert fields[True, False] == fields[False, False] == (False, (2, 2, 16, 16))


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
    names = {p.name for p in ck.iterdir()}
    assert {"config.yaml", "model.safetensors", "text", "processor_config.json", "README.md",
            "tokenizer_config.json"} <= names and "tokenizer" not in names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dirs left behind
    loaded, proc2 = load_checkpoint(ck)
    tok2 = proc2.tokenizer
    assert (proc2.image_size, proc2.max_tokens, proc2.align_corners) == (64, 20, False)
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
    ids, mask = _text(RefSegProcessor.from_config(cfg.model).tokenizer, ["the circle on the left", "the square"])
    labels = torch.randint(0, 2, (2, 64, 64))
    assert cfg.model.loss.deep_supervision_weight > 0 and m.deep_heads is not None
    m(torch.randn(2, 3, 64, 64), ids, mask, labels=labels).loss.backward()  # as the trainer computes it

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


def test_crossvit_switch(tok):
    off = build_model(_cfg("model.crossvit.enabled=false")).eval()
    assert off.crossvit is None
    assert not [n for n, _ in off.named_parameters() if "crossvit" in n]
    ids, mask = _text(tok, ["left"])
    with torch.no_grad():
        logits = off(torch.randn(1, 3, 61, 97), ids, mask).logits
    assert off.upsample_logits(logits, (61, 97)).shape == (1, 2, 61, 97)
    on = build_model(_cfg("model.crossvit.patch_size=32")).eval()
    assert on.pad_multiple == 32 and any("crossvit" in n for n, _ in on.named_parameters())
    with torch.no_grad():
        assert on(torch.randn(1, 3, 61, 97), ids, mask).logits.shape == (1, 2, 64 // 4, 128 // 4)


def test_hierarchical_encoder_trains(tok):
    m = build_model(_cfg("model.vision.arch=xcit_hierarchical", "model.vision.hierarchical_dims=[16,32,32,64]",
                         "model.vision.hierarchical_depths=[1,1,1,1]", "model.vision.hierarchical_heads=[1,2,2,4]"))
    ids, mask = _text(tok, ["the circle", "the square"])
    out = m(torch.randn(2, 3, 61, 97), ids, mask, labels=torch.randint(0, 2, (2, 61, 97)))
    assert m.upsample_logits(out.logits, (61, 97)).shape == (2, 2, 61, 97)
    out.loss.backward()
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
    """Two extra mask heads on the decoder's stride-16 / stride-8 maps, brought to the input size and
    trained with the same mask loss inside the model; absent (and not in the state dict) when
    model.loss.deep_supervision_weight is 0."""
    torch.manual_seed(0)
    m = build_model(_cfg()).train()
    assert m.config.loss.deep_supervision_weight == 0.4 and len(m.deep_heads) == 2
    ids, mask = _text(tok, ["the red circle", "a square"])
    x = torch.randn(2, 3, 61, 97)
    labels = torch.randint(0, 2, (2, 61, 97))
    loss = m(x, ids, mask, labels=labels).loss
    # the same loss, computed by hand from the decoder's outputs
    dec = m.decoder(m.forward_features(x, ids, mask))
    crit = m.criterion
    deep = [m.upsample_logits(head(h), (61, 97)) for head, h in zip(m.deep_heads, dec.hidden_states[:2])]
    assert [tuple(d.shape) for d in deep] == [(2, 2, 61, 97)] * 2 and not torch.allclose(deep[0], deep[1])
    plain = crit.mask_loss(m.upsample_logits(dec.logits, (61, 97)), labels)
    expected = plain + 0.4 * (crit.mask_loss(deep[0], labels) + crit.mask_loss(deep[1], labels))
    torch.testing.assert_close(loss, expected)
    assert float((loss - plain).detach()) > 0.01  # the heads' terms are really in it
    loss.backward()
    assert all(h.weight.grad.abs().sum() > 0 for h in m.deep_heads)
    # the decoder's coarse stages get gradient through the heads alone
    m.zero_grad(set_to_none=True)
    crit.mask_loss(deep[0].detach() + m.upsample_logits(m.deep_heads[0](m.decoder(m.forward_features(x, ids, mask))
                                                                         .hidden_states[0]), (61, 97)),
                   labels).backward()
    assert m.decoder.fuse[0][0].weight.grad.abs().sum() > 0 and m.decoder.classifier.weight.grad is None
    no_heads = build_model(_cfg("model.loss.deep_supervision_weight=0")).train()
    assert no_heads.deep_heads is None and not any(k.startswith("deep_heads") for k in no_heads.state_dict())
    out = no_heads(x, ids, mask, labels=labels)
    dec = no_heads.decoder(no_heads.forward_features(x, ids, mask))
    torch.testing.assert_close(out.loss, no_heads.criterion.mask_loss(no_heads.upsample_logits(dec.logits, (61, 97)),
                                                                      labels))


def _to_legacy_layout(ck):
    """A checkpoint as refseg wrote them before processors: the tokenizer's files in tokenizer/."""
    import shutil

    (ck / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (ck / name).exists():
            shutil.move(str(ck / name), str(ck / "tokenizer" / name))
    (ck / "processor_config.json").unlink()
    (ck / "README.md").unlink()


@pytest.mark.parametrize("version", [1, 2])
def test_old_checkpoint_loads_and_predicts(model, tmp_path, version):
    """Checkpoints in the formats before config_version 3 (1: no config_version, data.image_size, no
    decoder.deep_supervision key; 2: loss at the top and decoder.deep_supervision) with the tokenizer in
    tokenizer/ and no processor file load through the migrations and give the same logits."""
    ck = tmp_path / "old"
    model.save_pretrained(ck)
    _to_legacy_layout(ck)
    data = yaml.safe_load((ck / "config.yaml").read_text())
    loss = data["model"].pop("loss")
    heads = loss["deep_supervision_weight"] > 0
    data["loss"] = loss
    if version == 1:
        data.pop("config_version")
        data["data"]["image_size"] = data["model"].pop("image_size")
        data["model"]["decoder"].update(stem_skips=False, refine_channels=0, semantic_classes=0)
        data["model"]["vision"].update(out_strides=None, global_blocks=[])
        data["loss"]["semantic_weight"] = 0.0
    else:
        data["config_version"] = 2
        data["model"]["decoder"]["deep_supervision"] = heads
    (ck / "config.yaml").write_text(yaml.safe_dump(data))
    ckpt = load_checkpoint(ck)
    loaded, proc = ckpt
    assert loaded.config.to_dict() == model.config.to_dict()
    assert (proc.image_size, proc.max_tokens, proc.truncation) == (64, 20, "sep")
    ids, mask = _text(proc.tokenizer, ["the circle on the right"])
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


def test_loss_in_the_model_rounds_as_a_loss_outside_it(tok):
    """Under bf16 autocast the in-model loss gives bit for bit the gradients of the loss computed
    outside the model on fp32 copies of its outputs (what the trainer did before the loss moved in,
    accelerate converting the outputs to fp32): each logit map is cast once and every loss term reads
    that one copy, so their gradients add up in fp32 before the single rounding to bf16."""
    torch.manual_seed(0)
    m = build_model(_cfg()).train()
    ids, mask = _text(tok, ["the red circle", "a square"])
    x, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))

    def grads():
        g = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        m.zero_grad(set_to_none=True)
        return g

    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(x, ids, mask, labels=labels).loss
    loss.backward()
    inside = grads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dec = m.decoder(m.forward_features(x, ids, mask))
        maps = [m.upsample_logits(t, (64, 64)) for t in
                (dec.logits, *(head(h) for head, h in zip(m.deep_heads, dec.hidden_states[:2])))]
    maps = [t.float() for t in maps]  # outside autocast, once each
    outside = m.criterion(maps[0], labels, maps[1:])
    assert torch.equal(loss, outside)
    outside.backward()
    ref = grads()
    assert inside.keys() == ref.keys() and len(ref) > 100
    assert all(torch.equal(inside[k], ref[k]) for k in ref), [k for k in ref if not torch.equal(inside[k], ref[k])][:5]
