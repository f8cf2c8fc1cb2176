"""The uint8 loader: the same model inputs as the float path it replaced, masks at the target size, less IPC.

Workers stop at uint8 (image (3,S,S), mask (S,S)); ``normalize_pixels`` on the device must give
bit-for-bit the inputs that the float32 numpy normalisation in the workers gave (``previous_preprocess``
and ``previous_item`` below keep that path as the reference).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_refer import ANNS, make_refer_dataset  # noqa: E402

from refseg.data.io import decode_segmentation  # noqa: E402
from refseg.data.sources.refer import ReferSource  # noqa: E402
from refseg.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, encode_text, image_to_uint8,  # noqa: E402
                                    normalize_pixels, polygon_mask, resize_mask)


def previous_preprocess(image: np.ndarray, size: int) -> torch.Tensor:
    """The float32 normalisation loader workers applied before the uint8 path (kept here verbatim)."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    x = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def previous_item(ds, index: int) -> dict:
    """The float32 item the loader gave before the uint8 path (normalised pixels, int64 labels resized
    from the original-size mask), for the sample and sentence that ``ds[index]`` draws."""
    if ds.train:
        group = ds.groups[index]
        sample = ds.samples[group[int(ds._rng(index, ds.epoch).integers(len(group)))]]
        text = sample.sentence
    else:
        sample, text = ds.samples[index], ds.text(index)
    image, mask = ds.source.load_image(sample), ds.source.load_mask(sample)
    ids, attn = encode_text(ds.processor.tokenizer, text, ds.processor.max_tokens, ds.processor.truncation)
    item = {"pixel_values": previous_preprocess(image, ds.image_size), "input_ids": ids[0], "attention_mask": attn[0],
            "labels": torch.from_numpy(resize_mask(mask, ds.image_size).astype(np.int64)), "index": index}
    if not ds.train:
        item["target"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    return item


@pytest.mark.parametrize("shape,size", [((480, 640), 480), ((640, 427), 480), ((37, 53), 32), ((64, 64), 64)])
def test_device_normalisation_is_bit_identical(shape, size):
    rng = np.random.default_rng(size + shape[0])
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image[:3] = 0  # the extremes too
    image[-3:] = 255
    old = previous_preprocess(image, size)
    u8 = image_to_uint8(image, size)
    assert u8.dtype == torch.uint8 and u8.shape == (3, size, size) and u8.is_contiguous()
    new = normalize_pixels(u8)
    assert new.dtype == torch.float32 and new.shape == old.shape
    assert torch.equal(new, old)  # exact: no tolerance
    # a batch normalised at once equals the per-sample inputs
    batch = normalize_pixels(torch.stack([u8, u8.flip(-1)]))
    assert torch.equal(batch[0], old) and torch.equal(batch[1], previous_preprocess(image[:, ::-1].copy(), size))


def test_normalize_pixels_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        normalize_pixels(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="uint8"):
        image_to_uint8(np.zeros((4, 4, 3), np.float32), 4)


def _random_polygons(rng, h, w, parts):
    out = []
    for _ in range(parts):
        c = rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
        k = int(rng.integers(8, 24))
        a = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = rng.uniform(0.1, 0.3) * min(h, w) * rng.uniform(0.8, 1.2, k)
        out.append(np.round(np.stack([c[0] + r * np.cos(a), c[1] + r * np.sin(a)], 1), 2).ravel().tolist())
    return out


def test_polygon_mask_matches_original_size_raster_then_resize():
    """Rasterising at the target size differs from decode-then-nearest-resize only along outlines."""
    rng = np.random.default_rng(0)
    ious = []
    for i in range(40):
        h, w = (480, 640) if i % 2 else (640, 427)
        segm = _random_polygons(rng, h, w, 1 + i % 3)
        old = resize_mask(decode_segmentation(segm, h, w, "test"), 480)
        new = polygon_mask(segm, h, w, 480)
        assert new.dtype == np.uint8 and new.shape == (480, 480) and set(np.unique(new)) <= {0, 1}
        new = new.astype(bool)
        ious.append((old & new).sum() / (old | new).sum())
    assert np.mean(ious) > 0.985 and min(ious) > 0.96, (np.mean(ious), min(ious))


def test_polygon_mask_union_flat_rle_and_errors():
    h, w = 40, 60
    a = [[5, 5, 30, 5, 30, 30, 5, 30]]
    b = [[20, 10, 50, 10, 50, 35, 20, 35]]
    ma, mb, mab = (polygon_mask(s, h, w, 40) for s in (a, b, a + b))
    np.testing.assert_array_equal(mab, ma | mb)  # overlapping parts: a union, not even-odd
    np.testing.assert_array_equal(polygon_mask(a[0], h, w, 40), ma)  # one flat polygon
    assert polygon_mask({"counts": "abc", "size": [h, w]}, h, w, 40) is None  # RLE: decode at full size
    with pytest.raises(ValueError, match="odd"):
        polygon_mask([[1, 2, 3, 4, 5, 6, 7]], h, w, 40)
    with pytest.raises(ValueError, match="empty polygon"):
        polygon_mask([[1, 2, 3, 4]], h, w, 40)


@pytest.fixture(scope="module")
def tokenizer():
    from refseg.models.text import load_tokenizer

    return load_tokenizer("bundled-minilm")


@pytest.fixture
def toy(tmp_path):
    make_refer_dataset(tmp_path)
    return ReferSource(tmp_path, "toy", "unc")


@pytest.mark.parametrize("train", [True, False])
def test_uint8_items_give_the_float_items_model_inputs(toy, tokenizer, train):
    from refseg.data.dataset import RefSegDataset, collate

    S = 40
    new = RefSegDataset(toy, "train", tokenizer, S, 12, train=train)
    new.set_epoch(1)
    for i in range(len(new)):
        a, b = previous_item(new, i), new[i]
        assert b["pixel_values"].dtype == torch.uint8 and b["labels"].dtype == torch.uint8
        assert torch.equal(normalize_pixels(b["pixel_values"]), a["pixel_values"])
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
        if train:  # from the polygons at S (the toy set's crowd RLEs fall back to resizing)
            la, lb = a["labels"].bool(), b["labels"].bool()
            assert (la & lb).sum() / (la | lb).sum() > 0.8
        else:  # evaluation: exactly the resized original-size mask, and the full-size target
            assert torch.equal(a["labels"], b["labels"].long())
            assert torch.equal(a["target"], b["target"])
    batch = collate([new[0], new[1]])
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (2, 3, S, S)


def test_training_labels_use_polygons_at_target_size(toy, tokenizer):
    """ann 101 is a polygon: the uint8 path's label equals polygon_mask at S."""
    from refseg.data.dataset import RefSegDataset

    S = 40
    ds = RefSegDataset(toy, "train", tokenizer, S, 12, train=True)
    ds.set_epoch(0)
    item = ds[0]
    sample = ds.samples[ds.groups[0][0]]
    assert sample.ann_id == 101 and isinstance(ANNS[101][1], list)
    expected = polygon_mask(toy.segmentation(sample), sample.height, sample.width, S)
    np.testing.assert_array_equal(item["labels"].numpy(), expected)


def test_worker_collate_in_shared_memory_and_bytes(toy, tokenizer):
    """Batches from a worker equal in-process ones; the uint8 path sends >= 4x fewer bytes."""
    from torch.utils.data import DataLoader

    from refseg.data.dataset import RefSegDataset, collate

    S = 48
    ds = RefSegDataset(toy, "train", tokenizer, S, 12, train=False)
    local = collate([ds[i] for i in range(len(ds))])
    loader = DataLoader(ds, batch_size=len(ds), num_workers=1, collate_fn=collate)
    (remote,) = list(loader)
    for key in ("pixel_values", "labels", "input_ids", "attention_mask", "index"):
        assert torch.equal(local[key], remote[key]), key
    assert remote["pixel_values"].is_shared()

    def nbytes(item):
        return sum(v.numel() * v.element_size() for k, v in item.items()
                   if isinstance(v, torch.Tensor) and k in ("pixel_values", "labels", "input_ids", "attention_mask"))

    new = RefSegDataset(toy, "train", tokenizer, S, 12, train=True)
    new.set_epoch(0)
    assert nbytes(previous_item(new, 0)) >= 4 * nbytes(new[0])


def test_processor_to_device_normalises_the_uint8_batch(toy, tokenizer):
    """The processor's device side: uint8 planes -> ImageNet-normalised float32 (the numpy float32
    formula, bit for bit), ids and masks as they are, labels as long."""
    from refseg.data.dataset import RefSegDataset, collate
    from refseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    ds = RefSegDataset(toy, "val", tokenizer, 32, 12)
    batch = collate([ds[0], ds[1]])
    a = ds.processor.to_device(batch, "cpu")
    want = (batch["pixel_values"].numpy().astype(np.float32) / np.float32(255.0)
            - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    assert a["pixel_values"].dtype == torch.float32 and np.array_equal(a["pixel_values"].numpy(), want)
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(a[key], batch[key]), key
    assert a["labels"].dtype == torch.long and torch.equal(a["labels"], batch["labels"].long())


def test_epoch_keys_draw_like_set_epoch(toy, tokenizer):
    """``ds[(epoch, i)]`` equals ``ds.set_epoch(epoch); ds[i]``: persistent workers need no epoch state."""
    from refseg.data.dataset import RefSegDataset

    ds = RefSegDataset(toy, "train", tokenizer, 32, 12, train=True, seed=5)
    for epoch in range(6):
        keyed = ds[(epoch, 0)]
        ds.set_epoch(epoch)
        assert torch.equal(keyed["input_ids"], ds[0]["input_ids"]) and keyed["index"] == 0


@pytest.mark.slow
def test_persistent_workers_train_like_no_workers(tmp_path):
    """Two loader workers that persist across epochs give the weights of in-process loading (CPU):
    the epoch travels with each index, so no worker draws with a stale epoch."""
    from conftest import max_weight_diff, run_script, tiny_train_args

    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        # ~3 batches of 16 refs per epoch: 7 steps cross two epoch boundaries
        r = run_script(["train.py", "--no-progress", "--output-dir", out,
                        *tiny_train_args(tmp_path / "data", "train.batch_size=16", "train.max_steps=7",
                                         "train.eval_every=100", f"data.num_workers={workers}")])
        assert r.returncode == 0, r.stderr[-3000:]
        state = json.loads((out / "state" / "trainer_state.json").read_text())
        assert state["epoch"] >= 2
        runs[workers] = out
    assert max_weight_diff(runs[0] / "last", runs[2] / "last") == 0.0
