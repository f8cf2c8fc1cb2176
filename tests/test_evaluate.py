"""evaluate(): exact scores with fixed-logit models, sharding == one process, shuffle_text, gallery, CLI."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from refseg.data.dataset import RefSegDataset
from refseg.data.sources import ReferSource
from refseg.errors import DataError
from refseg.engine.evaluate import evaluate, score_positions, text_derangement
from refseg.metrics import SegMetrics
from refseg.models.refseg_model import RefSegOutput

sys.path.insert(0, str(Path(__file__).parent))
from test_refer import ANNS, H, W, make_refer_dataset, rect  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
S = 32


@pytest.fixture(scope="module")
def tokenizer():
    from refseg.models.text import load_tokenizer

    return load_tokenizer("bundled-minilm")


class AllForeground(nn.Module):
    """Predicts every pixel as the object: I = |gt|, U = H * W."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values, input_ids, attention_mask):
        B, _, h, w = pixel_values.shape
        h, w = h // 4, w // 4  # the model contract: logits at stride 4
        out = torch.zeros(B, 2, h, w)
        out[:, 1] = 1.0
        return RefSegOutput(logits=out + self.p)


class LeftHalf(AllForeground):
    """Object = the left half of the S x S input."""

    def forward(self, pixel_values, input_ids, attention_mask):
        B, _, h, w = pixel_values.shape
        h, w = h // 4, w // 4  # the model contract: logits at stride 4
        out = torch.zeros(B, 2, h, w)
        out[:, 1, :, : w // 2] = 1.0
        out[:, 1, :, w // 2:] = -1.0
        return RefSegOutput(logits=out + self.p)


class ReadsText(AllForeground):
    """Predicts the left half when the expression contains 'left', else the right half."""

    def __init__(self, tokenizer):
        super().__init__()
        self.left = tokenizer.convert_tokens_to_ids("left")

    def forward(self, pixel_values, input_ids, attention_mask):
        B, _, h, w = pixel_values.shape
        h, w = h // 4, w // 4  # the model contract: logits at stride 4
        is_left = (input_ids == self.left).any(1).float().view(B, 1, 1) * 2 - 1  # +1 left, -1 right
        out = torch.zeros(B, 2, h, w)
        out[:, 1, :, : w // 2] = is_left
        out[:, 1, :, w // 2:] = -is_left
        return RefSegOutput(logits=out + self.p)


def lr_dataset(root: Path, name: str = "lr"):
    """3 images, each split into a left and a right object; one expression per object."""
    anns, refs = {}, []
    fruit = ["apple", "pear", "plum"]
    for i in range(3):
        anns[10 * i + 1] = (i + 1, [rect(0, 0, W // 2, H)], None)
        anns[10 * i + 2] = (i + 1, [rect(W // 2, 0, W, H)], None)
        split = "val" if i < 2 else "testA"
        extra = [("apple on the left", None)] if i == 0 else []  # 5 val samples: uneven shards
        refs.append((10 * i + 1, 10 * i + 1, split, [(f"the left {fruit[i]}", None)] + extra))
        refs.append((10 * i + 2, 10 * i + 2, split, [(f"the right {fruit[i]}", None)]))
    refs.append((99, 1, "train", [("the left apple", None)]))
    make_refer_dataset(root, name=name, refs=refs, anns=anns)
    return ReferSource(root, name, "unc")


@pytest.fixture
def toy(tmp_path):
    make_refer_dataset(tmp_path)
    return ReferSource(tmp_path, "toy", "unc")


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def test_all_foreground_scores_by_hand(toy, tokenizer):
    ds = RefSegDataset(toy, "train", tokenizer, S, 12, train=False)
    r = evaluate(AllForeground(), ds, batch_size=2, progress=False)
    areas = [192, 192, 192, 200, 200]  # refs 1 (3 sentences) and 2 (2 sentences)
    assert r["num_samples"] == 5
    assert r["oIoU"] == pytest.approx(100 * sum(areas) / (5 * H * W))
    assert r["mIoU"] == pytest.approx(100 * np.mean([a / (H * W) for a in areas]))
    assert r["P@0.5"] == 0.0
    assert "per_type" not in r


def test_resized_gt_scores_at_image_size(toy, tokenizer):
    ds = RefSegDataset(toy, "val", tokenizer, S, 12, train=False)
    r = evaluate(LeftHalf(), ds, batch_size=4, resized_gt=True, progress=False)
    labels = ds[0]["labels"].bool()
    left = torch.zeros(S, S, dtype=torch.bool)
    left[:, : S // 2] = True
    I, U = int((labels & left).sum()), int((labels | left).sum())
    assert r["mIoU"] == pytest.approx(100 * I / U) and r["oIoU"] == pytest.approx(100 * I / U)
    # at the original size the same model is scored against the 48x64 mask
    r0 = evaluate(LeftHalf(), ds, batch_size=4, progress=False)
    gt = torch.from_numpy(ANNS[103][2])
    left0 = torch.zeros(H, W, dtype=torch.bool)
    left0[:, : W // 2] = True
    assert r0["mIoU"] == pytest.approx(100 * int((gt & left0).sum()) / int((gt | left0).sum()))


class Ramp(AllForeground):
    """Object-minus-background logit rising down the rows of the S x S input: input row x has margin
    x - 5.9. The logits are at stride 4 (the model contract): sample k covers input rows 4k..4k+3, its
    centre is row 4k + 1.5, so it carries 4k + 1.5 - 5.9; bilinear interpolation keeps a linear ramp exact."""

    def forward(self, pixel_values, input_ids, attention_mask):
        B, _, h, w = pixel_values.shape
        h, w = h // 4, w // 4
        out = torch.zeros(B, 2, h, w)
        out[:, 1] = (4 * torch.arange(h, dtype=torch.float32) + 1.5 - 5.9).view(h, 1)
        return RefSegOutput(logits=out + self.p)


def test_original_size_upsampling_is_bilinear_with_pixel_centres_aligned(tmp_path, tokenizer):
    """DESIGN.md section 8: logits are upsampled bilinearly with pixel centres aligned (align_corners=False).
    The ramp's zero crossing (input row 5.9 of 32) maps to original row (5.9 + 0.5) * 48 / 32 - 0.5 = 9.1, so
    rows 10..47 are the object; align_corners=True, nearest and nearest-exact would all start at row 9."""
    src = lr_dataset(tmp_path)  # 48 x 64 images, the target of sample 0 is the left half
    ds = RefSegDataset(src, "val", tokenizer, S, 12, train=False)
    gt = np.zeros((H, W), bool)
    gt[:, : W // 2] = True

    def iou(first_row: int) -> float:
        pred = np.zeros((H, W), bool)
        pred[first_row:] = True
        return float((pred & gt).sum() / (pred | gt).sum())

    first_row = next(y for y in range(H) if (2 * y + 1) * S * 10 > (2 * 59 + 10) * H)  # (y + .5) S/H - .5 > 5.9
    assert first_row == 10
    for mode, kw in [("bilinear", dict(align_corners=True)), ("nearest", {}), ("nearest-exact", {})]:
        ramp = (torch.arange(S, dtype=torch.float32) - 5.9).view(1, 1, S, 1).expand(1, 1, S, S)
        other = torch.nn.functional.interpolate(ramp, (H, W), mode=mode, **kw)[0, 0, :, 0] > 0
        assert int(other.long().argmax()) == 9, mode  # the other conventions would move the boundary
    r = evaluate(Ramp(), torch.utils.data.Subset(ds, [0]), batch_size=1, progress=False)
    assert r["mIoU"] == pytest.approx(100 * iou(first_row)) and r["mIoU"] != pytest.approx(100 * iou(9))


def test_per_type_and_subset(toy, tokenizer):
    ds = RefSegDataset(toy, "testB", tokenizer, S, 12, train=False)
    r = evaluate(AllForeground(), ds, progress=False)
    assert set(r["per_type"]) == {"attribute", "position"}
    sub = torch.utils.data.Subset(ds, [1])
    r1 = evaluate(AllForeground(), sub, progress=False)
    assert r1["num_samples"] == 1 and set(r1["per_type"]) == {"position"}


def test_two_shards_merge_to_one_process(tmp_path, tokenizer):
    src = lr_dataset(tmp_path)
    ds = RefSegDataset(src, "val", tokenizer, S, 12, train=False)
    model = LeftHalf()
    one = score_positions(model, ds, list(range(len(ds))), torch.device("cpu"), batch_size=3)
    shards = [score_positions(model, ds, list(range(len(ds)))[r::2], torch.device("cpu"), batch_size=3)
              for r in range(2)]
    merged = SegMetrics.merge([json.loads(json.dumps(s.state())) for s in shards[::-1]])
    assert merged.compute() == one.compute() == evaluate(model, ds, batch_size=3, progress=False)


def test_restores_training_mode(toy, tokenizer):
    model = AllForeground().train()
    evaluate(model, RefSegDataset(toy, "val", tokenizer, S, 12, train=False), progress=False)
    assert model.training


def test_empty_target_is_a_data_error(toy, tokenizer):
    class EmptyMasks:
        def __init__(self, inner):
            self.inner = inner

        def splits(self):
            return self.inner.splits()

        def samples(self, split):
            return self.inner.samples(split)

        def load_image(self, s):
            return self.inner.load_image(s)

        def load_mask(self, s):
            return np.zeros((s.height, s.width), bool)

    ds = RefSegDataset(EmptyMasks(toy), "val", tokenizer, S, 12, train=False)
    with pytest.raises(DataError, match=r"empty ground-truth mask for .*COCO_train2014_000000000002.png \(ref_id 3"):
        evaluate(AllForeground(), ds, progress=False)


def test_rejects_training_datasets(toy, tokenizer):
    with pytest.raises(ValueError, match="train=False"):
        evaluate(AllForeground(), RefSegDataset(toy, "train", tokenizer, S, 12, train=True), progress=False)


# ---------------------------------------------------------------------------------------------
# shuffle_text
# ---------------------------------------------------------------------------------------------


def test_text_derangement():
    refs = [1, 1, 2, 3, 3, 3, 4, 5, 6, 7]
    p = text_derangement(refs, seed=0)
    assert sorted(p) == list(range(10))
    assert all(p[i] != i and refs[p[i]] != refs[i] for i in range(10))
    assert p == text_derangement(refs, seed=0) and p != text_derangement(refs, seed=1)
    assert text_derangement([5]) == [0]


def test_shuffle_text_pairs_images_with_other_expressions(tmp_path, tokenizer):
    src = lr_dataset(tmp_path)
    ds = RefSegDataset(src, "val", tokenizer, S, 12, train=False)
    model = ReadsText(tokenizer)
    assert evaluate(model, ds, progress=False)["mIoU"] == 100.0

    perm = text_derangement([s.ref_id for s in ds.samples], seed=0)
    side = ["left" if "left" in s.sentence else "right" for s in ds.samples]
    expected = 100.0 * np.mean([side[perm[i]] == side[i] for i in range(len(ds))])
    shuffled = evaluate(model, ds, shuffle_text=True, progress=False)
    assert shuffled["mIoU"] == pytest.approx(expected)
    assert shuffled["mIoU"] < 100.0
    assert evaluate(model, ds, progress=False)["mIoU"] == 100.0  # the dataset itself is unchanged
    view = ds.with_texts(perm)
    assert sorted(view.text(i) for i in range(len(ds))) == sorted(s.sentence for s in ds.samples)
    assert all(view.text(i) != ds.text(i) for i in range(len(ds)))


# ---------------------------------------------------------------------------------------------
# Gallery
# ---------------------------------------------------------------------------------------------


def test_gallery_writes_worst_predictions(tmp_path, tokenizer):
    src = lr_dataset(tmp_path / "data")
    ds = RefSegDataset(src, "val", tokenizer, S, 12, train=False)
    out = tmp_path / "gallery"
    evaluate(LeftHalf(), ds, gallery_dir=out, gallery_size=3, progress=False)
    index = json.loads((out / "index.json").read_text())
    assert len(index) == 3
    assert [e["iou"] for e in index] == sorted(e["iou"] for e in index)
    assert index[0]["iou"] == 0.0 and "right" in index[0]["expression"]
    for e in index:
        img = (out / e["file"])
        assert img.is_file()
        import cv2

        assert cv2.imread(str(img)).shape == (H, W, 3)
    assert (out / "index.html").is_file()


# ---------------------------------------------------------------------------------------------
# evaluate.py command line
# ---------------------------------------------------------------------------------------------


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def _checkpoint(path: Path, data_root: Path, name="lr") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    import yaml

    (path / "config.yaml").write_text(yaml.safe_dump({
        "data": {"name": name, "root": str(data_root), "split_by": "unc", "image_size": S, "num_workers": 0},
        "model": {"text": {"max_tokens": 12}}, "eval": {"batch_size": 4}}))
    return path


def _fake_checkpoint(path: Path, model, tokenizer):
    """What evaluate.py's ``_load_model`` returns, around a fixed-logit model (the processor of the
    checkpoint's config, as a real checkpoint carries)."""
    from types import SimpleNamespace

    from refseg.config import load_run_config
    from refseg.processing import RefSegProcessor

    cfg = load_run_config(Path(path) / "config.yaml")
    return SimpleNamespace(model=model, processor=RefSegProcessor.from_config(cfg.model, tokenizer), run_config=cfg)


def test_cli_bad_input_exit_codes(tmp_path):
    r = _cli("--checkpoint", tmp_path / "missing", "--split", "val")
    assert r.returncode == 2 and "checkpoint directory not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr

    ckpt = _checkpoint(tmp_path / "ckpt", tmp_path / "data")
    r = _cli("--checkpoint", ckpt, "--split", "val", "--data-root", tmp_path / "nowhere", "--dataset", "refcoco")
    assert r.returncode == 2 and "data root not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    lr_dataset(tmp_path / "data")
    r = _cli("--checkpoint", ckpt, "--split", "testB")
    assert r.returncode == 2
    assert "unknown split 'testB'" in r.stderr and "valid splits are train, val, testA, all" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    r = _cli("--checkpoint", ckpt, "--split", "val", "--batch-size", "0")
    assert r.returncode == 2 and "--batch-size must be positive" in r.stderr


def test_cli_checks_its_arguments_before_generating_data(tmp_path):
    """A refshapes checkpoint whose data is not there: a bad --split, a non-empty --gallery or a
    directory as --out is refused before refshapes is generated (nothing written anywhere)."""
    import yaml

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    root = tmp_path / "data"
    (ckpt / "config.yaml").write_text(yaml.safe_dump({
        "data": {"name": "refshapes", "root": str(root), "num_workers": 0,
                 "refshapes": {"num_train_images": 2, "num_val_images": 2, "num_test_images": 2, "image_size": 64}},
        "model": {"text": {"max_tokens": 12}}, "eval": {"batch_size": 4}}))
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "old.png").write_bytes(b"png")
    for args, expect in [(["--split", "bogus"], "unknown split 'bogus' for refshapes: valid splits are train, val, "
                                                "test, all"),
                         (["--split", "val", "--gallery", tmp_path / "g"], "--gallery .* is not empty"),
                         (["--split", "val", "--out", tmp_path], "--out .* is a directory")]:
        r = _cli("--checkpoint", ckpt, *args, "--no-progress", cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        import re
        assert re.search(expect, r.stderr), r.stderr
        assert not root.exists(), f"{args}: refshapes was generated before the arguments were checked"


def test_a_relative_data_root_is_recorded_as_the_launch_directorys(tmp_path, monkeypatch):
    """train: data.root=data from /x is saved as /x/data, so the checkpoint finds (or regenerates) its
    data in one place whatever folder evaluate.py, demo.py or app.py later run in."""
    from refseg.config import load_config
    from refseg.engine.trainer import Trainer

    monkeypatch.chdir(tmp_path)
    trainer = Trainer(load_config(overrides=["data.root=data"]), output_dir=tmp_path / "run")
    assert trainer.config.data.root == str(tmp_path / "data")
    trainer = Trainer(load_config(overrides=["data.root=~/somewhere"]), output_dir=tmp_path / "run")
    assert trainer.config.data.root == str(Path.home() / "somewhere")


def _load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def test_cli_runs_and_writes_json(tmp_path, tokenizer, monkeypatch, capsys, fresh_accelerate_state):
    lr_dataset(tmp_path / "data")
    ckpt = _checkpoint(tmp_path / "ckpt", tmp_path / "data")
    cli = _load_cli()
    monkeypatch.setattr(cli, "_load_model", lambda path: _fake_checkpoint(path, ReadsText(tokenizer), tokenizer))

    out = tmp_path / "m.json"
    assert cli.main(["--checkpoint", str(ckpt), "--split", "val", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    val = res["results"]["val"]
    assert set(val) == {"P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "oIoU", "mIoU", "num_samples"}
    assert {k: v for k, v in res.items() if k != "results" and k not in val} == {
        "checkpoint": str(ckpt), "checkpoint_path": str(ckpt), "predictions": None, "dataset": "lr",
        "data_root": str(tmp_path / "data"), "split_by": "unc", "splits": ["val"], "shuffle_text": False,
        "resized_gt": False, "max_samples": None}
    assert list(res["results"]) == ["val"]
    assert {k: res[k] for k in val} == val  # one split: its numbers at the top level too
    assert val["mIoU"] == 100.0 and val["num_samples"] == 5
    printed = capsys.readouterr().out
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in printed.splitlines() if ln.startswith("|")]
    assert rows[0][:2] == ["split", "P@0.5"] and rows[2][:2] == ["val", "100.00"] and rows[2][-1] == "5"

    assert cli.main(["--checkpoint", str(ckpt), "--split", "val", "--shuffle-text", "--out", str(out),
                     "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["shuffle_text"] is True and res["results"]["val"]["mIoU"] < 100.0  # a shuffled score says so

    assert cli.main(["--checkpoint", str(ckpt), "--split", "all", "--out", str(out), "--no-progress",
                     "--gallery", str(tmp_path / "g")]) == 0
    res = json.loads(out.read_text())  # the same shape as for one split (no split's numbers on top)
    assert res["splits"] == ["val", "testA"] and set(res["results"]) == {"val", "testA"} and "mIoU" not in res
    assert res["results"]["testA"]["num_samples"] == 2 and res["results"]["val"]["mIoU"] == 100.0
    assert (tmp_path / "g" / "testA" / "index.json").is_file()

    # a gallery directory that holds files is not written into, unless --overwrite moves it aside
    from refseg.errors import RunDirectoryError

    index = (tmp_path / "g" / "testA" / "index.json").read_bytes()
    with pytest.raises(RunDirectoryError, match="--gallery .* is not empty"):
        cli.main(["--checkpoint", str(ckpt), "--split", "val", "--no-progress", "--gallery", str(tmp_path / "g")])
    assert (tmp_path / "g" / "testA" / "index.json").read_bytes() == index
    assert cli.main(["--checkpoint", str(ckpt), "--split", "val", "--no-progress", "--overwrite",
                     "--gallery", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g.old-1" / "testA" / "index.json").read_bytes() == index
    assert (tmp_path / "g" / "index.json").is_file() and not (tmp_path / "g" / "testA").exists()


MULTI_SCRIPT = r"""
import json, sys
sys.path.insert(0, {tests!r})
import torch
from accelerate import Accelerator
from refseg.data.dataset import RefSegDataset
from refseg.data.sources import ReferSource
from refseg.engine.evaluate import evaluate
from refseg.models.text import load_tokenizer
from test_evaluate import ReadsText

acc = Accelerator(cpu=True)
tok = load_tokenizer("bundled-minilm")
src = ReferSource({root!r}, "lr", "unc")
ds = RefSegDataset(src, "val", tok, {S}, 12, train=False)
res = evaluate(ReadsText(tok), ds, accelerator=acc, batch_size=3, shuffle_text=True, progress=False)
if acc.is_main_process:
    json.dump({{"world": acc.num_processes, **res}}, open({out!r}, "w"))
"""


@pytest.mark.slow
def test_accelerate_two_processes_equal_one(tmp_path, tokenizer):
    """A real 2-process (gloo, CPU) run gives exactly the single-process numbers."""
    lr_dataset(tmp_path)  # 5 val samples: shards of 3 and 2; with shuffle_text
    script = tmp_path / "multi.py"
    out = tmp_path / "multi.json"
    script.write_text(MULTI_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path), S=S, out=str(out)))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    multi = json.loads(out.read_text())
    assert multi.pop("world") == 2
    ds = RefSegDataset(ReferSource(tmp_path, "lr", "unc"), "val", tokenizer, S, 12, train=False)
    single = evaluate(ReadsText(tokenizer), ds, batch_size=3, shuffle_text=True, progress=False)
    assert multi == json.loads(json.dumps(single))


# ---------------------------------------------------------------------------------------------
# evaluate.py on a real checkpoint, from the command line
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes96(tmp_path_factory):
    """A refer-layout folder ``shapes96`` of refshapes images at 96 px, larger than the tiny model's 64:
    scoring at the original size and at S x S (``--resized-gt``) differ on it."""
    from refseg.data.refshapes import write_refshapes

    root = tmp_path_factory.mktemp("shapes96")
    write_refshapes(root, 2, 4, 0, 96, 5, progress=False).rename(root / "shapes96")
    return root


def _run_evaluate(tmp_path, *args) -> dict:
    out = tmp_path / f"m{len(list(tmp_path.glob('m*.json')))}.json"
    r = _cli(*args, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def _assert_scores_equal(got: dict, want: dict) -> None:
    assert got["num_samples"] == want["num_samples"] > 0
    for key in ("oIoU", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), (key, got, want)


def test_cli_on_a_trained_checkpoint_matches_an_independent_count(trained_run, tmp_path):
    """evaluate.py on the 6-step run's best/ (its own refshapes val split, original size) gives the numbers
    counted here from Predictor masks and the pycocotools ground truth (conftest.score_independently)."""
    from conftest import score_independently

    base, run, _ = trained_run
    got = _run_evaluate(tmp_path, "--checkpoint", run / "best", "--split", "val")
    want = score_independently(run / "best", base / "data" / "refshapes", "val")
    assert 0.0 < want["mIoU"] < 100.0, want  # a model whose masks are neither empty nor perfect
    _assert_scores_equal(got, want)


def test_cli_resized_gt_scores_at_the_model_size(trained_run, shapes96, tmp_path):
    """--resized-gt from the command line: scored at S x S against the nearest-resized ground truth
    (LAVT's test.py); without it, at the images' own 96 px. Both match the independent count, and differ."""
    from conftest import score_independently

    _, run, _ = trained_run
    args = ("--checkpoint", run / "best", "--split", "val", "--dataset", "shapes96", "--data-root", shapes96,
            "--split-by", "refshapes")
    resized = _run_evaluate(tmp_path, *args, "--resized-gt")
    original = _run_evaluate(tmp_path, *args)
    _assert_scores_equal(resized, score_independently(run / "best", shapes96 / "shapes96", "val", resized_gt=True))
    _assert_scores_equal(original, score_independently(run / "best", shapes96 / "shapes96", "val"))
    assert resized["oIoU"] != original["oIoU"]
