"""Hugging Face exports read from local parquet / arrow / save_to_disk folders, in the public shapes."""
from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from refseg.data.sources.hf import SCHEMAS, HFSource, is_hf_export
from refseg.data.types import Ref, Sentence
from refseg.errors import DataError
from test_refer import rect, rect_mask  # noqa: E402  (tests/ is on sys.path)

datasets = pytest.importorskip("datasets")
from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value  # noqa: E402

H, W = 40, 56


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def picture(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def box(x0, y0, x1, y1):
    """Mask of the pixel rectangle [x0, x1) x [y0, y1) at this file's image size."""
    return rect_mask(x0, y0, x1, y1, h=H, w=W)


# ---------------------------------------------------------------------------------------------
# lmms-lab/RefCOCO: one row per object, embedded image, answer = expressions, flat polygon
# ---------------------------------------------------------------------------------------------

LMMS_FEATURES = Features({
    "question_id": Value("string"), "image": Image(), "question": Value("string"),
    "answer": Sequence(Value("string")), "segmentation": Sequence(Value("float32")),
    "bbox": Sequence(Value("float32")), "iscrowd": Value("int8"), "file_name": Value("string")})


def lmms_rows(n, seed):
    rows = {k: [] for k in LMMS_FEATURES}
    for i in range(n):
        rows["question_id"].append(str(1000 + seed * 10 + i))
        rows["image"].append({"bytes": png(picture(seed * 10 + i)), "path": None})
        rows["question"].append("Please carefully observe the area circled in the image and describe it.")
        rows["answer"].append([f"object {i} left", f"thing number {i}"])
        rows["segmentation"].append(rect(2 + i, 3, 20 + i, 30))
        rows["bbox"].append([2 + i, 3, 18, 27])
        rows["iscrowd"].append(0)
        rows["file_name"].append(f"COCO_train2014_{seed * 10 + i:012d}.jpg")
    return rows


@pytest.fixture
def lmms_dir(tmp_path):
    d = tmp_path / "RefCOCO" / "data"
    d.mkdir(parents=True)
    Dataset.from_dict(lmms_rows(3, 1), features=LMMS_FEATURES).to_parquet(str(d / "val-00000-of-00001.parquet"))
    Dataset.from_dict(lmms_rows(2, 2), features=LMMS_FEATURES).to_parquet(str(d / "testA-00000-of-00001.parquet"))
    return tmp_path / "RefCOCO"


def test_lmms_layout(lmms_dir):
    assert is_hf_export(lmms_dir)
    src = HFSource(lmms_dir)
    assert src.format == "lmms"
    assert src.splits() == ["val", "testA"]
    val = src.samples("val")
    assert len(val) == 6 and len(src.refs("val")) == 3 and len(src.samples("testA")) == 4
    s = val[2]
    assert (s.ref_id, s.sentence, s.height, s.width, s.ann_id, s.image_id) == (1, "object 1 left", H, W, 1011, 11)
    ref = src.refs("val")[1]  # typed: ids numbered, sentence ids running over the split
    assert isinstance(ref, Ref) and (ref.ref_id, ref.ann_id, ref.image_id, ref.split) == (1, 1011, 11, "val")
    assert ref.sentences == (Sentence(2, "object 1 left"), Sentence(3, "thing number 1"))
    np.testing.assert_array_equal(src.load_image(s), picture(11))
    np.testing.assert_array_equal(src.load_mask(s), box(3, 3, 21, 30))
    # a single file works too, and its split comes from the name
    one = HFSource(lmms_dir / "data" / "testA-00000-of-00001.parquet")
    assert one.splits() == ["testA"] and len(one.samples("testA")) == 4


def test_open_source_and_dataset_over_hf(lmms_dir, tmp_path):
    import torch

    from refseg.data import RefSegDataset, open_source

    src = open_source(SimpleNamespace(name=str(lmms_dir), root=str(tmp_path / "no_root"), split_by="unc"))
    assert isinstance(src, HFSource)

    class Tok:
        def __call__(self, texts, **kw):
            n = kw["max_length"]
            return {"input_ids": torch.ones(len(texts), n, dtype=torch.long),
                    "attention_mask": torch.ones(len(texts), n, dtype=torch.long)}

    ds = RefSegDataset(src, "val", Tok(), 16, 6, train=False)
    item = ds[0]
    assert item["pixel_values"].shape == (3, 16, 16) and item["target"].shape == (H, W)


# ---------------------------------------------------------------------------------------------
# jxu124/refcoco-benchmark: one row per image, ref_list of {ann_info, ref_info}
# ---------------------------------------------------------------------------------------------

BENCH_FEATURES = Features({
    "ref_list": [{
        "ann_info": {"area": Value("float64"), "bbox": Sequence(Value("float64")),
                     "category_id": Value("int64"), "id": Value("int64"), "image_id": Value("int64"),
                     "iscrowd": Value("int64"), "segmentation": Sequence(Sequence(Value("float64")))},
        "ref_info": {"ann_id": Value("int64"), "category_id": Value("int64"), "file_name": Value("string"),
                     "image_id": Value("int64"), "ref_id": Value("int64"), "sent_ids": Sequence(Value("int64")),
                     "sentences": [{"raw": Value("string"), "sent": Value("string"), "sent_id": Value("int64"),
                                    "tokens": Sequence(Value("string"))}],
                     "split": Value("string")}}],
    "image_info": {"coco_url": Value("string"), "date_captured": Value("string"), "file_name": Value("string"),
                   "flickr_url": Value("string"), "height": Value("int64"), "id": Value("int64"),
                   "license": Value("int64"), "width": Value("int64")},
    "image": Image(),
})


def bench_rows(with_image=True):
    rows = {"ref_list": [], "image_info": [], "image": []}
    for img_id in (7, 8):
        refs = []
        for k in range(2):
            ann_id, ref_id = img_id * 100 + k, img_id * 10 + k
            segm = [rect(1 + k, 1, 10 + k, 9), rect(30, 20 + k, 40, 30)]  # two parts
            refs.append({
                "ann_info": {"area": 1.0, "bbox": [0, 0, 1, 1], "category_id": 3, "id": ann_id, "image_id": img_id,
                             "iscrowd": 0, "segmentation": segm},
                "ref_info": {"ann_id": ann_id, "category_id": 3, "file_name": f"crop_{ann_id}.jpg",
                             "image_id": img_id, "ref_id": ref_id, "sent_ids": [ref_id * 2, ref_id * 2 + 1],
                             "sentences": [{"raw": f"Ref {ref_id} A", "sent": f"ref {ref_id} a", "sent_id": ref_id * 2,
                                            "tokens": ["ref"]},
                                           {"raw": f"Ref {ref_id} B", "sent": f"ref {ref_id} b",
                                            "sent_id": ref_id * 2 + 1, "tokens": ["ref"]}],
                             "split": "val"}})
        rows["ref_list"].append(refs)
        fn = f"COCO_train2014_{img_id:012d}.jpg"
        rows["image_info"].append({"coco_url": "", "date_captured": "", "file_name": fn, "flickr_url": "",
                                   "height": H, "id": img_id, "license": 1, "width": W})
        rows["image"].append({"bytes": png(picture(img_id)), "path": None} if with_image else None)
    return rows


def test_benchmark_layout(tmp_path):
    d = tmp_path / "bench" / "data"
    d.mkdir(parents=True)
    Dataset.from_dict(bench_rows(), features=BENCH_FEATURES).to_parquet(
        str(d / "refcoco_unc_val-00000-of-00001-1a2b3c.parquet"))
    src = HFSource(tmp_path / "bench")
    assert src.format == "benchmark" and src.splits() == ["refcoco_unc_val"]
    samples = src.samples("refcoco_unc_val")
    assert len(samples) == 8 and len(src.refs("refcoco_unc_val")) == 4
    s = samples[3]  # image 7, second ref (k=1), sentence B
    assert (s.ref_id, s.sent_id, s.sentence, s.ann_id, s.image_id, s.category_id) == (71, 143, "Ref 71 B", 701, 7, 3)
    np.testing.assert_array_equal(src.load_mask(s), box(2, 1, 11, 9) | box(30, 21, 40, 30))
    np.testing.assert_array_equal(src.load_image(s), picture(7))


def test_benchmark_without_embedded_images_uses_image_dir(tmp_path):
    d = tmp_path / "bench"
    d.mkdir()
    Dataset.from_dict(bench_rows(with_image=False), features=BENCH_FEATURES).to_parquet(str(d / "val.parquet"))
    imgs = tmp_path / "coco"
    imgs.mkdir()
    for img_id in (7, 8):
        cv2.imwrite(str(imgs / f"COCO_train2014_{img_id:012d}.jpg"), np.zeros((H, W, 3), np.uint8))
    src = HFSource(d, image_dir=imgs)
    s = src.samples("val")[0]
    assert s.image_path == str(imgs / "COCO_train2014_000000000007.jpg")
    assert src.load_image(s).shape == (H, W, 3)
    (imgs / "COCO_train2014_000000000007.jpg").unlink()
    with pytest.raises(DataError, match="COCO_train2014_000000000007.jpg: image file missing"):
        src.load_image(s)


# ---------------------------------------------------------------------------------------------
# Dense masks, split column, save_to_disk folders
# ---------------------------------------------------------------------------------------------


def dense_dataset(mask_kind="image"):
    masks = [box(5, 5, 20, 25), box(30, 2, 50, 12), box(0, 0, 10, 10)]
    feats = {"image": Image(), "sentence": Value("string"), "split": Value("string")}
    if mask_kind == "image":
        feats["mask"] = Image()
        mask_values = [{"bytes": png(m.astype(np.uint8) * 255), "path": None} for m in masks]
    else:
        feats["mask"] = Sequence(Sequence(Value("uint8")))
        mask_values = [m.astype(np.uint8).tolist() for m in masks]
    data = {"image": [{"bytes": png(picture(i)), "path": None} for i in range(3)],
            "sentence": ["the red one", "the top one", "corner"], "split": ["train", "val", "val"],
            "mask": mask_values}
    return Dataset.from_dict(data, features=Features(feats)), masks


@pytest.mark.parametrize("mask_kind", ["image", "array"])
def test_dense_masks_split_column_save_to_disk(tmp_path, mask_kind):
    ds, masks = dense_dataset(mask_kind)
    ds.save_to_disk(str(tmp_path / "dense"))
    src = HFSource(tmp_path / "dense")
    assert src.format == "dense" and src.splits() == ["train", "val"]
    val = src.samples("val")
    assert [s.sentence for s in val] == ["the top one", "corner"]
    np.testing.assert_array_equal(src.load_mask(val[0]), masks[1])
    np.testing.assert_array_equal(src.load_image(val[1]), picture(2))


def test_dataset_dict_save_to_disk(tmp_path):
    a = Dataset.from_dict(lmms_rows(2, 1), features=LMMS_FEATURES)
    b = Dataset.from_dict(lmms_rows(1, 2), features=LMMS_FEATURES)
    DatasetDict({"val": a, "testB": b}).save_to_disk(str(tmp_path / "dd"))
    src = HFSource(tmp_path / "dd")
    assert src.splits() == ["val", "testB"]
    assert len(src.samples("testB")) == 2
    np.testing.assert_array_equal(src.load_mask(src.samples("testB")[0]), box(2, 3, 20, 30))


def test_per_image_rle_samples(tmp_path):
    from pycocotools import mask as mask_utils

    m = box(4, 4, 30, 20)
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    feats = Features({"image": Image(), "image_id": Value("int64"), "file_name": Value("string"),
                      "samples": [{"id": Value("int64"), "sentences": Sequence(Value("string")),
                                   "mask": {"counts": Value("string"), "size": Sequence(Value("int32"))}}]})
    Dataset.from_dict({"image": [{"bytes": png(picture(5)), "path": None}], "image_id": [5], "file_name": ["x.jpg"],
                       "samples": [[{"id": 9, "sentences": ["a", "b"],
                                     "mask": {"counts": rle["counts"].decode(), "size": [H, W]}}]]},
                      features=feats).to_parquet(str(tmp_path / "validation-00000-of-00001.parquet"))
    src = HFSource(tmp_path / "validation-00000-of-00001.parquet")
    assert src.format == "per_image" and src.splits() == ["validation"]
    s = src.samples("validation")
    assert [x.sentence for x in s] == ["a", "b"] and s[0].ref_id == 9
    np.testing.assert_array_equal(src.load_mask(s[1]), m)


def test_refer_rows_with_raw_anns_json(tmp_path):
    imgs = tmp_path / "images"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "COCO_train2014_000000000003.png"), np.zeros((H, W, 3), np.uint8))
    ann = {"id": 30, "image_id": 3, "segmentation": [rect(1, 1, 5, 5)], "iscrowd": 0}
    info = {"id": 3, "height": H, "width": W, "file_name": "COCO_train2014_000000000003.png"}
    Dataset.from_dict({
        "ref_id": [4], "ann_id": [30], "image_id": [3], "split": ["train"], "category_id": [2],
        "sentences": [[{"raw": "Tiny box", "sent": "tiny box", "sent_id": 77, "tokens": ["tiny", "box"]}]],
        "raw_anns": [json.dumps(ann)], "raw_image_info": [json.dumps(info)],
        "image_path": ["images/COCO_train2014_000000000003.png"]}).to_parquet(str(tmp_path / "train.parquet"))
    src = HFSource(tmp_path / "train.parquet")
    assert src.format == "refer_rows"
    s = src.samples("train")[0]
    assert (s.ref_id, s.sent_id, s.sentence, s.height, s.width) == (4, 77, "Tiny box", H, W)
    np.testing.assert_array_equal(src.load_mask(s), box(1, 1, 5, 5))
    assert src.load_image(s).shape == (H, W, 3)


def test_unknown_schema_and_missing(tmp_path):
    Dataset.from_dict({"foo": [1], "bar": ["x"]}).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(DataError, match=r"train.parquet: unknown Hugging Face schema with columns \['bar', 'foo'\]") as e:
        HFSource(tmp_path / "train.parquet")
    assert all(schema.description in str(e.value) for schema in SCHEMAS.values()) and len(SCHEMAS) == 5
    with pytest.raises(DataError, match="not found"):
        HFSource(tmp_path / "missing.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet or .arrow files"):
        HFSource(tmp_path / "empty")
    (tmp_path / "junk.parquet").write_bytes(b"nope")
    with pytest.raises(DataError, match="junk.parquet: not a readable parquet file"):
        HFSource(tmp_path / "junk.parquet")


def test_unknown_split_lists_valid(lmms_dir):
    with pytest.raises(DataError, match="valid splits are val, testA"):
        HFSource(lmms_dir).samples("train")


def test_dense_empty_mask_is_an_error(tmp_path):
    feats = Features({"image": Image(), "text": Value("string"), "mask": Image()})
    Dataset.from_dict({"image": [{"bytes": png(picture(0)), "path": None}], "text": ["x"],
                       "mask": [{"bytes": png(np.zeros((H, W), np.uint8)), "path": None}]},
                      features=feats).to_parquet(str(tmp_path / "val.parquet"))
    src = HFSource(tmp_path / "val.parquet")
    with pytest.raises(DataError, match=r"val.parquet: row 0, ref_id 0, ann_id 0: the object mask is empty"):
        src.load_mask(src.samples("val")[0])


def test_check_and_open_source_under_root(lmms_dir, capsys):
    from refseg.data.check import check
    from refseg.data import open_source

    # data.name relative to data.root
    src = open_source(SimpleNamespace(name="RefCOCO", root=str(lmms_dir.parent), split_by="unc"))
    assert isinstance(src, HFSource) and src.splits() == ["val", "testA"]
    assert check(src, full=True) == []
    out = capsys.readouterr().out
    assert "format lmms" in out and out.strip().endswith("OK")
