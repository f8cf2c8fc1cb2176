#!/usr/bin/env python
"""How a checkpoint's IoU is distributed over a split: histogram in tenths, mean IoU of hits / misses,
and mIoU by target size (thirds of the split by mask area) and expression type; with ``--words``
also the mean IoU of the expressions that contain each frequent word (hardest first).

    python benchmarks/iou_distribution.py runs/default/best [--split val] [--data-root data] [--words]
"""
from __future__ import annotations

import numpy as np
import torch


def main(argv=None) -> int:
    from refseg.cli import ArgumentParser, quiet_libraries

    quiet_libraries()
    ap = ArgumentParser(prog="iou_distribution.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint directory")
    ap.add_argument("--split", default="val")
    ap.add_argument("--data-root", default=None, help="default: the checkpoint's data.root")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--words", action="store_true", help="also mean IoU per frequent word (>= --min-count uses)")
    ap.add_argument("--min-count", type=int, default=25)
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    from refseg.data import RefSegDataset, open_source
    from refseg.engine.evaluate import score_positions
    from refseg.models import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    model, cfg = ckpt.model, ckpt.run_config  # the dataset it was trained on
    if args.data_root:
        cfg.data.root = args.data_root
    ds = RefSegDataset(open_source(cfg.data), args.split, ckpt.processor)
    by_pos = score_positions(model, ds, list(range(len(ds))), torch.device("cpu"), args.batch_size).ious()
    ious = np.array([by_pos[i] for i in range(len(ds))])
    hit = ious > 0.5
    print(f"{len(ious)} expressions: mIoU {100 * ious.mean():.2f}, P@0.5 {100 * hit.mean():.2f}, "
          f"mean IoU of hits {100 * ious[hit].mean():.1f}, of misses {100 * ious[~hit].mean():.1f}")
    print("IoU histogram (tenths):", np.histogram(ious, bins=10, range=(0, 1))[0].tolist())
    # target size: visible mask area in the original image, split into thirds
    samples = [ds.samples[i] for i in range(len(ds))]
    area = np.array([float(ds.source.load_mask(s).sum()) for s in samples])
    types = np.array([s.expr_type or "-" for s in samples])
    cuts = np.percentile(area, [100 / 3, 200 / 3])
    for name, sel in (("small", area < cuts[0]), ("medium", (area >= cuts[0]) & (area < cuts[1])),
                      ("large", area >= cuts[1])):
        v = ious[sel]
        per_type = ", ".join(f"{t} {100 * ious[sel & (types == t)].mean():.1f}"
                             for t in sorted(set(types[sel])) if t != "-")
        print(f"{name:6s} targets ({area[sel].min():.0f}-{area[sel].max():.0f} px): mIoU {100 * v.mean():.1f}, "
              f"P@0.5 {100 * (v > 0.5).mean():.1f}, hits {100 * v[v > 0.5].mean():.1f}"
              + (f"  ({per_type})" if per_type else ""))
    if args.words:
        by_word: dict[str, list[float]] = {}
        for iou, s in zip(ious, samples):
            for w in set(s.sentence.lower().replace(",", " ").replace(".", " ").split()):
                by_word.setdefault(w, []).append(float(iou))
        rows = sorted((float(np.mean(v)), w, len(v)) for w, v in by_word.items() if len(v) >= args.min_count)
        print(f"mean IoU by word (>= {args.min_count} expressions), hardest first:")
        print("  " + ", ".join(f"{w} {100 * m:.1f} ({n})" for m, w, n in rows))
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="iou_distribution.py")
