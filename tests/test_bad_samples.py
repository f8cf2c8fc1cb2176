"""A bad file does not end a run: unreadable training images are replaced, listed and counted; evaluation
fails on one unless evaluate.py --skip-bad."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import TINY_OVERRIDES, run_script, tiny_train_args


def _corrupt_copy(base: Path, tmp_path: Path, split: str, count: int) -> tuple[Path, list[str]]:
    """A copy of the tiny refshapes set whose first ``count`` images used only by ``split`` are broken JPEGs."""
    root = tmp_path / "data"
    shutil.copytree(base / "data" / "refshapes", root / "refshapes")
    ds = root / "refshapes"
    refs = json.loads((ds / "refs(refshapes).json").read_text())
    images = {im["id"]: im["file_name"] for im in json.loads((ds / "instances.json").read_text())["images"]}
    in_split = {r["image_id"] for r in refs if r["split"] == split}
    elsewhere = {r["image_id"] for r in refs if r["split"] != split}
    broken = []
    for image_id in sorted(in_split - elsewhere)[:count]:
        path = ds / "images" / images[image_id]
        path.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 50)  # a JPEG header, then garbage
        broken.append(str(path))
    assert len(broken) == count
    return root, broken


def _own_lines(stderr: str) -> list[str]:
    """stderr without libjpeg's own warnings (it prints 'Premature end of JPEG file' as it decodes)."""
    return [line for line in stderr.strip().splitlines() if "JPEG" not in line]


def test_replacement_is_deterministic_and_recorded(trained_run, tmp_path):
    from refseg.config import load_config
    from refseg.data import RefSegDataset, open_source
    from refseg.engine.badsamples import SkipBadSamples
    from refseg.processing import RefSegProcessor

    base, _, _ = trained_run
    root, (broken,) = _corrupt_copy(base, tmp_path, "train", 1)
    cfg = load_config(overrides=[*TINY_OVERRIDES, f"data.root={root}"])
    ds = RefSegDataset(open_source(cfg.data), "train", RefSegProcessor.from_config(cfg.model), train=True)
    items = SkipBadSamples(ds, seed=0)
    bad = [i for i in range(len(ds)) if items.path_of(i) == broken]
    assert bad
    a, b = items[(3, bad[0])], items[(3, bad[0])]
    assert a["index"] != bad[0] and a["index"] == b["index"]  # another sample, the same one every time
    assert len(a["bad_samples"]) == 1 and a["bad_samples"][0]["path"] == broken
    assert "image file" in a["bad_samples"][0]["reason"]
    good = next(i for i in range(len(ds)) if i not in bad)
    assert items[(3, good)]["bad_samples"] == [] and items[(3, good)]["index"] == good


def _train(data_root, out, *extra):
    return run_script(["train.py", "--no-progress", "--output-dir", out,
                       *tiny_train_args(data_root, "train.max_steps=6", "train.eval_every=100",
                                        "train.checkpoint_every=100", *extra)])


def test_training_skips_and_lists_an_unreadable_image(trained_run, tmp_path):
    base, _, _ = trained_run
    root, (broken,) = _corrupt_copy(base, tmp_path, "train", 1)
    out = tmp_path / "run"
    r = _train(root, out)  # 6 batches of 4: the whole 24-image epoch, the broken image included
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = [json.loads(line) for line in (out / "bad_samples.jsonl").read_text().splitlines()]
    assert rec["path"] == broken and 1 <= rec["step"] <= 6 and "image file" in rec["reason"]
    assert "skipped an unreadable training sample" in r.stdout
    assert (out / "last" / "model.safetensors").is_file()


def test_past_the_limit_the_run_stops_with_one_line(trained_run, tmp_path):
    base, _, _ = trained_run
    root, broken = _corrupt_copy(base, tmp_path, "train", 2)
    out = tmp_path / "run"
    r = _train(root, out, "data.max_bad_samples=1")
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(_own_lines(r.stderr)) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "data.max_bad_samples=1" in r.stderr and "bad_samples.jsonl" in r.stderr
    recs = [json.loads(line) for line in (out / "bad_samples.jsonl").read_text().splitlines()]
    assert sorted(rec["path"] for rec in recs) == sorted(broken)


def test_evaluation_fails_on_a_bad_sample_unless_skip_bad(trained_run, tmp_path):
    base, run, _ = trained_run
    root, (broken,) = _corrupt_copy(base, tmp_path, "val", 1)
    images = json.loads((root / "refshapes" / "instances.json").read_text())["images"]
    (broken_id,) = [im["id"] for im in images if broken.endswith("/" + im["file_name"])]
    args = ["evaluate.py", "--checkpoint", run / "best", "--split", "val", "--data-root", root, "--no-progress"]
    r = run_script(args)
    assert r.returncode == 2 and len(_own_lines(r.stderr)) == 1, r.stderr[-3000:]
    assert broken in r.stderr and "--skip-bad" in r.stderr
    out = tmp_path / "m.json"
    r = run_script([*args, "--skip-bad", "--out", out])
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    refs = json.loads((root / "refshapes" / "refs(refshapes).json").read_text())
    val_pairs = sum(len(r["sentences"]) for r in refs if r["split"] == "val")
    on_broken = sum(len(r["sentences"]) for r in refs if r["split"] == "val" and r["image_id"] == broken_id)
    assert got["bad_samples"] == on_broken >= 1 and got["num_samples"] == val_pairs - on_broken
    assert {b["path"] for b in got["bad_sample_list"]} == {broken}
    assert f"skipped {got['bad_samples']} unreadable" in r.stdout
