"""The learned no-target decision (model.no_target): its loss and gradient, the empty mask above the
threshold in the processor and the Predictor, models without the head unchanged, demo.py's message,
the Segmenter's all-zero mask, and evaluate.py on grefshapes scoring the Predictor's masks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, TINY_OVERRIDES, run_script, tiny_train_args

HEAD = ["model.no_target.enabled=true", "model.loss.no_target_weight=0.3"]


def _scene(h: int = 72, w: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 200 // w + 30, y * 180 // h + 40, np.full_like(x, 120)], -1).astype(np.uint8)
    img[(y - 36) ** 2 + (x - 30) ** 2 < 14 ** 2] = (220, 30, 30)
    return img


def _model(*extra: str, seed: int = 0):
    from refseg.config import load_config
    from refseg.models import build_model

    torch.manual_seed(seed)
    return build_model(load_config(overrides=[*TINY_OVERRIDES, *extra]))


def _inputs(model, texts=("the red circle", "the purple star")):
    from refseg.processing import RefSegProcessor

    proc = RefSegProcessor.from_config(model.config)
    return proc, proc.to_device(proc(images=_scene(), text=list(texts)), "cpu")


def _split_mask_bias(model, proc) -> None:
    """Shift the mask classifier's bias by the median margin: masks neither empty nor full."""
    from refseg.predictor import Predictor

    margin = Predictor(model, proc, device="cpu").predict_logits(_scene(), "the red circle")
    with torch.no_grad():
        model.decoder.classifier.bias[1] -= float((margin[1] - margin[0]).median())


def _set_no_target_bias(model, value: float) -> None:
    with torch.no_grad():
        model.no_target_head.mlp[-1].weight.zero_()
        model.no_target_head.mlp[-1].bias.fill_(value)


# ---------------------------------------------------------------------------------------------
# The head, its loss and its gradient
# ---------------------------------------------------------------------------------------------


def test_head_loss_is_weighted_bce_and_its_gradient_is_analytic():
    model = _model(*HEAD).eval()  # eval: BatchNorm's running statistics, so two forwards agree
    _, x = _inputs(model)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[0, 20:40, 10:30] = 1  # sample 0 has a target, sample 1 none
    out = model(**x, labels=labels)
    z = out.no_target_logits
    assert z.shape == (2,) and torch.isfinite(z).all()
    y = torch.tensor([0.0, 1.0])
    w = model.config.loss.no_target_weight
    size = x["pixel_values"].shape[-2:]
    feats = model.forward_features(**x)
    dec = model.decoder(feats)
    deep = [model.upsample_logits(head(h), size) for head, h in zip(model.deep_heads, dec.hidden_states[:2])]
    mask_only = model.criterion(model.upsample_logits(dec.logits, size), labels, deep)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z.float(), y)
    assert float(out.loss.detach()) == pytest.approx(float(mask_only.detach() + w * bce.detach()), rel=1e-5, abs=1e-6)
    # d loss / d (the head's last bias) = w * mean(sigmoid(z) - y): only the BCE term depends on it
    model.zero_grad()
    out.loss.backward()
    bias_grad = float(model.no_target_head.mlp[-1].bias.grad)
    assert bias_grad == pytest.approx(float(w * (torch.sigmoid(z.detach()) - y).mean()), rel=1e-4, abs=1e-7)
    # the BCE alone reaches the decoder and the encoder: the head shapes the shared features
    model.zero_grad()
    out = model(**x, labels=labels)
    model.criterion.no_target_loss(out.no_target_logits, labels).backward()
    params = dict(model.named_parameters())
    for name in ("decoder.fuse.2.0.weight", "pwams.3.vis_project.0.weight", "encoder.blocks.3.attn.qkv.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def test_no_target_labels_are_all_background_samples():
    from refseg.models.losses import SegmentationLoss

    labels = torch.zeros(3, 8, 8, dtype=torch.long)
    labels[0, 0, 0] = 1
    labels[2, 4:, 4:] = 1
    assert SegmentationLoss.no_target_labels(labels).tolist() == [0.0, 1.0, 0.0]


def test_head_is_built_last_so_the_other_weights_are_unchanged():
    plain, with_head = _model(), _model(*HEAD)
    a, b = plain.state_dict(), with_head.state_dict()
    assert set(b) - set(a) == {k for k in b if k.startswith("no_target_head.")} != set()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Models without the head behave exactly as before
# ---------------------------------------------------------------------------------------------


def test_without_head_state_dict_and_masks_are_unchanged(tmp_path):
    from refseg.models import load_checkpoint
    from refseg.predictor import Predictor

    model = _model().eval()
    assert model.no_target_head is None
    assert not any("no_target" in k for k in model.state_dict())
    proc, x = _inputs(model)
    _split_mask_bias(model, proc)
    out = model(**x)
    assert out.no_target_logits is None and "no_target_logits" not in out.keys()
    # a checkpoint written before the head existed: no model.no_target, no loss.no_target_weight
    path = model.save_pretrained(tmp_path / "ckpt")
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    del cfg["model"]["no_target"], cfg["model"]["loss"]["no_target_weight"]
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ckpt = load_checkpoint(path)
    assert ckpt.model.no_target_head is None and set(ckpt.model.state_dict()) == set(model.state_dict())
    pred = Predictor(ckpt.model, ckpt.processor, device="cpu")
    assert not pred.has_no_target_head
    img = _scene()
    mask, p_none = pred.predict_with_no_target(img, "the red circle")
    # The decoder's own mask: its margin resized, > 0. (predict_logits resizes both classes, then
    # subtracts: the same up to float rounding, which can flip the pixels that _split_mask_bias put
    # at a margin of about 0.)
    want = (pred._margin(img, "the red circle") > 0).numpy()
    assert p_none is None and pred.no_target_proba(img, "the red circle") is None
    assert 0.05 < want.mean() < 0.95 and np.array_equal(mask, want)
    assert np.array_equal(pred.predict(img, "the red circle"), want)
    by_logits = (pred.predict_logits(img, "the red circle").diff(dim=0)[0] > 0).numpy()
    assert (by_logits != want).mean() < 0.01


# ---------------------------------------------------------------------------------------------
# Empty mask above the threshold
# ---------------------------------------------------------------------------------------------


def test_processor_empties_only_the_samples_above_the_threshold():
    from refseg.processing import RefSegProcessor

    model = _model()
    proc = RefSegProcessor.from_config(model.config)
    logits = torch.zeros(3, 2, 16, 16)
    logits[:, 1] = 1.0  # every pixel is object
    nt = torch.tensor([3.0, -3.0, 0.0])  # p = 0.95, 0.05, 0.5
    masks = proc.post_process_masks(logits, (20, 30), no_target_logits=nt)
    assert masks.shape == (3, 20, 30)
    assert [bool(m.any()) for m in masks] == [False, True, True]  # 0.5 is not above 0.5
    assert [bool(m.any()) for m in proc.post_process_masks(logits, (20, 30), no_target_logits=nt,
                                                           no_target_threshold=0.01)] == [False, False, False]
    assert proc.post_process_masks(logits, (20, 30)).all()  # no head: the decoder's masks


def test_predictor_returns_an_empty_mask_above_the_threshold(tmp_path):
    from refseg.predictor import Predictor

    model = _model(*HEAD, "model.no_target.threshold=0.7").eval()
    proc, _ = _inputs(model)
    _split_mask_bias(model, proc)
    img = _scene()
    texts = ["the red circle", "the purple star"]
    _set_no_target_bias(model, 4.0)  # p = 0.982 for every expression
    path = model.save_pretrained(tmp_path / "ckpt")
    pred = Predictor.from_pretrained(path, device="cpu")
    assert pred.has_no_target_head and pred.no_target_threshold == pytest.approx(0.7)  # from the config
    decoder_mask = (pred.predict_logits(img, texts).diff(dim=1)[:, 0] > 0).numpy()
    assert 0.05 < decoder_mask.mean() < 0.95
    p = pred.no_target_proba(img, texts)
    assert p.shape == (2,) and np.allclose(p, 1 / (1 + np.exp(-4.0)), atol=1e-5)
    assert isinstance(pred.no_target_proba(img, texts[0]), float)
    assert not pred.predict(img, texts).any() and not pred.predict(img, texts[0]).any()
    assert not pred.explain(img, texts[0]).mask.any()
    pred.no_target_threshold = 0.99  # above p: the decoder's masks come back
    assert np.array_equal(pred.predict(img, texts), decoder_mask)
    with pytest.raises(ValueError, match="no_target_threshold"):
        pred.no_target_threshold = 1.5
    _set_no_target_bias(pred.model, -4.0)  # p = 0.018: below any threshold used here
    pred.no_target_threshold = 0.7
    assert np.array_equal(pred.predict(img, texts), decoder_mask)


# ---------------------------------------------------------------------------------------------
# demo.py and the app say it
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nothing_matches(tmp_path_factory):
    """A checkpoint whose no-target head says "nothing matches" to every expression."""
    model = _model(*HEAD).eval()
    _set_no_target_bias(model, 6.0)
    return model.save_pretrained(tmp_path_factory.mktemp("nt") / "ckpt")


def test_demo_says_no_object_matches_and_exits_0(nothing_matches, tmp_path):
    img = tmp_path / "scene.png"
    Image.fromarray(_scene()).save(img)
    r = run_script(["demo.py", "--image", img, "--text", "the  purple star", "--checkpoint", nothing_matches,
                    "--out", tmp_path / "o.png", "--mask", tmp_path / "m.png"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'no object matches "the purple star"' in r.stdout
    assert "no-target probability 1.00" in r.stdout
    assert not np.asarray(Image.open(tmp_path / "m.png")).any()
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (72, 96, 3)


def test_segmenter_all_zero_mask_and_message(nothing_matches, tmp_path):
    from refseg.app import Segmenter
    from refseg.predictor import Predictor
    from refseg.visualize import overlay

    img = tmp_path / "scene.png"
    Image.fromarray(_scene()).save(img)
    seg = Segmenter(Predictor.from_pretrained(nothing_matches, device="cpu"))
    result = seg.segment(img, "the purple star")
    assert result.mask.shape == (72, 96) and result.mask.dtype == np.uint8 and not result.mask.any()
    assert 'no object matches "the purple star"' in result.summary().replace("&quot;", '"')
    # the overlay carries the message as its caption
    assert np.array_equal(result.overlay, overlay(_scene(), result.masks[0], 'no object matches "the purple star"'))


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def test_generalized_configs_load():
    from refseg.config import ConfigError, load_config

    g = load_config(REPO / "configs" / "grefshapes.yaml")
    assert (g.data.name, g.data.split_by, g.model.no_target.enabled) == ("grefshapes", "grefshapes", True)
    default = load_config()
    assert g.model.vision == default.model.vision and g.train.max_minutes == default.train.max_minutes
    c = load_config(REPO / "configs" / "grefcoco.yaml")
    assert (c.data.name, c.data.split_by, c.model.no_target.enabled) == ("grefcoco", "unc", True)
    assert c.model.image_size == 480 and c.model.vision.name == load_config(REPO / "configs" / "refcoco.yaml").model.vision.name
    with pytest.raises(ConfigError, match="model.no_target.threshold"):
        load_config(overrides=["model.no_target.threshold=1.5"])
    with pytest.raises(ConfigError, match="no_target_weight"):
        load_config(overrides=["model.loss.no_target_weight=-1"])


# ---------------------------------------------------------------------------------------------
# Train on grefshapes, evaluate: evaluate.py scores the Predictor's masks
# ---------------------------------------------------------------------------------------------

GREF_DATA = ["data.name=grefshapes", "data.split_by=grefshapes", "data.refshapes.num_train_images=16",
             "data.refshapes.num_val_images=6"]


@pytest.mark.slow
def test_train_on_grefshapes_then_evaluate_scores_the_predictor_masks(tmp_path):
    from refseg.data.sources import GReferSource
    from refseg.predictor import Predictor

    run = tmp_path / "run"
    r = run_script(["train.py", "--no-progress", "--output-dir", run,
                    *tiny_train_args(tmp_path / "data", *HEAD, *GREF_DATA, "train.max_steps=4", "train.eval_every=4",
                                     "train.checkpoint_every=4")])
    assert r.returncode == 0, r.stderr[-3000:]
    # a copy whose threshold splits the val expressions' no-target probabilities near the middle, at
    # the widest gap there (so that float rounding cannot move a sample across it): some emptied, not all
    src = GReferSource(tmp_path / "data", "grefshapes", "grefshapes")
    samples = src.samples("val")
    pred = Predictor.from_pretrained(run / "best", device="cpu")
    probs = [pred.no_target_proba(src.load_image(s), s.sentence) for s in samples]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run / "best", ckpt)
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    p = np.sort(np.asarray(probs, np.float64))
    k = max(range(len(p) // 3, 2 * len(p) // 3 + 1), key=lambda i: p[i] - p[i - 1])
    cfg["model"]["no_target"]["threshold"] = float((p[k] + p[k - 1]) / 2)
    (ckpt / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    pred = Predictor.from_pretrained(ckpt, device="cpu")
    preds = tmp_path / "preds"
    preds.mkdir()
    empty = 0
    for s in samples:
        m = pred.predict(src.load_image(s), s.sentence)
        empty += not m.any()
        Image.fromarray(m.astype(np.uint8) * 255).save(preds / f"{s.sent_id}.png")
    assert 0 < empty < len(samples)  # the head decided some, not all
    common = ["--split", "val", "--no-progress", "--data-root", str(tmp_path / "data")]
    # one image per batch, as the Predictor runs: the same arithmetic, so the same masks
    r1 = run_script(["evaluate.py", "--checkpoint", ckpt, "--batch-size", "1", "--out", tmp_path / "ckpt.json",
                     *common])
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run_script(["evaluate.py", "--predictions", preds, "--dataset", "grefshapes", "--out", tmp_path / "p.json",
                     *common])
    assert r2.returncode == 0, r2.stderr[-3000:]
    got, want = json.loads((tmp_path / "ckpt.json").read_text()), json.loads((tmp_path / "p.json").read_text())
    assert got["num_samples"] == len(samples)
    for k in ("gIoU", "cIoU", "N_acc", "T_acc", "Pr@0.7", "num_no_target", "num_multi_target"):
        assert got[k] == pytest.approx(want[k]), k
