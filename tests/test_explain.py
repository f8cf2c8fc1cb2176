"""Word attention from the model's own forward: the PWAMs' softmax weights per stage, the gates'
magnitudes, their maps at the image's size and `demo.py --explain`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_OVERRIDES, run_script
from refseg.config import load_config
from refseg.data.transforms import encode_text
from refseg.models import build_model
from refseg.models.pwam import PWAM
from refseg.predictor import Predictor
from refseg.processing import RefSegProcessor

TEXTS = ["the big red circle on the left of the blue square", "a square"]  # different lengths: padding differs


@pytest.fixture(scope="module", params=[1, 2], ids=["1head", "2heads"])
def model(request):
    torch.manual_seed(0)
    overrides = [*TINY_OVERRIDES, f"model.fusion.num_heads={request.param}"]
    return build_model(load_config(overrides=overrides)).eval()


@pytest.mark.parametrize("hw", [(64, 64), (61, 97)])  # 61x97 is padded by the model: grids cover the padding
def test_attention_sums_to_one_over_words_and_padding_gets_zero(model, hw):
    ids, mask = encode_text(RefSegProcessor.from_config(model.config).tokenizer, TEXTS, 20)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        plain = model(x, ids, mask)
        out = model(x, ids, mask, output_attentions=True)
    # The same forward: the explicit softmax gives the fused kernel's logits.
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-4, rtol=1e-4)
    assert plain.attentions is None and plain.gate_magnitudes is None
    assert len(out.attentions) == 4 and len(out.gate_magnitudes) == 3
    real = mask.bool()  # (B, T)
    assert (~real).any(dim=1).all()  # both expressions have padding
    for a in out.attentions:
        B, heads, T, h, w = a.shape
        assert (B, heads, T) == (2, model.pwams[0].num_heads, 20)
        torch.testing.assert_close(a.sum(dim=2), torch.ones(B, heads, h, w), atol=1e-5, rtol=0)
        padded = a.permute(0, 2, 1, 3, 4)[~real]  # (padding tokens, heads, h, w)
        assert padded.numel() and (padded == 0).all()
        assert (a.permute(0, 2, 1, 3, 4)[real] > 0).all()  # every real word gets some weight
    for g, a in zip(out.gate_magnitudes, out.attentions):
        assert g.shape == (2, *a.shape[-2:]) and (g >= 0).all() and (g <= 1).all()


def test_pwam_attention_path_equals_the_fused_kernel():
    torch.manual_seed(0)
    p = PWAM(16, 24).eval()
    v, words = torch.randn(2, 15, 16), torch.randn(2, 7, 24)
    m = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        f, a = p.forward_with_attention(v, (3, 5), words, m)
        torch.testing.assert_close(f, p(v, (3, 5), words, m), atol=1e-5, rtol=1e-5)
    assert a.shape == (2, 1, 15, 7)
    assert (a[0, :, :, 4:] == 0).all()


def _image(h=90, w=130):
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 100)], -1).astype(np.uint8)
    img[(y - 45) ** 2 + (x - 40) ** 2 < 20 ** 2] = (220, 30, 30)
    return img


def test_explanation_maps_at_image_size(model, tmp_path):
    pred = Predictor(model, RefSegProcessor.from_config(model.config), device="cpu")
    image = _image()
    exp = pred.explain(image, TEXTS[0])
    ids, mask = encode_text(pred.tokenizer, TEXTS[0], pred.max_tokens)
    assert exp.tokens == pred.tokenizer.convert_ids_to_tokens(ids[0, : int(mask.sum())].tolist())
    assert exp.tokens[0] == "[CLS]" and exp.tokens[-1] == "[SEP]" and "circle" in exp.tokens
    assert exp.num_stages == 4 and len(exp.gate_means) == 3
    assert np.array_equal(exp.mask, pred.predict(image, TEXTS[0]))
    for s in range(4):
        maps = exp.stage_maps(s)  # (T_real, H, W): padding words are not there, the real ones sum to 1
        assert maps.shape == (len(exp.tokens), 90, 130)
        np.testing.assert_allclose(maps.sum(0), 1.0, atol=1e-5)
    paths = exp.write(tmp_path / "explain", image)
    assert len(paths) == 4 * len(exp.tokens) + 1
    assert Image.open(tmp_path / "explain" / "stage2_word04_circle.png").size == (130, 90)
    sheet = Image.open(tmp_path / "explain" / "contact_sheet.png")
    assert sheet.width > 4 * 100 and sheet.height > len(exp.tokens) * 60


def test_demo_explain_writes_one_png_per_word_and_stage(tmp_path):
    torch.manual_seed(0)
    build_model(load_config(overrides=list(TINY_OVERRIDES))).save_pretrained(tmp_path / "ckpt")
    Image.fromarray(_image()).save(tmp_path / "photo.png")
    r = run_script(["demo.py", "--image", tmp_path / "photo.png", "--text", "the red disc", "--checkpoint",
                    tmp_path / "ckpt", "--out", tmp_path / "o.png", "--explain", tmp_path / "ex"])
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "ex").iterdir())
    tokens = ["CLS", "the", "red", "disc", "SEP"]
    assert names == sorted(["contact_sheet.png"] + [f"stage{s}_word{t:02d}_{tok}.png" for s in range(1, 5)
                                                    for t, tok in enumerate(tokens)])
    assert "5 tokens x 4 stages: 21 images" in r.stdout and "language gate mean |S|: stage 1" in r.stdout


def test_demo_explain_refuses_a_used_directory_unless_overwrite(tmp_path):
    """A second --explain into the same folder would leave the first expression's maps beside the new
    ones: refused (one line, exit 2, nothing touched) unless --overwrite moves the old folder aside."""
    torch.manual_seed(0)
    build_model(load_config(overrides=list(TINY_OVERRIDES))).save_pretrained(tmp_path / "ckpt")
    Image.fromarray(_image()).save(tmp_path / "photo.png")
    common = ["demo.py", "--image", tmp_path / "photo.png", "--checkpoint", tmp_path / "ckpt", "--out",
              tmp_path / "o.png", "--explain", tmp_path / "ex"]
    assert run_script([*common, "--text", "the big red disc on the left"]).returncode == 0
    first = sorted(p.name for p in (tmp_path / "ex").iterdir())
    r = run_script([*common, "--text", "the disc"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--explain" in lines[0] and "not empty" in lines[0], r.stderr
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == first
    r = run_script([*common, "--text", "the disc", "--overwrite"])
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "ex.old-1").iterdir()) == first
    assert len(list((tmp_path / "ex").iterdir())) == 4 * 4 + 1  # [CLS] the disc [SEP] x 4 stages + sheet
