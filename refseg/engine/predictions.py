"""Scoring masks written by any system: ``DIR/<sent_id>.png`` per expression, nonzero = object.

``evaluate.py --predictions DIR`` runs ``score_predictions`` over a split of any source (refer layout,
gRefCOCO layout, Hugging Face exports) with the protocol of ``evaluate``: at the original image size,
LAVT's numbers on classic data, the GRES numbers on generalized data (an empty PNG says "no target").
No model and no images are needed: only the ground truth and the PNGs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from ..errors import DataError
from ..metrics import SegMetrics, intersection_union
from ..data.types import Sample, Source


def read_prediction(path: Path, sample: Sample) -> np.ndarray:
    """bool (H, W) from a prediction PNG: a pixel is object when it is nonzero (any colour channel;
    an alpha channel is ignored; palette images by their colours). DataError naming the file when it
    is missing, unreadable or not of the image's size."""
    if not path.is_file():
        raise DataError(f"{path}: prediction missing for sent_id {sample.sent_id} (ref_id {sample.ref_id}, "
                        f"\"{sample.sentence}\"); every expression of the split needs DIR/<sent_id>.png")
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise DataError(f"{path}: not a readable image (expected a PNG mask, nonzero = object)")
    if m.ndim == 3:
        m = m[..., :3].any(axis=2) if m.shape[2] >= 3 else m[..., 0] > 0
    else:
        m = m > 0
    if m.shape != (sample.height, sample.width):
        raise DataError(f"{path}: mask is {m.shape[1]}x{m.shape[0]} (width x height) but the image of sent_id "
                        f"{sample.sent_id} is {sample.width}x{sample.height}")
    return m


def score_predictions(source: Source, split: str, pred_dir: str | Path, max_samples: Optional[int] = None,
                      progress: bool = False) -> SegMetrics:
    """Per-sample records of the PNGs in ``pred_dir`` against ``split``'s ground truth (the samples in
    file order, the first ``max_samples``); ``.compute()`` gives the numbers."""
    from tqdm.auto import tqdm

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: predictions directory not found (expected <sent_id>.png files)")
    samples = source.samples(split)
    if max_samples is not None:
        samples = samples[:max_samples]
    if not samples:
        raise DataError(f"{getattr(source, 'name', source)}: split '{split}' has no samples")
    metrics = SegMetrics()
    for index, sample in enumerate(tqdm(samples, desc=split, disable=not progress, dynamic_ncols=True,
                                        leave=False)):
        pred = read_prediction(pred_dir / f"{sample.sent_id}.png", sample)
        target = source.load_mask(sample)
        if sample.generalized:
            I, U = intersection_union(pred, target)
            metrics.add(I, U, index, sample.expr_type, int(np.count_nonzero(pred)), sample.num_targets)
        else:
            where = f"{sample.image_path} (ref_id {sample.ref_id}, sent_id {sample.sent_id})"
            metrics.update(pred, target, index, sample.expr_type, where=where)
    return metrics
