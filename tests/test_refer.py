"""The refer layout: restricted unpickling, samples per split, pixel-exact masks, clear data errors.

``make_refer_dataset`` (also used by test_evaluate / test_hf) writes a tiny dataset exactly like the
RefCOCO files: a protocol-2 refs pickle as Python 2 wrote it (py2 ``str`` keys and UTF-8 text),
COCO instances.json with single-part, multi-part and overlapping polygons, a crowd annotation with
uncompressed RLE and one with compressed RLE, several sentences per ref and all four UNC splits.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from refseg.data.io import decode_segmentation
from refseg.data.sources.refer import ReferSource, py2_text, safe_load_pickle
from refseg.data.types import Sample
from refseg.errors import DataError, UnsafePickleError

sys.path.insert(0, str(Path(__file__).parent))
from conftest import require_realref  # noqa: E402

H, W = 48, 64


# ---------------------------------------------------------------------------------------------
# Fixture writers
# ---------------------------------------------------------------------------------------------


class U(str):
    """Marks a string that Python 2 held as ``unicode`` (pickled as BINUNICODE)."""


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us emit Python 2 opcodes
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):  # py2 ``str``: raw bytes (UTF-8 here), SHORT_BINSTRING / BINSTRING
        data = obj.encode("utf-8")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_unicode(self, obj):
        pickle._Pickler.save_str(self, str(obj))

    dispatch[str] = save_py2_str
    dispatch[U] = save_unicode


def write_py2_pickle(obj, path: Path) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def rect(x0, y0, x1, y1):
    """Polygon of the pixel rectangle [x0, x1) x [y0, y1) (pycocotools' convention)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rect_mask(x0, y0, x1, y1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO crowd RLE: column-major run lengths starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


CROWD_MASK = rect_mask(3, 5, 13, 15) | rect_mask(50, 30, 60, 44)
COMPRESSED_MASK = rect_mask(20, 10, 44, 40)

# ann_id -> (image_id, segmentation, expected mask)
ANNS = {
    101: (1, [rect(8, 8, 24, 20)], rect_mask(8, 8, 24, 20)),
    102: (1, [rect(30, 5, 40, 15), rect(45, 30, 55, 40)], rect_mask(30, 5, 40, 15) | rect_mask(45, 30, 55, 40)),
    103: (2, [rect(10, 10, 30, 30), rect(20, 20, 40, 40)], rect_mask(10, 10, 30, 30) | rect_mask(20, 20, 40, 40)),
    104: (3, uncompressed_rle(CROWD_MASK), CROWD_MASK),
    105: (4, "compressed", COMPRESSED_MASK),
}

# ref_id, ann_id, split, sentences (text, type)
REFS = [
    (1, 101, "train", [("the small box", None), ("box near the top left", None), ("the café table", None)]),
    (2, 102, "train", [("two pieces", None), ("the split object", None)]),
    (3, 103, "val", [("overlapping squares", None), ("the big blob", None)]),
    (4, 104, "testA", [("the crowd", None)]),
    (5, 105, "testB", [("large square", "attribute"), ("square in the middle", "position")]),
    (6, 102, "testA", [("the split object again", "relation")]),
]
EXPECTED_COUNTS = {"train": (2, 5), "val": (1, 2), "testA": (2, 2), "testB": (1, 2)}


def image_array(image_id: int) -> np.ndarray:
    rng = np.random.default_rng(image_id)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def make_refer_dataset(root: Path, name: str = "toy", split_by: str = "unc", fmt: str = "p",
                       refs=None, anns=None, image_dir: Path | None = None) -> Path:
    """Write ``root/name/refs(split_by).{p,json}``, ``instances.json`` and PNG images; returns root."""
    from pycocotools import mask as mask_utils

    refs = REFS if refs is None else refs
    anns = ANNS if anns is None else anns
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    img_dir = image_dir or (root / "images" / "train2014")
    img_dir.mkdir(parents=True, exist_ok=True)
    image_ids = sorted({a[0] for a in anns.values()})
    images = []
    for iid in image_ids:
        fn = f"COCO_train2014_{iid:012d}.png"
        cv2.imwrite(str(img_dir / fn), cv2.cvtColor(image_array(iid), cv2.COLOR_RGB2BGR))
        images.append({"id": iid, "file_name": fn, "height": H, "width": W})
    annotations = []
    for aid, (iid, segm, expected) in anns.items():
        if isinstance(segm, str) and segm == "compressed":
            rle = mask_utils.encode(np.asfortranarray(expected.astype(np.uint8)))
            segm = {"counts": rle["counts"].decode("ascii"), "size": list(rle["size"])}
        crowd = int(isinstance(segm, dict))
        annotations.append({"id": aid, "image_id": iid, "category_id": 1, "iscrowd": crowd,
                            "segmentation": segm, "area": float(expected.sum()) if expected is not None else 0.0, "bbox": [0, 0, 1, 1]})
    (folder / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}))
    ref_list, sid = [], 0
    for ref_id, ann_id, split, sents in refs:
        iid = anns[ann_id][0] if ann_id in anns else 1
        sentences, sent_ids = [], []
        for text, etype in sents:
            s = {"raw": text, "sent": text.lower(), "sent_id": sid, "tokens": text.lower().split()}
            if etype is not None:
                s["type"] = etype
            sentences.append(s)
            sent_ids.append(sid)
            sid += 1
        ref_list.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": iid, "category_id": 1,
                         "split": split, "sentences": sentences, "sent_ids": sent_ids,
                         # like RefCOCO: a crop name that does not exist on disk
                         "file_name": f"COCO_train2014_{iid:012d}_{ann_id}.jpg"})
    if fmt == "json":
        (folder / f"refs({split_by}).json").write_text(json.dumps(ref_list))
    else:
        write_py2_pickle(ref_list, folder / f"refs({split_by}).p")
    return root


@pytest.fixture
def toy(tmp_path):
    make_refer_dataset(tmp_path)
    return ReferSource(tmp_path, "toy", "unc")


# ---------------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------------


def test_py2_pickle_uses_python2_opcodes(tmp_path):
    import pickletools

    write_py2_pickle([{"raw": "café", "u": U("ok")}], tmp_path / "x.p")
    ops = {op.name for op, _, _ in pickletools.genops((tmp_path / "x.p").read_bytes())}
    assert {"PROTO", "SHORT_BINSTRING", "BINUNICODE"} <= ops


def test_safe_load_pickle_reads_plain_data(tmp_path):
    data = {"a": [1, 2.5, None, True], "t": (1, "x"), "s": {1, 2}, "f": frozenset({3}), "b": b"\x00\xff",
            "big": 2 ** 70, "nested": {"k": [{"z": -1}]}}
    for proto in (0, 2, 4, 5):
        p = tmp_path / f"ok{proto}.p"
        p.write_bytes(pickle.dumps(data, protocol=proto))
        assert safe_load_pickle(p) == data


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("proto", [0, 2, 4])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, proto):
    marker = tmp_path / "pwned"
    folder = tmp_path / "bad"
    folder.mkdir()
    p = folder / "refs(unc).p"
    payload = [{"ref_id": 1, "ann_id": 1, "image_id": 1, "split": "train",
                "sentences": [{"raw": _Evil(marker)}]}]
    p.write_bytes(pickle.dumps(payload, protocol=proto))
    with pytest.raises(UnsafePickleError) as e:
        safe_load_pickle(p)
    msg = str(e.value)
    assert str(p) in msg and "system" in msg and "\n" not in msg
    assert not marker.exists()
    # through the source too: a DataError (the CLI exits 2 with this line)
    (folder / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="refused"):
        ReferSource(tmp_path, "bad", "unc")
    assert not marker.exists()


def test_other_globals_refused(tmp_path):
    p = tmp_path / "g.p"
    p.write_bytes(pickle.dumps([np.float64(1.0)], protocol=2))  # numpy scalars need a global
    with pytest.raises(UnsafePickleError, match="numpy"):
        safe_load_pickle(p)
    p.write_bytes(b"garbage, not a pickle")
    with pytest.raises(DataError, match="not a readable refs pickle"):
        safe_load_pickle(p)


def test_py2_text_repairs_utf8_read_as_latin1():
    assert py2_text("cafÃ©") == "café"
    assert py2_text("café") == "café"  # real latin1 text stays (not valid UTF-8 after re-encoding)
    assert py2_text(b"caf\xc3\xa9") == "café"
    assert py2_text("plain") == "plain"


# ---------------------------------------------------------------------------------------------
# ReferSource
# ---------------------------------------------------------------------------------------------


def test_splits_and_counts(toy):
    assert toy.splits() == ["train", "val", "testA", "testB"]
    for split, (n_refs, n_sents) in EXPECTED_COUNTS.items():
        assert len(toy.refs(split)) == n_refs
        assert len(toy.samples(split)) == n_sents
        assert all(isinstance(s, Sample) and s.split == split for s in toy.samples(split))


def test_samples_in_file_order_with_fields(toy):
    ref = toy.refs("testB")[0]
    assert (ref.ref_id, ref.ann_id, ref.image_id, ref.category_id, ref.split) == (5, 105, 4, 1, "testB")
    assert [tuple(s) for s in ref.sentences] == [(8, "large square", "attribute"), (9, "square in the middle", "position")]
    train = toy.samples("train")
    assert [(s.ref_id, s.sent_id) for s in train] == [(1, 0), (1, 1), (1, 2), (2, 3), (2, 4)]
    s = train[0]
    assert (s.sentence, s.image_id, s.ann_id, s.height, s.width, s.category_id) == \
        ("the small box", 1, 101, H, W, 1)
    assert train[2].sentence == "the café table"  # py2 UTF-8 str repaired
    # image path from instances.json by image id, not the ref's crop file_name
    assert s.image_path.endswith("images/train2014/COCO_train2014_000000000001.png")
    types = [x.expr_type for x in toy.samples("testB")]
    assert types == ["attribute", "position"]
    assert toy.samples("train")[0].expr_type is None


@pytest.mark.parametrize("ref_id", [1, 2, 3, 4, 5])
def test_masks_pixel_exact(toy, ref_id):
    ann_id = next(a for r, a, _, _ in REFS if r == ref_id)
    split = next(sp for r, _, sp, _ in REFS if r == ref_id)
    sample = next(s for s in toy.samples(split) if s.ref_id == ref_id)
    m = toy.load_mask(sample)
    assert m.dtype == bool and m.shape == (H, W)
    np.testing.assert_array_equal(m, ANNS[ann_id][2])


def test_overlapping_parts_are_a_union_not_a_sum(toy):
    s = toy.samples("val")[0]
    m = toy.load_mask(s)
    assert m.sum() == 700  # 400 + 400 - 100 overlap; LAVT's sum==1 rule would give 600
    assert m[25, 25]  # inside the overlap


def test_load_image_rgb(toy):
    s = toy.samples("val")[0]
    img = toy.load_image(s)
    assert img.dtype == np.uint8 and img.shape == (H, W, 3)
    np.testing.assert_array_equal(img, image_array(2))  # RGB order, exact (PNG)


def test_json_refs_equal_pickle_refs(tmp_path):
    make_refer_dataset(tmp_path / "a", fmt="p")
    make_refer_dataset(tmp_path / "b", fmt="json")
    pa, pb = ReferSource(tmp_path / "a", "toy", "unc"), ReferSource(tmp_path / "b", "toy", "unc")
    for split in EXPECTED_COUNTS:
        sa, sb = pa.samples(split), pb.samples(split)
        assert [(s.ref_id, s.sent_id, s.sentence, s.expr_type) for s in sa] == \
               [(s.ref_id, s.sent_id, s.sentence, s.expr_type) for s in sb]


def test_dataset_images_folder_preferred(tmp_path):
    make_refer_dataset(tmp_path, image_dir=tmp_path / "toy" / "images")
    src = ReferSource(tmp_path, "toy", "unc")
    assert src.image_dir == tmp_path / "toy" / "images"
    assert src.load_image(src.samples("train")[0]).shape == (H, W, 3)


# ---------------------------------------------------------------------------------------------
# Errors name the file and the item
# ---------------------------------------------------------------------------------------------


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        ReferSource(tmp_path, "nothing", "unc")
    make_refer_dataset(tmp_path)
    with pytest.raises(DataError, match=r"refs\(google\).p: refs file not found; found refs\(unc\).p"):
        ReferSource(tmp_path, "toy", "google")
    (tmp_path / "toy" / "instances.json").unlink()
    with pytest.raises(DataError, match="instances.json not found"):
        ReferSource(tmp_path, "toy", "unc")


def test_unknown_split_lists_valid(toy):
    with pytest.raises(DataError, match="valid splits are train, val, testA, testB"):
        toy.samples("test")


def test_bad_annotations(tmp_path):
    anns = dict(ANNS)
    anns[106] = (1, [], rect_mask(0, 0, 1, 1))          # empty polygon list
    anns[107] = (1, [rect(100, 100, 110, 110)], None)    # entirely outside the image -> empty mask
    anns[108] = (1, [[1, 2, 3, 4, 5]], None)             # odd number of coordinates
    refs = REFS + [(7, 106, "val", [("e", None)]), (8, 107, "val", [("o", None)]),
                   (9, 108, "val", [("x", None)]), (10, 999, "val", [("m", None)])]
    make_refer_dataset(tmp_path, refs=refs, anns=anns)
    src = ReferSource(tmp_path, "toy", "unc")
    by_ref = {s.ref_id: s for s in src.samples("val")}
    with pytest.raises(DataError, match=r"instances.json: ref_id 7, ann_id 106: empty polygon"):
        src.load_mask(by_ref[7])
    with pytest.raises(DataError, match=r"ref_id 8, ann_id 107: the object mask is empty"):
        src.load_mask(by_ref[8])
    with pytest.raises(DataError, match=r"ann_id 108: polygon with an odd number"):
        src.load_mask(by_ref[9])
    with pytest.raises(DataError, match=r"ref_id 10, ann_id 999: annotation not found"):
        src.load_mask(by_ref[10])


def test_rle_size_mismatch_and_flat_polygon():
    with pytest.raises(DataError, match="RLE size 10x10 does not match the image 48x64"):
        decode_segmentation({"counts": [100], "size": [10, 10]}, H, W, "here")
    np.testing.assert_array_equal(decode_segmentation(rect(1, 2, 5, 6), H, W, "flat"), rect_mask(1, 2, 5, 6))
    # a 4-number part would be read as a box by pycocotools; it is skipped, the real part stays
    m = decode_segmentation([[1, 1, 2, 2], rect(1, 2, 5, 6)], H, W, "x")
    np.testing.assert_array_equal(m, rect_mask(1, 2, 5, 6))


def test_missing_and_corrupt_images(toy):
    s = toy.samples("val")[0]
    Path(s.image_path).write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"COCO_train2014_000000000002.png: image file unreadable.*ref_id 3"):
        toy.load_image(s)
    Path(s.image_path).unlink()
    with pytest.raises(DataError, match=r"COCO_train2014_000000000002.png: image file missing"):
        toy.load_image(s)


def test_worker_error_message_is_recovered(toy):
    """A DataError from a DataLoader worker keeps its one-line message (not 'Caught DataError ...')."""
    from refseg.data.dataset import RefSegDataset, collate

    class Tok:  # tiny stand-in tokenizer; loading a real one is not what this test is about
        def __call__(self, texts, **kw):
            n = kw["max_length"]
            return {"input_ids": torch.ones(len(texts), n, dtype=torch.long),
                    "attention_mask": torch.ones(len(texts), n, dtype=torch.long)}

    ds = RefSegDataset(toy, "val", Tok(), 32, 8, train=False)
    Path(ds.samples[0].image_path).unlink()
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    first = str(e.value).splitlines()[0]
    assert first.endswith("image file missing (ref_id 3, image_id 2)")
    assert "COCO_train2014_000000000002.png" in first
    assert e.value.worker_traceback and "Caught DataError" in e.value.worker_traceback


# ---------------------------------------------------------------------------------------------
# RefSegDataset / collate / open_source
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from refseg.models.text import load_tokenizer

    return load_tokenizer("bundled-minilm")


def test_eval_dataset_items(toy, tokenizer):
    from refseg.data.dataset import RefSegDataset, collate

    ds = RefSegDataset(toy, "train", tokenizer, image_size=32, max_tokens=12, train=False)
    assert len(ds) == 5
    item = ds[3]
    assert item["pixel_values"].shape == (3, 32, 32) and item["pixel_values"].dtype == torch.uint8
    assert item["input_ids"].shape == (12,) and item["attention_mask"].shape == (12,)
    assert item["labels"].shape == (32, 32) and item["labels"].dtype == torch.uint8
    assert item["index"] == 3
    np.testing.assert_array_equal(item["target"].numpy(), ANNS[102][2])
    assert set(item["labels"].unique().tolist()) == {0, 1}
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["index"].tolist() == [0, 1, 2]
    assert isinstance(batch["target"], list) and batch["target"][0].shape == (H, W)
    # text cut to the batch's longest expression: no all-padding columns, nothing real dropped
    longest = max(int(ds[i]["attention_mask"].sum()) for i in range(3))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, longest) < (3, 12)
    for i in range(3):
        np.testing.assert_array_equal(batch["input_ids"][i].numpy(), ds[i]["input_ids"][:longest].numpy())


def test_train_dataset_one_item_per_ref_random_sentence(toy, tokenizer):
    from refseg.data.dataset import RefSegDataset

    ds = RefSegDataset(toy, "train", tokenizer, image_size=32, max_tokens=12, train=True, seed=3)
    assert len(ds) == 2 and "target" not in ds[0]
    texts = {tokenizer.decode(tokenizer("the small box")["input_ids"], skip_special_tokens=True),
             tokenizer.decode(tokenizer("box near the top left")["input_ids"], skip_special_tokens=True),
             tokenizer.decode(tokenizer("the café table")["input_ids"], skip_special_tokens=True)}

    def drawn(seed_epoch=None):
        out = []
        for e in range(12):
            ds.set_epoch(e)
            ids = ds[0]["input_ids"]
            out.append(tokenizer.decode(ids[ids != tokenizer.pad_token_id], skip_special_tokens=True))
        return out

    a, b = drawn(), drawn()
    assert a == b  # a function of (seed, epoch, index)
    assert set(a) <= texts and len(set(a)) > 1  # different sentences across epochs
    # without set_epoch the torch RNG decides: same torch seed -> same draws
    ds2 = RefSegDataset(toy, "train", tokenizer, image_size=32, max_tokens=12, train=True)
    torch.manual_seed(0)
    x = [ds2[0]["input_ids"].tolist() for _ in range(8)]
    torch.manual_seed(0)
    y = [ds2[0]["input_ids"].tolist() for _ in range(8)]
    assert x == y


def test_augment_is_photometric_only(toy, tokenizer):
    from refseg.data.dataset import RefSegDataset

    plain = RefSegDataset(toy, "val", tokenizer, 32, 12, train=True)
    aug = RefSegDataset(toy, "val", tokenizer, 32, 12, train=True, augment=True)
    aug.set_epoch(0)
    a, p = aug[0], plain[0]
    assert torch.equal(a["labels"], p["labels"])  # geometry untouched
    assert not torch.equal(a["pixel_values"], p["pixel_values"])


def test_max_samples(toy, tokenizer):
    from refseg.data.dataset import RefSegDataset

    assert len(RefSegDataset(toy, "train", tokenizer, 32, 8, train=False, max_samples=4)) == 4
    tr = RefSegDataset(toy, "train", tokenizer, 32, 8, train=True, max_samples=1)
    assert len(tr) == 1 and len(tr.samples) == 3


def test_open_source(tmp_path):
    from types import SimpleNamespace

    from refseg.data import open_source

    make_refer_dataset(tmp_path)
    src = open_source(SimpleNamespace(name="toy", root=str(tmp_path), split_by="unc"))
    assert isinstance(src, ReferSource) and src.splits() == ["train", "val", "testA", "testB"]
    with pytest.raises(DataError, match="data root not found"):
        open_source(SimpleNamespace(name="toy", root=str(tmp_path / "nope"), split_by="unc"))
    with pytest.raises(DataError, match="dataset folder not found"):
        open_source(SimpleNamespace(name="refcoco", root=str(tmp_path), split_by="unc"))


# ---------------------------------------------------------------------------------------------
# The real photos and the shipped configs
# ---------------------------------------------------------------------------------------------


def test_realref_loads():
    src = ReferSource(require_realref(), "realref", "realref")
    assert src.splits() == ["test"]
    assert len(src.refs("test")) == 16
    samples = src.samples("test")
    assert len(samples) == 17
    for s in samples:
        img, m = src.load_image(s), src.load_mask(s)
        assert img.shape == (s.height, s.width, 3) and m.shape == (s.height, s.width)
        assert 0 < m.sum() < m.size


def test_check_cli_on_toy(tmp_path, capsys):
    from refseg.data.check import main

    make_refer_dataset(tmp_path)
    assert main(["--data-root", str(tmp_path), "--dataset", "toy", "--split-by", "unc", "--full"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out
    lines = {ln.split()[0]: ln.split()[1:4] for ln in out.splitlines() if ln.split()[:1] in
             (["train"], ["val"], ["testA"], ["testB"])}
    assert lines["train"] == ["2", "5", "1"] and lines["testA"] == ["2", "2", "2"]
    # a broken annotation is reported and the exit code is 1
    inst = json.loads((tmp_path / "toy" / "instances.json").read_text())
    inst["annotations"] = [a for a in inst["annotations"] if a["id"] != 103]
    (tmp_path / "toy" / "instances.json").write_text(json.dumps(inst))
    assert main(["--data-root", str(tmp_path), "--dataset", "toy", "--split-by", "unc"]) == 1
    assert "ann_id 103 not found" in capsys.readouterr().out


def test_check_expected_refcoco_counts(tmp_path, capsys):
    from refseg.data.check import main

    make_refer_dataset(tmp_path, name="refcoco")
    assert main(["--data-root", str(tmp_path), "--dataset", "refcoco"]) == 1  # toy sizes differ
    out = capsys.readouterr().out
    assert "42404" in out and "DIFFERENT" in out


@pytest.mark.parametrize("name,split_by", [("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")])
def test_lavt_configs(name, split_by):
    from refseg.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / f"{name}.yaml")
    assert (cfg.data.name, cfg.data.split_by, cfg.model.image_size) == (name, split_by, 480)
    assert cfg.train.batch_size == 8 and cfg.train.max_epochs == 40 and cfg.train.lr == 5e-5
    assert cfg.train.weight_decay == 1e-2 and cfg.train.poly_power == 0.9 and cfg.train.warmup_steps == 0
    assert cfg.model.vision.name == "xcit_small_12_p16"
    assert cfg.model.vision.pretrained == "xcit_small_12_p16_384.fb_dist_in1k"
    assert cfg.model.text.name == "bert-base-uncased" and cfg.model.text.trainable_layers == list(range(10))
    assert cfg.model.loss.dice_weight == 0 and cfg.model.loss.class_weights == [0.9, 1.1]


@pytest.mark.parametrize("ci", ["true", "1", "", "false"])
def test_missing_realref_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch, ci):
    """The realref tests never skip silently in CI: there ../shared is checked out beside the clone."""
    import conftest

    monkeypatch.setattr(conftest, "REALREF", tmp_path / "nowhere")
    monkeypatch.setenv("CI", ci)
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception),
                       match=f"realref photos not found at {tmp_path / 'nowhere'}: ") as e:
        conftest.require_realref()
    assert e.type is (pytest.fail.Exception if ci in ("true", "1") else pytest.skip.Exception)
    monkeypatch.setattr(conftest, "REALREF", tmp_path)
    assert conftest.require_realref() == tmp_path
