"""benchmarks/refcoco_scale.py's rehearsal set: RefCOCO's layout and (scaled) counts, cached, resumable."""
from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from refseg.data.sources.refer import ReferSource, safe_load_pickle

from conftest import REALREF, REPO, require_realref


@pytest.fixture(autouse=True, scope="module")
def _realref():
    """Skips the module where the photos are not there, fails it under CI (conftest.require_realref)."""
    require_realref()
SCALE = 0.002  # 41 images, 100 refs


@pytest.fixture(scope="module")
def rs():
    spec = importlib.util.spec_from_file_location("refcoco_scale", REPO / "benchmarks" / "refcoco_scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["refcoco_scale"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def written(rs, tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    meta = rs.ensure_dataset(root, SCALE, workers=1, progress=False, realref=REALREF)
    return root, meta


def test_counts_and_refer_layout(rs, written):
    root, meta = written
    counts = rs.scaled_counts(SCALE)
    assert counts["train"] == (34, 85, 241) and counts["testB"] == (2, 4, 10)
    src = ReferSource(root, "refcoco", "unc")
    assert src.splits() == ["train", "val", "testA", "testB"]
    for split, (n_img, n_ref, n_sent) in counts.items():
        refs = src.refs(split)
        assert len(refs) == n_ref and len(src.samples(split)) == n_sent
        assert len({r.image_id for r in refs}) == n_img
        cats = {r.category_id for r in refs}
        if split == "testA":
            assert cats == {1}  # people
        if split == "testB":
            assert 1 not in cats
    assert len(src.images) == sum(c[0] for c in counts.values()) == meta["images"]
    assert len(src.anns) == meta["annotations"] == round(rs.NUM_ANNOTATIONS * SCALE)
    # the refs file is a plain protocol-2 pickle that the restricted unpickler reads as the toolkit writes it
    raw = (root / "refcoco" / "refs(unc).p").read_bytes()
    assert raw[:2] == b"\x80\x02"
    refs = safe_load_pickle(root / "refcoco" / "refs(unc).p")
    assert refs == pickle.loads(raw)
    r = refs[0]
    assert set(r) == {"sent_ids", "file_name", "ann_id", "ref_id", "image_id", "split", "sentences", "category_id"}
    assert set(r["sentences"][0]) == {"tokens", "raw", "sent_id", "sent"}
    inst = json.loads((root / "refcoco" / "instances.json").read_text())
    assert list(inst) == ["info", "images", "licenses", "annotations", "categories"]
    assert len(inst["categories"]) == 80


def test_images_masks_and_polygons(written):
    root, meta = written
    src = ReferSource(root, "refcoco", "unc")
    assert meta["multi_part_annotations"] > 0
    assert any(len(a["segmentation"]) > 1 for a in src.anns.values())
    assert all(isinstance(p, list) and len(p) >= 24 and len(p) % 2 == 0 for a in src.anns.values()
               for p in a["segmentation"])
    for im in src.images.values():
        assert max(im["height"], im["width"]) == 640 and min(im["height"], im["width"]) >= 300
    for split in src.splits():
        for s in src.samples(split)[::3]:
            img = src.load_image(s)  # checks the size against instances.json
            m = src.load_mask(s)  # raises on an empty mask
            assert img.shape[:2] == m.shape and m.any()
    # photo-like JPEGs: tens of KB at least, unlike flat synthetic shapes
    assert meta["jpeg_mean_kb"] > 60


def test_objects_are_drawn_where_their_masks_are(rs, written):
    """The referred object (painted last) covers its mask: pixels there differ from the bare background."""
    from pycocotools import mask as mask_utils

    root, _ = written
    plan = rs.build_plan(SCALE, 0)
    rs._worker_init(str(REALREF))
    for index, img in zip(range(3), rs.plan_images(plan)):
        full = rs.render(img, 0, index)
        bare = rs.render({**img, "order": []}, 0, index)
        h, w = img["height"], img["width"]
        k = img["order"][-1]  # the top-most object
        parts = [p.ravel().astype(float).tolist() for p in img["anns"][k]["parts"]]
        m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, h, w))).astype(bool)
        changed = (full != bare).any(-1)
        assert changed[m].mean() > 0.9
        # and the stored JPEG is that picture
        stored = cv2.imread(str(root / "images" / "train2014" / img["file_name"]))
        mse = np.mean((stored.astype(float) - full.astype(float)) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 30


def test_cached_and_resumable(rs, written, tmp_path):
    root, meta = written
    again = rs.ensure_dataset(root, SCALE, workers=1, progress=False, realref=REALREF)
    assert again["cached"] and again["params"] == meta["params"]
    with pytest.raises(rs.RehearsalError, match="other parameters"):
        rs.ensure_dataset(root, SCALE, seed=1, workers=1, progress=False, realref=REALREF)
    # an interrupted run: no meta.json, one image missing, one half-written temporary left behind
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(root, copy)
    (copy / "meta.json").unlink()
    victim = sorted((copy / "images" / "train2014").glob("*.jpg"))[5]
    before = victim.read_bytes()
    victim.unlink()
    (victim.parent / f".{victim.name}.tmp-123").write_bytes(b"partial")
    resumed = rs.ensure_dataset(copy, SCALE, workers=1, progress=False, realref=REALREF)
    assert resumed["generation_s"]["images_rendered"] == 1
    assert victim.read_bytes() == before  # each image depends on (seed, index) only
    assert not list(victim.parent.glob(".*.tmp-*"))
    for name in ("instances.json", "refs(unc).p"):
        assert (copy / "refcoco" / name).read_bytes() == (root / "refcoco" / name).read_bytes()


def test_bad_scale(rs):
    with pytest.raises(rs.RehearsalError, match="scale"):
        rs.scaled_counts(0.0)
    with pytest.raises(rs.RehearsalError, match="scale"):
        rs.scaled_counts(1.5)


def test_decode_rates_runs(rs, written):
    root, _ = written
    files = sorted((root / "images" / "train2014").glob("*.jpg"))[:4]
    rates = rs.decode_rates({"a": files}, rounds=1, seconds=0.05)
    assert rates["a"] > 0
    assert cv2.imread(str(files[0])) is not None


REQUIRED_KEYS = {"image_dir", "loader_samples_per_s_per_worker", "decode_only_samples_per_s", "worker_bytes_per_sample",
                 "eval_expressions_small", "eval_rss_growth_mb_small",
                 "eval_expressions_large", "eval_rss_growth_mb_large", "annotation_load_s", "annotation_rss_mb",
                 "check_s", "train_step_s", "train_peak_rss_mb", "checkpoint_save_s", "checkpoint_mb"}
TINY = ["model.vision.name=xcit_nano_12_p8", "model.vision.embed_dim=32", "model.vision.depth=4",
        "model.vision.num_heads=2", "model.crossvit.embed_dim=32", "model.crossvit.num_heads=2",
        "model.decoder.hidden_dim=32", "model.text.name=bundled-minilm", "model.vision.pretrained=null",
        "model.image_size=64"]


@pytest.mark.slow
def test_benchmark_at_scale_0_02(tmp_path):
    """The whole rehearsal at --scale 0.02 (tiny models so it stays quick): the JSON other scripts read."""
    import os
    import subprocess

    out = tmp_path / "figures.json"
    args = [sys.executable, str(REPO / "benchmarks" / "refcoco_scale.py"), "--scale", "0.02", "--root",
            str(tmp_path / "set"), "--out", str(out), "--no-progress", "--loader-samples", "16", "--two-process-eval",
            "--eval-set=model.image_size=64", *[f"--train-set={o}" for o in TINY],
            "--train-set=model.text.trainable_layers=none"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=1200, cwd=str(REPO),
                       env={**os.environ, "REFSEG_REALREF": str(REALREF), "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert REQUIRED_KEYS <= set(fig)
    assert Path(fig["image_dir"]).is_dir() and len(list(Path(fig["image_dir"]).glob("*.jpg"))) == 400
    # uint8 image + uint8 mask + text, at 480 px
    assert 0 < fig["worker_bytes_per_sample"] - (3 * 480 * 480 + 480 * 480) <= 2 * 20 * 8  # + ids and mask
    assert fig["eval_expressions_large"] == 217 and fig["eval_expressions_large"] >= 2 * fig["eval_expressions_small"]
    assert fig["eval_two_process_equal"] and fig["eval_two_process"]["num_samples"] == 217
    # only the split sizes differ from RefCOCO's at this scale
    assert len(fig["check_problems"]) == 4 and all("expected" in p for p in fig["check_problems"])
    for key in REQUIRED_KEYS - {"image_dir"}:
        assert isinstance(fig[key], (int, float)) and fig[key] >= 0, key
    assert fig["checkpoint_mb"] > 1 and fig["train_peak_rss_mb"] > fig["checkpoint_mb"] / 4
    import re

    assert re.search(r"\| bytes per sample from a worker +\| 0\.92 MB", r.stdout)
    assert re.search(r"\| evaluate\.py, 2 processes vs 1 +\| equal ", r.stdout)


def test_loader_figures_on_the_small_set(rs, written):
    """The loader's cost split and throughput (uint8 items) on the small set, in-process."""
    root, _ = written
    lf = rs.loader_figures(root, image_size=64, n=8, workers=(0,), batch_size=4)
    assert set(lf["uint8_ms"]) == {"decode", "resize", "mask", "tokenise", "item (all of the above)", "collate"}
    assert all(v > 0 for v in lf["uint8_ms"].values()) and lf["uint8_samples_per_s"]["0"] > 0
    assert 0 < lf["uint8_bytes_per_sample"] - (3 * 64 * 64 + 64 * 64) <= 2 * 20 * 8  # uint8 planes + mask + text
