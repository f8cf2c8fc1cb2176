"""Generalized referring segmentation (gRefCOCO layout): the source, the checker, the GRES metrics
against an independent computation that follows ReLA's refer_evaluation.py, and
``evaluate.py --predictions`` on both layouts.

``make_grefcoco_dataset`` writes a tiny dataset exactly in ReLA's layout: ``<root>/grefcoco/grefs(unc)``
(.json, or a Python-2 protocol-2 pickle), ``instances.json``, images in ``<root>/images/train2014``;
``ann_id`` as an int, a list of one, a list of several (with a crowd annotation among them, which the
ground truth excludes), ``[-1]`` and ``-1``; ``category_id`` as an int or a list.
"""
from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from refseg.cli import run
from refseg.data.sources import GReferSource, open_source
from refseg.errors import DataError
from refseg.metrics import SegMetrics, format_gres_breakdown, format_gres_table

sys.path.insert(0, str(Path(__file__).parent))
from test_refer import _Evil, image_array, make_refer_dataset, rect, rect_mask, uncompressed_rle, write_py2_pickle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
H, W = 48, 64
CROWD = rect_mask(0, 40, 10, 48)
RLE_MASK = rect_mask(10, 10, 30, 30)
# ann_id -> (image_id, category_id, segmentation)
GANNS = {
    201: (1, 1, [rect(2, 2, 12, 12)]),
    202: (1, 1, [rect(20, 5, 30, 20)]),
    203: (1, 2, [rect(40, 30, 60, 45), rect(50, 20, 55, 25)]),
    204: (1, 2, uncompressed_rle(CROWD)),  # crowd
    205: (2, 1, "compressed"),
    206: (2, 3, [rect(25, 25, 40, 40)]),  # overlaps 205
}
# ref_id, ann_id as stored, category_id as stored, split, sentences
GREFS = [
    (1, 201, 1, "train", ["the small box", "top left box"]),
    (2, [201, 202], [1, 1], "train", ["both boxes on the left"]),
    (3, [-1], [], "train", ["the purple star"]),
    (4, [202, 203, 204], [1, 2, 2], "val", ["everything but the crowd", "all the things"]),
    (5, [-1], -1, "val", ["the dog"]),
    (6, [205, 206], [1, 3], "val", ["the two squares", "both overlapping squares"]),
    (7, [203], [2], "testA", ["the right object"]),
    (8, -1, -1, "testB", ["nothing here"]),
    (9, [206], 3, "testB", ["the lower square"]),
]
# split -> (refs, sentences, no-target sentences, several-target sentences)
GCOUNTS = {"train": (3, 4, 1, 1), "val": (3, 5, 1, 4), "testA": (1, 1, 0, 0), "testB": (2, 2, 1, 0)}


def make_grefcoco_dataset(root: Path, fmt: str = "json", refs=None, name: str = "grefcoco") -> Path:
    """Write ``root/<name>/grefs(unc).{json,p}``, ``instances.json`` and the images; returns root."""
    from pycocotools import mask as mask_utils

    refs = GREFS if refs is None else refs
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    img_dir = root / "images" / "train2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for iid in sorted({a[0] for a in GANNS.values()}):
        fn = f"COCO_train2014_{iid:012d}.jpg"
        cv2.imwrite(str(img_dir / fn), cv2.cvtColor(image_array(iid), cv2.COLOR_RGB2BGR))
        images.append({"id": iid, "file_name": fn, "height": H, "width": W})
    annotations = []
    for aid, (iid, cat, segm) in GANNS.items():
        if segm == "compressed":
            rle = mask_utils.encode(np.asfortranarray(RLE_MASK.astype(np.uint8)))
            segm = {"counts": rle["counts"].decode("ascii"), "size": list(rle["size"])}
        annotations.append({"id": aid, "image_id": iid, "category_id": cat, "iscrowd": int(aid == 204),
                            "segmentation": segm, "area": 1.0, "bbox": [0, 0, 1, 1]})
    (folder / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations,
         "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "thing"}, {"id": 3, "name": "square"}]}))
    ref_list, sid = [], 0
    for ref_id, ann_id, cat, split, sents in refs:
        first = (ann_id[0] if ann_id else -1) if isinstance(ann_id, list) else ann_id
        iid = GANNS[first][0] if first in GANNS else 1
        sentences = []
        for text in sents:
            sentences.append({"raw": text, "sent": text.lower(), "sent_id": sid, "tokens": text.lower().split()})
            sid += 1
        ref_list.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": iid, "category_id": cat, "split": split,
                         "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences],
                         "file_name": f"COCO_train2014_{iid:012d}.jpg"})
    if fmt == "json":
        (folder / "grefs(unc).json").write_text(json.dumps(ref_list))
    else:
        write_py2_pickle(ref_list, folder / "grefs(unc).p")
    return root


# ---------------------------------------------------------------------------------------------
# Independent computations (pycocotools + PIL + ReLA's accounting, nothing from refseg)
# ---------------------------------------------------------------------------------------------


def independent_gt(root: Path, dataset: str, refs_file: str) -> dict[int, tuple[np.ndarray, bool, int]]:
    """sent_id -> (ground truth, no-target flag, number of listed annotations), as ReLA's
    ``getMaskByRef(merge=True)`` builds it (crowd annotations left out of the union)."""
    from pycocotools import mask as mask_utils

    inst = json.loads((root / dataset / "instances.json").read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    imgs = {i["id"]: i for i in inst["images"]}
    path = root / dataset / refs_file
    refs = json.loads(path.read_text()) if path.suffix == ".json" else pickle.loads(path.read_bytes(),
                                                                                    encoding="latin1")
    out = {}
    for ref in refs:
        img = imgs[ref["image_id"]]
        ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        m = np.zeros((img["height"], img["width"]), np.uint8)
        empty = ids == [-1]
        generalized = refs_file.startswith("grefs")
        for aid in ([] if empty else ids):
            a = anns[aid]
            if a["iscrowd"] and generalized:
                continue
            segm = a["segmentation"]
            if isinstance(segm, list):
                rle = mask_utils.frPyObjects(segm, img["height"], img["width"])
            else:
                rle = mask_utils.frPyObjects(segm, img["height"], img["width"]) if isinstance(segm["counts"], list) \
                    else segm
            d = mask_utils.decode(rle)
            m |= (d.sum(axis=2) if d.ndim == 3 else d).astype(bool).astype(np.uint8)
        for s in ref["sentences"]:
            out[s["sent_id"]] = (m.astype(bool), empty, 0 if empty else len(ids))
    return out


def rela_scores(samples) -> dict:
    """ReLA's refer_evaluation.py accounting, with pred_nt = "the mask is empty". ``samples``: list of
    (pred bool mask, gt bool mask, gt no-target flag). Percentages (ReLA's N/T-acc are fractions)."""
    accum_I = accum_U = accum_IoU = 0.0
    pr = {0.7: 0, 0.8: 0, 0.9: 0}
    total = not_empty = 0
    nt = {"TP": 0, "TN": 0, "FP": 0, "FN": 0}
    for pred, gt, gt_nt in samples:
        pred_nt = not pred.any()
        I = np.sum(np.logical_and(pred, gt))
        U = np.sum(np.logical_or(pred, gt))
        if gt_nt:
            if pred_nt:
                nt["TP"] += 1
                accum_IoU += 1
            else:
                nt["FN"] += 1
                accum_U += int(U)
        else:
            if pred_nt:
                nt["FP"] += 1
                I = 0
            else:
                nt["TN"] += 1
            iou = 0.0 if U == 0 else float(I) / float(U)
            accum_IoU += iou
            accum_I += I
            accum_U += U
            not_empty += 1
            for t in pr:
                pr[t] += iou >= t
        total += 1
    res = {"gIoU": 100.0 * accum_IoU / total, "cIoU": 100.0 * accum_I / accum_U,
           "T_acc": 100.0 * nt["TN"] / (nt["TN"] + nt["FP"]) if nt["TN"] + nt["FP"] else None,
           "N_acc": 100.0 * nt["TP"] / (nt["TP"] + nt["FN"]) if nt["TP"] + nt["FN"] else None}
    for t in pr:
        res[f"Pr@{t}"] = 100.0 * pr[t] / not_empty
    return res


def read_png_independently(path: Path) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("RGB"))
    return a.any(axis=2)


# ---------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def gtoy(tmp_path):
    make_grefcoco_dataset(tmp_path)
    return open_source(type("D", (), {"name": "grefcoco", "root": str(tmp_path), "split_by": "unc"})())


def test_source_reads_the_layout(gtoy, tmp_path):
    assert isinstance(gtoy, GReferSource) and gtoy.splits() == ["train", "val", "testA", "testB"]
    assert gtoy.image_dir == tmp_path / "images" / "train2014"
    for split, (n_refs, n_sents, n_none, n_multi) in GCOUNTS.items():
        samples = gtoy.samples(split)
        assert (len(gtoy.refs(split)), len(samples)) == (n_refs, n_sents)
        assert sum(s.num_targets == 0 for s in samples) == n_none
        assert sum(s.num_targets >= 2 for s in samples) == n_multi
    by_ref = {s.ref_id: s for split in gtoy.splits() for s in gtoy.samples(split)}
    assert by_ref[1].ann_ids == (201,) and by_ref[1].category_id == 1 and by_ref[1].generalized
    assert by_ref[3].ann_ids == () and by_ref[3].ann_id == -1 and by_ref[8].ann_ids == ()
    assert by_ref[4].ann_ids == (202, 203, 204) and by_ref[4].category_id == 1 and by_ref[6].category_id == 1


def test_masks_union_without_crowd_and_empty_for_no_target(gtoy, tmp_path):
    gt = independent_gt(tmp_path, "grefcoco", "grefs(unc).json")
    by_ref = {s.ref_id: s for split in gtoy.splits() for s in gtoy.samples(split)}
    m4 = gtoy.load_mask(by_ref[4])
    assert np.array_equal(m4, rect_mask(20, 5, 30, 20) | rect_mask(40, 30, 60, 45) | rect_mask(50, 20, 55, 25))
    assert not (m4 & CROWD).any()  # the crowd annotation is not part of the ground truth
    assert np.array_equal(gtoy.load_mask(by_ref[6]), RLE_MASK | rect_mask(25, 25, 40, 40))
    assert gtoy.load_mask(by_ref[3]).shape == (H, W) and not gtoy.load_mask(by_ref[3]).any()
    for split in gtoy.splits():
        for s in gtoy.samples(split):
            assert np.array_equal(gtoy.load_mask(s), gt[s.sent_id][0])


def test_pickle_equals_json_and_code_payload_is_refused(tmp_path):
    make_grefcoco_dataset(tmp_path / "j", "json")
    make_grefcoco_dataset(tmp_path / "p", "p")  # Python 2 protocol-2, py2 str keys
    a, b = GReferSource(tmp_path / "j", "grefcoco", "unc"), GReferSource(tmp_path / "p", "grefcoco", "unc")
    assert b.refs_path.name == "grefs(unc).p"
    assert a.splits() == b.splits()
    for split in a.splits():
        assert [replace(x, image_path="") for x in a.samples(split)] == \
            [replace(x, image_path="") for x in b.samples(split)]
    # a .p carrying a code payload is refused and never runs, through the source and the checker
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad"
    make_grefcoco_dataset(bad, "json")
    (bad / "grefcoco" / "grefs(unc).json").unlink()
    refs = [{"ref_id": 1, "ann_id": [-1], "image_id": 1, "category_id": [], "split": "train",
             "sentences": [{"raw": _Evil(marker), "sent_id": 0}]}]
    (bad / "grefcoco" / "grefs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(DataError, match="refused"):
        GReferSource(bad, "grefcoco", "unc")
    assert not marker.exists()
    from refseg.data.check import main

    with pytest.raises(SystemExit) as e:
        run(main, ["--data-root", str(bad), "--dataset", "grefcoco", "--split-by", "unc"], prog="check")
    assert e.value.code == 2 and not marker.exists()


@pytest.mark.parametrize("ann_id,cat,message", [
    ("abc", 1, "field 'ann_id'"), ([], 1, "field 'ann_id': empty list"), ([-1, 201], 1, "mixes -1"),
    ([201], "x", "field 'category_id'"), ([201, 2.5], 1, "field 'ann_id'")])
def test_bad_fields_one_error_line(tmp_path, capsys, ann_id, cat, message):
    make_grefcoco_dataset(tmp_path, refs=GREFS[:2] + [(77, ann_id, cat, "val", ["bad ref"])])
    from refseg.data.check import main

    with pytest.raises(SystemExit) as e:
        run(main, ["--data-root", str(tmp_path), "--dataset", "grefcoco", "--split-by", "unc"], prog="check")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith("check: error: ") and "grefs(unc).json: ref_id 77" in err[0] and message in err[0]


def test_crowd_only_ref_is_a_data_error(tmp_path):
    make_grefcoco_dataset(tmp_path, refs=[(1, [204], 2, "val", ["the crowd"])])
    src = GReferSource(tmp_path, "grefcoco", "unc")
    with pytest.raises(DataError, match="ref_id 1: every referred annotation .* crowd"):
        src.load_mask(src.samples("val")[0])


def test_checker_counts_no_target_and_several_targets(tmp_path, capsys):
    from refseg.data.check import main

    make_grefcoco_dataset(tmp_path, "p")
    assert main(["--data-root", str(tmp_path), "--dataset", "grefcoco", "--split-by", "unc", "--full"]) == 0
    out = capsys.readouterr().out
    assert "grefs(unc).p" in out and "no-target" in out and "multi-target" in out and "OK" in out
    rows = {ln.split()[0]: [int(v) for v in ln.split()[1:6]] for ln in out.splitlines()
            if ln.split()[:1] and ln.split()[0] in GCOUNTS}
    for split, (n_refs, n_sents, n_none, n_multi) in GCOUNTS.items():
        assert rows[split][:2] == [n_refs, n_sents] and rows[split][3:] == [n_none, n_multi]
    # a referred annotation missing from instances.json is a problem (exit 1)
    inst = json.loads((tmp_path / "grefcoco" / "instances.json").read_text())
    inst["annotations"] = [a for a in inst["annotations"] if a["id"] != 203]
    (tmp_path / "grefcoco" / "instances.json").write_text(json.dumps(inst))
    assert main(["--data-root", str(tmp_path), "--dataset", "grefcoco", "--split-by", "unc"]) == 1
    assert "ann_id 203 not found" in capsys.readouterr().out


def test_torch_dataset_items(gtoy):
    from refseg.data.dataset import RefSegDataset
    from refseg.data.transforms import resize_mask

    class Tok:
        def __call__(self, texts, **kw):
            import torch

            n = kw.get("max_length", 8)
            return {"input_ids": torch.ones(len(texts), n, dtype=torch.long),
                    "attention_mask": torch.ones(len(texts), n, dtype=torch.long)}

    ev = RefSegDataset(gtoy, "val", Tok(), image_size=32, max_tokens=8)
    items = {ev.samples[i].ref_id: ev[i] for i in range(len(ev))}
    assert not items[5]["target"].any() and not items[5]["labels"].any()
    assert np.array_equal(items[6]["target"].numpy(), RLE_MASK | rect_mask(25, 25, 40, 40))
    tr = RefSegDataset(gtoy, "train", Tok(), image_size=32, max_tokens=8, train=True)
    by_ref = {tr.samples[g[0]].ref_id: k for k, g in enumerate(tr.groups)}
    assert not tr[(0, by_ref[3])]["labels"].any()  # no target: all background
    union = rect_mask(2, 2, 12, 12) | rect_mask(20, 5, 30, 20)  # two polygons rasterised at 32 px
    labels = tr[(0, by_ref[2])]["labels"].numpy().astype(bool)
    assert (labels == resize_mask(union, 32)).mean() > 0.97 and labels.any()


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_gres_by_hand():
    m = SegMetrics()
    m.add(0, 0, 0, pred_area=0, num_targets=0)    # no target, predicted empty: IoU 1, adds nothing to cIoU
    m.add(0, 5, 1, pred_area=5, num_targets=0)    # no target, predicted 5 pixels: IoU 0, U += 5
    m.add(8, 10, 2, pred_area=9, num_targets=1)   # IoU 0.8
    m.add(0, 6, 3, pred_area=0, num_targets=2)    # several targets predicted empty: IoU 0, U += 6
    r = m.compute()
    assert r["gIoU"] == pytest.approx(100 * 1.8 / 4) and r["cIoU"] == pytest.approx(100 * 8 / 21)
    assert r["N_acc"] == 50 and r["T_acc"] == 50 and r["Pr@0.8"] == 50 and r["Pr@0.9"] == 0
    assert (r["num_samples"], r["num_no_target"], r["num_multi_target"]) == (4, 2, 1)
    assert r["mIoU"] == r["gIoU"] and r["oIoU"] == r["cIoU"]
    assert r["by_targets"]["0"]["gIoU"] == 50 and r["by_targets"]["0"]["T_acc"] is None
    assert r["by_targets"]["1"]["gIoU"] == pytest.approx(80) and r["by_targets"]["2+"]["T_acc"] == 0
    table = format_gres_table({"val": r})
    assert "gIoU" in table and "N-acc" in table and f"{r['gIoU']:6.2f}" in table
    assert "2+ targets" in format_gres_breakdown(r) and "     -" in format_gres_breakdown(r)
    with pytest.raises(ValueError):
        m.add(0, 5, 9, pred_area=0, num_targets=0)  # an empty prediction cannot have a union of 5


def test_gres_equals_rela_on_random_masks_and_merges_exactly():
    rng = np.random.default_rng(0)
    samples, m, parts = [], SegMetrics(), [SegMetrics(), SegMetrics()]
    for i in range(300):
        k = int(rng.choice([0, 1, 2, 3], p=[0.25, 0.5, 0.15, 0.1]))
        gt = np.zeros((12, 16), bool)
        for _ in range(k):
            y, x = rng.integers(0, 10), rng.integers(0, 14)
            gt[y:y + rng.integers(1, 5), x:x + rng.integers(1, 6)] = True
        kind = rng.integers(0, 4)
        pred = (np.zeros_like(gt) if kind == 0 else gt.copy() if kind == 1 else
                rng.random(gt.shape) < 0.3 if kind == 2 else gt ^ (rng.random(gt.shape) < 0.05))
        samples.append((pred, gt, k == 0))
        m.update(pred, gt, i, num_targets=k)
        parts[i % 2].update(pred, gt, i, num_targets=k)
    ours, ref = m.compute(), rela_scores(samples)
    for key, v in ref.items():
        assert ours[key] == pytest.approx(v, abs=1e-9), key
    assert SegMetrics.merge([p.state() for p in parts[::-1]]).compute() == ours


def test_classic_data_table_unchanged_and_giou_is_miou():
    rng = np.random.default_rng(1)
    classic, gen = SegMetrics(), SegMetrics()
    for i in range(50):
        gt = rng.random((8, 8)) < 0.4
        gt[0, 0] = True
        pred = rng.random((8, 8)) < 0.4
        classic.update(pred, gt, i, expr_type="attribute")
        gen.update(pred, gt, i, expr_type="attribute", num_targets=1)
    c, g = classic.compute(), gen.compute()
    assert "gIoU" not in c and set(c) == {"P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "oIoU", "mIoU",
                                          "num_samples", "per_type"}
    assert g["gIoU"] == pytest.approx(c["mIoU"]) and g["cIoU"] == pytest.approx(c["oIoU"])
    assert g["T_acc"] is not None and g["N_acc"] is None


# ---------------------------------------------------------------------------------------------
# evaluate.py --predictions
# ---------------------------------------------------------------------------------------------


def _load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli_g", ROOT / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_predictions(folder: Path, gt: dict, seed: int) -> None:
    """One PNG per sent_id: empty, exact, noisy, shifted or random; grey, 0/255 or RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k, (sid, (mask, _, _)) in enumerate(sorted(gt.items())):
        kind = k % 5
        pred = (np.zeros_like(mask) if kind == 0 else mask.copy() if kind == 1 else
                mask ^ (rng.random(mask.shape) < 0.1) if kind == 2 else np.roll(mask, 3, axis=1) if kind == 3 else
                rng.random(mask.shape) < 0.2)
        if k % 3 == 0:
            Image.fromarray(pred.astype(np.uint8) * 255).save(folder / f"{sid}.png")
        elif k % 3 == 1:
            Image.fromarray(pred.astype(np.uint8)).save(folder / f"{sid}.png")  # 0/1 grey
        else:
            rgb = np.zeros(mask.shape + (3,), np.uint8)
            rgb[pred, 1] = 200  # green object on black
            Image.fromarray(rgb).save(folder / f"{sid}.png")


@pytest.mark.parametrize("layout", ["grefcoco-json", "grefcoco-p", "refcoco"])
def test_predictions_equal_an_independent_computation(tmp_path, capsys, layout):
    root = tmp_path / "data"
    if layout == "refcoco":
        make_refer_dataset(root, name="refcoco", fmt="p")
        dataset, refs_file = "refcoco", "refs(unc).p"
    else:
        make_grefcoco_dataset(root, layout.split("-")[1])
        dataset, refs_file = "grefcoco", f"grefs(unc).{'json' if layout.endswith('json') else 'p'}"
    gt = independent_gt(root, dataset, refs_file)
    preds = tmp_path / "preds"
    _write_predictions(preds, gt, seed=3)
    cli = _load_cli()
    src = open_source(type("D", (), {"name": dataset, "root": str(root), "split_by": "unc"})())
    for split in ("val", "testB"):
        out = tmp_path / f"{split}.json"
        assert cli.main(["--predictions", str(preds), "--data-root", str(root), "--dataset", dataset,
                         "--split-by", "unc", "--split", split, "--out", str(out), "--no-progress"]) == 0
        printed = capsys.readouterr().out
        got = json.loads(out.read_text())
        sids = [s.sent_id for s in src.samples(split)]
        pairs = [(read_png_independently(preds / f"{sid}.png"), gt[sid][0], gt[sid][1]) for sid in sids]
        if layout == "refcoco":  # LAVT's oIoU / mIoU
            I = np.array([np.logical_and(p, g).sum() for p, g, _ in pairs], float)
            U = np.array([np.logical_or(p, g).sum() for p, g, _ in pairs], float)
            assert got["oIoU"] == pytest.approx(100 * I.sum() / U.sum())
            assert got["mIoU"] == pytest.approx(100 * np.mean(I / U)) and "gIoU" not in got
            assert "oIoU" in printed and "gIoU" not in printed
            continue
        ref = rela_scores(pairs)
        for key, v in ref.items():
            assert got[key] == (None if v is None else pytest.approx(v)), (split, key)
        assert got["num_samples"] == len(sids)
        assert got["num_no_target"] == sum(gt[s][1] for s in sids)
        assert got["num_multi_target"] == sum(gt[s][2] >= 2 for s in sids)
        assert "N-acc" in printed and "by number of targets" in printed
        assert ("2+ targets" in printed) == (got["num_multi_target"] > 0)
    # a missing PNG is an error naming it
    (preds / f"{sids[0]}.png").unlink()
    with pytest.raises(SystemExit) as e:
        run(cli.main, ["--predictions", str(preds), "--data-root", str(root), "--dataset", dataset,
                       "--split", "testB", "--no-progress"], prog="evaluate.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and f"{sids[0]}.png" in err[0] and "missing" in err[0]


def test_predictions_bad_input(tmp_path, capsys):
    root = make_grefcoco_dataset(tmp_path / "data")
    preds = tmp_path / "preds"
    preds.mkdir()
    cli = _load_cli()

    def fails(*argv):
        with pytest.raises(SystemExit) as e:
            run(cli.main, list(map(str, argv)), prog="evaluate.py")
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1
        return err[0]

    assert "either --checkpoint" in fails("--split", "val")
    assert "needs --dataset" in fails("--predictions", preds, "--split", "val")
    assert "needs --checkpoint" in fails("--predictions", preds, "--dataset", "grefcoco", "--data-root", root,
                                         "--split", "val", "--shuffle-text")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(preds / "0.png")
    assert "0.png: mask is 5x5" in fails("--predictions", preds, "--dataset", "grefcoco", "--data-root", root,
                                         "--split", "train", "--no-progress")


# ---------------------------------------------------------------------------------------------
# evaluate() with a model on a generalized dataset
# ---------------------------------------------------------------------------------------------


def _empty_on_cue(tok):
    """A model: every pixel is the object, unless the expression says "dog" or "both" (an empty mask)."""
    import torch
    from torch import nn

    from refseg.models.refseg_model import RefSegOutput

    quiet = [tok.convert_tokens_to_ids(w) for w in ("dog", "both")]

    class EmptyOnCue(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, pixel_values, input_ids, attention_mask):
            B, _, h, w = pixel_values.shape
            cue = torch.zeros(B, dtype=torch.bool)
            for t in quiet:
                cue |= (input_ids == t).any(1)
            out = torch.zeros(B, 2, h, w)
            out[:, 1] = torch.where(cue, -1.0, 1.0).view(B, 1, 1)
            return RefSegOutput(logits=out + self.p)

    return EmptyOnCue()


def test_engine_evaluate_scores_generalized_data(gtoy, tmp_path):
    from refseg.data.dataset import RefSegDataset
    from refseg.engine.evaluate import evaluate
    from refseg.models.text import load_tokenizer

    tok = load_tokenizer("bundled-minilm")
    ds = RefSegDataset(gtoy, "val", tok, 32, 12, train=False)
    r = evaluate(_empty_on_cue(tok), ds, batch_size=2, progress=False)
    gt = independent_gt(tmp_path, "grefcoco", "grefs(unc).json")
    pairs = []
    for s in ds.samples:
        empty = "dog" in s.sentence or "both" in s.sentence
        pairs.append((np.full((H, W), not empty), gt[s.sent_id][0], gt[s.sent_id][1]))
    ref = rela_scores(pairs)
    assert ref["N_acc"] == 100 and ref["T_acc"] == 75  # the cues hit what the test means them to
    for key, v in ref.items():
        assert r[key] == pytest.approx(v), key
    assert (r["num_no_target"], r["num_multi_target"]) == (1, 4)


def test_cli_checkpoint_on_generalized_data_equals_its_masks_as_predictions(tmp_path, monkeypatch, capsys):
    import yaml
    from accelerate.state import AcceleratorState

    from refseg.models.text import load_tokenizer

    root = make_grefcoco_dataset(tmp_path / "data")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text(yaml.safe_dump({
        "data": {"name": "grefcoco", "root": str(root), "split_by": "unc", "num_workers": 0},
        "model": {"image_size": 32, "text": {"max_tokens": 12}}, "eval": {"batch_size": 4}}))
    tok = load_tokenizer("bundled-minilm")
    cli = _load_cli()
    from types import SimpleNamespace

    from refseg.config import load_run_config
    from refseg.processing import RefSegProcessor

    def fake_checkpoint(path):  # what evaluate.py's loader returns, around a fixed-logit model
        cfg = load_run_config(path / "config.yaml")
        return SimpleNamespace(model=_empty_on_cue(tok), processor=RefSegProcessor.from_config(cfg.model, tok),
                               run_config=cfg)

    monkeypatch.setattr(cli, "_load_model", fake_checkpoint)
    try:
        out = tmp_path / "ckpt.json"
        assert cli.main(["--checkpoint", str(ckpt), "--split", "val", "--out", str(out), "--no-progress"]) == 0
    finally:
        AcceleratorState._reset_state(True)
    got = json.loads(out.read_text())
    assert {"gIoU", "cIoU", "N_acc", "T_acc", "num_samples", "num_no_target", "num_multi_target"} <= set(got)
    assert "by number of targets (val)" in capsys.readouterr().out
    # the same masks written as PNGs score the same through --predictions
    preds = tmp_path / "preds"
    preds.mkdir()
    src = GReferSource(root, "grefcoco", "unc")
    for s in src.samples("val"):
        empty = "dog" in s.sentence or "both" in s.sentence
        Image.fromarray(np.full((H, W), 0 if empty else 255, np.uint8)).save(preds / f"{s.sent_id}.png")
    out2 = tmp_path / "preds.json"
    assert cli.main(["--predictions", str(preds), "--dataset", "grefcoco", "--data-root", str(root), "--split", "val",
                     "--out", str(out2), "--no-progress"]) == 0
    again = json.loads(out2.read_text())
    assert got["T_acc"] == 75 and got["N_acc"] == 100  # the cues did what the test means them to
    for k in ("gIoU", "cIoU", "N_acc", "T_acc", "Pr@0.7", "Pr@0.8", "Pr@0.9", "num_samples", "num_no_target",
              "num_multi_target"):
        assert again[k] == pytest.approx(got[k]), k
    for g in got["by_targets"]:
        assert again["by_targets"][g]["gIoU"] == pytest.approx(got["by_targets"][g]["gIoU"])
