"""Metrics: values computed by hand, thresholds, merging across processes, the printed table."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from refseg.errors import DataError
from refseg.metrics import KEYS, SegMetrics, format_per_type, format_table, intersection_union


def test_two_samples_by_hand():
    m = SegMetrics()
    m.add(30, 40)   # IoU 0.75
    m.add(10, 50)   # IoU 0.20
    r = m.compute()
    assert r["num_samples"] == 2
    assert r["oIoU"] == pytest.approx(100 * 40 / 90)
    assert r["mIoU"] == pytest.approx(100 * (0.75 + 0.2) / 2)
    assert [r[f"P@{t}"] for t in (0.5, 0.6, 0.7, 0.8, 0.9)] == [50.0, 50.0, 50.0, 0.0, 0.0]
    assert "per_type" not in r


def test_thresholds_are_inclusive():
    m = SegMetrics()
    for i, (I, U) in enumerate([(1, 2), (3, 5), (7, 10), (4, 5), (9, 10), (10, 10)]):  # 0.5 .. 0.9, 1.0
        m.add(I, U, i)
    r = m.compute()
    assert [r[f"P@{t}"] for t in (0.5, 0.6, 0.7, 0.8, 0.9)] == pytest.approx(
        [100.0, 500 / 6, 400 / 6, 300 / 6, 200 / 6])


def test_update_from_masks_numpy_and_torch():
    gt = np.zeros((6, 8), bool)
    gt[1:4, 1:5] = True       # 12 px
    pred = np.zeros((6, 8), bool)
    pred[2:5, 2:6] = True     # 12 px, overlap rows 2-3 x cols 2-4 = 6 px
    assert intersection_union(pred, gt) == (6, 18)
    assert intersection_union(torch.from_numpy(pred), torch.from_numpy(gt)) == (6, 18)
    m = SegMetrics()
    assert m.update(torch.from_numpy(pred), torch.from_numpy(gt), index=0) == (6, 18)
    assert m.compute()["mIoU"] == pytest.approx(100 / 3)


def test_empty_target_is_a_data_error():
    m = SegMetrics()
    with pytest.raises(DataError, match="empty ground-truth mask for ref 7"):
        m.update(np.ones((4, 4), bool), np.zeros((4, 4), bool), where="ref 7")
    with pytest.raises(ValueError, match="shape"):
        m.update(np.ones((4, 4), bool), np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="no samples"):
        SegMetrics().compute()


def test_empty_union_scores_zero_like_lavt():
    m = SegMetrics()
    m.add(0, 0, 0)
    m.add(5, 5, 1)
    r = m.compute()
    assert r["mIoU"] == 50.0 and r["oIoU"] == 100.0


def test_large_counts_are_int64_exact():
    m = SegMetrics()
    m.add(3_000_000_000, 4_000_000_000, 0)
    m.add(1, 4_000_000_000, 1)
    assert m.compute()["oIoU"] == pytest.approx(100 * 3_000_000_001 / 8_000_000_000, rel=1e-15)


def test_merge_equals_single_process_exactly():
    rng = random.Random(0)
    recs = []
    for i in range(101):
        U = rng.randint(1, 10_000)
        recs.append((i, rng.randint(0, U), U, rng.choice(["attribute", "position", None])))
    single = SegMetrics()
    for i, I, U, t in recs:
        single.add(I, U, i, t)
    # 3 "processes", strided shards, arriving out of order, with padding duplicates
    parts = []
    for rank in range(3):
        p = SegMetrics()
        shard = recs[rank::3] + recs[rank::3][:1]  # a repeated sample, like DistributedSampler padding
        rng.shuffle(shard)
        for i, I, U, t in shard:
            p.add(I, U, i, t)
        parts.append(json.loads(json.dumps(p.state())))  # states travel as plain lists
    merged = SegMetrics.merge(parts[::-1])
    assert merged.compute() == single.compute()  # bit-identical, including mIoU


def test_per_type():
    m = SegMetrics()
    m.add(1, 2, 0, "position")
    m.add(1, 1, 1, "position")
    m.add(1, 4, 2, "attribute")
    m.add(0, 4, 3, None)
    r = m.compute()
    assert r["per_type"] == {"attribute": 25.0, "none": 0.0, "position": 75.0}
    assert "attribute" in format_per_type(r) and format_per_type({"mIoU": 1.0}) == ""


def test_format_table_layout():
    m = SegMetrics()
    m.add(30, 40)
    m.add(10, 50)
    r = m.compute()
    table = format_table(r, title="val")
    head, rule, row = table.splitlines()
    assert [c.strip() for c in head.strip("|").split("|")] == ["val", "P@0.5", "P@0.6", "P@0.7", "P@0.8",
                                                               "P@0.9", "oIoU", "mIoU", "N"]
    assert [c.strip() for c in row.strip("|").split("|")] == ["val", "50.00", "50.00", "50.00", "0.00", "0.00",
                                                              "44.44", "47.50", "2"]
    multi = format_table({"val": r, "testA": r}, title="split").splitlines()
    assert len(multi) == 4 and multi[3].startswith("| testA")
    assert set(KEYS) <= set(r)
