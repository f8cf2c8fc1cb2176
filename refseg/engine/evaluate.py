"""Evaluation: run a model over a RefSegDataset and score it with LAVT's protocol.

Scoring is at the original image size by default: the model's stride-4 logits are brought to each
image's (H, W) in one bilinear resize (``RefSegProcessor.post_process_masks``, as the Predictor does,
emptied where the model's no-target head says nothing matches) and compared with the full-resolution
ground truth: the masks scored are the Predictor's. ``resized_gt`` instead scores at S x S against the
nearest-resized ground truth, as LAVT's test.py does.

With an accelerator, process r scores samples r, r + P, r + 2P, ... (no padding), and the per-sample
(index, I, U) records are gathered and merged, so P processes give exactly one process's numbers.
"""
from __future__ import annotations

import contextlib
import html
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..data.dataset import collate, worker_init
from ..errors import DataError, first_line
from ..metrics import SegMetrics, intersection_union
from ..ops import autocast


def text_derangement(ref_ids: Sequence[int], seed: int = 0) -> list[int]:
    """A fixed-seed permutation ``p`` with ``p[i] != i`` and, where possible, ``ref_ids[p[i]] != ref_ids[i]``.

    Item i is then paired with the expression of sample ``p[i]``, which describes another object.
    """
    n = len(ref_ids)
    perm = list(range(n))
    if n < 2:
        return perm
    rng = np.random.default_rng(seed)
    for i in range(n - 1, 0, -1):  # Sattolo's algorithm: one n-cycle, so no fixed point
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    for _ in range(4):  # repair pairs that landed on another sentence of the same ref
        bad = [i for i in range(n) if ref_ids[perm[i]] == ref_ids[i]]
        if not bad:
            break
        for i in bad:
            if ref_ids[perm[i]] != ref_ids[i]:
                continue
            for _try in range(32):
                j = int(rng.integers(0, n))
                if ref_ids[perm[j]] != ref_ids[i] and ref_ids[perm[i]] != ref_ids[j]:
                    perm[i], perm[j] = perm[j], perm[i]
                    break
    return perm


def _unwrap(dataset) -> tuple[Any, list[int]]:
    """(base RefSegDataset, base indices evaluated) for a dataset or nested ``Subset``s of one."""
    if isinstance(dataset, Subset):
        base, idx = _unwrap(dataset.dataset)
        return base, [idx[int(i)] for i in dataset.indices]
    return dataset, list(range(len(dataset)))


@contextlib.contextmanager
def _own_precision(model):
    """While scoring, ``model``'s own forward: not the autocast wrapper ``Accelerator.prepare`` puts on
    it for a mixed-precision run, so that the evaluation's precision is ``eval.mixed_precision``'s
    (fp32 on CPUs), as in evaluate.py and the Predictor. Under the wrapper a bf16 run's evaluations
    scored bf16 logits (val 61.60 / 54.95 against evaluate.py's 61.40 / 54.89, RESULTS.md)."""
    original = model.__dict__.get("_original_forward")
    wrapped = model.__dict__.get("forward")
    if original is None or wrapped is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped


def _device(model, accelerator) -> torch.device:
    if accelerator is not None:
        return accelerator.device
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


class _Readable(torch.utils.data.Dataset):
    """The items ``positions`` of ``base``. An unreadable one raises ``DataError`` (``skip=False``: its
    message says how to skip it) or becomes ``{"bad_sample": {index, path, reason}}``."""

    def __init__(self, base, positions: Sequence[int], skip: bool):
        self.base, self.positions, self.skip = base, list(positions), skip

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> dict:
        idx = self.positions[k]
        try:
            return self.base[idx]
        except DataError as e:
            if not self.skip:
                raise DataError(f"{first_line(e)} (evaluate.py --skip-bad leaves unreadable samples out and "
                                f"reports how many)") from None
            sample = self.base.sample(idx)
            return {"bad_sample": {"index": int(idx), "path": str(sample.image_path), "reason": first_line(e)}}


def _collate_readable(items: list[dict]) -> tuple[Optional[dict], list[dict]]:
    good = [i for i in items if "bad_sample" not in i]
    return (collate(good) if good else None), [i["bad_sample"] for i in items if "bad_sample" in i]


def score_positions(model, base, positions: Sequence[int], device: torch.device, batch_size: int = 16,
                    resized_gt: bool = False, num_workers: int = 0, progress: bool = False,
                    desc: str = "eval", mixed_precision: str = "auto", processor=None,
                    skip_bad: Optional[list] = None) -> SegMetrics:
    """Score the base-dataset items ``positions`` on this process; returns the per-sample records.

    ``mixed_precision``: ``eval.mixed_precision`` (see ``scoring_precision``); ``processor``: the
    model's ``RefSegProcessor`` (default: the dataset's). An item that cannot be read raises
    ``DataError``, unless ``skip_bad`` is a list: then it is left out of the scores and its
    {index, path, reason} is appended to that list.
    """
    processor = processor or base.processor
    from tqdm.auto import tqdm

    metrics = SegMetrics()
    if not positions:
        return metrics
    loader = DataLoader(_Readable(base, positions, skip=skip_bad is not None), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate_readable,
                        worker_init_fn=worker_init, pin_memory=device.type == "cuda", persistent_workers=False)
    with torch.inference_mode():
        for batch, bad in tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
            if bad:
                skip_bad.extend(bad)
            if batch is None:
                continue
            x = processor.to_device(batch, device)  # uint8 pixels normalised on the device
            labels = x.pop("labels")
            with autocast(device, scoring_precision(mixed_precision, resized_gt)):
                out = model(**x)
            logits, no_target = out.logits.float(), getattr(out, "no_target_logits", None)
            for b, idx in enumerate(batch["index"].tolist()):
                sample = base.sample(idx)
                target = batch["target"][b]
                where = f"{sample.image_path} (ref_id {sample.ref_id}, sent_id {sample.sent_id})"
                generalized = getattr(sample, "generalized", False)  # gRefCOCO layout: 0, 1 or several objects
                if not generalized and not bool(target.any()):
                    raise DataError(f"empty ground-truth mask for {where}")
                gt = labels[b].bool() if resized_gt else target.to(device, non_blocking=True)
                pred = processor.post_process_masks(
                    logits[b:b + 1], tuple(gt.shape),
                    no_target_logits=None if no_target is None else no_target[b:b + 1])[0]
                gres = dict(pred_area=int(pred.sum()), num_targets=sample.num_targets) if generalized else {}
                metrics.add(*intersection_union(pred, gt), idx, sample.expr_type, **gres)
    return metrics


def scoring_precision(mixed_precision: str, resized_gt: bool) -> str:
    """``eval.mixed_precision`` resolved for scoring: ``auto`` is fp32 ("no") at resized ground truth,
    LAVT's test.py protocol, so its numbers reproduce; otherwise ``ops.autocast`` decides."""
    return "no" if mixed_precision == "auto" and resized_gt else mixed_precision


def evaluate(model, dataset, processor=None, accelerator=None, batch_size: int = 16, resized_gt: bool = False,
             shuffle_text: bool = False, gallery_dir: str | Path | None = None, progress: bool = True,
             num_workers: int = 0, gallery_size: int = 16, seed: int = 0, desc: str = "eval",
             mixed_precision: str = "auto", skip_bad: bool = False) -> dict:
    """Score ``model`` on ``dataset`` (a RefSegDataset with train=False, or a Subset of one) through
    ``processor`` (its ``RefSegProcessor``; default: the one the dataset prepares its items with).

    Returns ``{P@0.5 .. P@0.9, oIoU, mIoU, num_samples}`` in percent (plus ``per_type`` {type: mIoU}
    when samples carry an expression type). Every process returns the same merged numbers.
    ``shuffle_text`` pairs each image with another object's expression (fixed-seed derangement).
    ``gallery_dir``: the main process writes the ``gallery_size`` lowest-IoU predictions as PNGs
    plus index.json / index.html.
    An item whose image or annotation cannot be read raises ``DataError``; with ``skip_bad`` it is
    left out, and the results hold ``bad_samples`` (how many) and ``bad_sample_list`` (path, reason).
    """
    base, positions = _unwrap(dataset)
    processor = processor or base.processor
    if getattr(base, "train", False):
        raise ValueError("evaluate() needs a dataset built with train=False (one item per sentence)")
    if shuffle_text:
        refs = [base.sample(p).ref_id for p in positions]
        perm = text_derangement(refs, seed)
        text_of = list(range(len(base.samples)))
        for k, p in enumerate(positions):
            text_of[p] = positions[perm[k]]
        base = base.with_texts(text_of)

    if accelerator is not None:
        model = accelerator.unwrap_model(model)  # no DDP collectives: shards may differ by one batch
        world, rank = accelerator.num_processes, accelerator.process_index
        is_main = accelerator.is_main_process
    else:
        world, rank, is_main = 1, 0, True
    device = _device(model, accelerator)
    was_training = model.training
    model.eval()
    own = contextlib.ExitStack()
    own.enter_context(_own_precision(model))
    try:
        bad: Optional[list] = [] if skip_bad else None
        local = score_positions(model, base, positions[rank::world], device, batch_size, resized_gt,
                                num_workers, progress and is_main, desc, mixed_precision, processor, skip_bad=bad)
        if world > 1:
            from accelerate.utils import gather_object

            gathered = gather_object([(local.state(), bad)])
            merged = SegMetrics.merge([g[0] for g in gathered])
            bad = None if bad is None else [b for g in gathered for b in g[1]]
        else:
            merged = local
        results = merged.compute()
        if bad is not None:
            results["bad_samples"] = len(bad)
            results["bad_sample_list"] = sorted(bad, key=lambda b: b["index"])
        if gallery_dir is not None and is_main:
            write_gallery(model, processor, base, merged, gallery_dir, device, k=gallery_size, resized_gt=resized_gt,
                          mixed_precision=mixed_precision)
        if world > 1:
            accelerator.wait_for_everyone()
    finally:
        model.train(was_training)
        own.close()
    return results


def write_gallery(model, processor, base, metrics: SegMetrics, out_dir: str | Path, device: torch.device, k: int = 16,
                  resized_gt: bool = False, mixed_precision: str = "auto") -> list[dict]:
    """The ``k`` lowest-IoU samples as PNGs (image, green gt outline, tinted prediction, expression, IoU)."""
    from ..data.io import write_image
    from ..visualize import overlay

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ious = metrics.ious()
    worst = sorted(ious, key=lambda i: (ious[i], i))[:k]
    entries = []
    with torch.inference_mode():
        for rank, idx in enumerate(worst):
            item = collate([base[idx]])
            x = processor.to_device(item, device)
            x.pop("labels")
            with autocast(device, scoring_precision(mixed_precision, resized_gt)):
                output = model(**x)
            sample = base.sample(idx)
            image = base.source.load_image(sample)
            gt = item["target"][0].numpy()
            pred = processor.post_process_masks(output.logits.float(), gt.shape,
                                                no_target_logits=getattr(output, "no_target_logits", None))[0].cpu().numpy()
            text = base.text(idx)
            name = f"{rank:02d}_idx{idx}.png"
            write_image(out / name, overlay(image, pred, text=f"IoU {100 * ious[idx]:.1f} | {text}", gt=gt))
            entries.append({"rank": rank, "index": idx, "iou": 100.0 * ious[idx], "expression": text,
                            "true_expression": sample.sentence, "ref_id": sample.ref_id,
                            "sent_id": sample.sent_id, "image": sample.image_path, "file": name})
    (out / "index.json").write_text(json.dumps(entries, indent=1))
    rows = "\n".join(
        f"<tr><td>{e['rank']}</td><td>{e['iou']:.1f}</td><td>{html.escape(e['expression'])}</td>"
        f"<td><img src='{e['file']}' style='max-width:480px'></td></tr>" for e in entries)
    (out / "index.html").write_text(
        "<html><body><h3>Lowest-IoU predictions (green: ground truth, red: prediction)</h3>"
        f"<table border=1><tr><th>#</th><th>IoU</th><th>expression</th><th>image</th></tr>\n{rows}\n"
        "</table></body></html>\n")
    return entries
