#!/usr/bin/env python
"""Ceiling that an output grid puts on mIoU: perfect masks, area-downsampled to a stride, upsampled back.

Each ground-truth mask of a split is reduced to the grid a model predicts on (``image_size / stride``
cells a side, area averaging), bilinearly upsampled to the original size and thresholded at 0.5, as
the model's logits are; the mIoU against the original mask is what even a perfect model on that grid
would score. Both bilinear conventions are measured: ``align_corners=True`` (LAVT's decoder) and
``False`` (pixel centres aligned; ``model.decoder.align_corners=false``).

    python benchmarks/grid_oracle.py [--data-root data] [--dataset refshapes] [--split val] [--image-size 128]
"""
from __future__ import annotations


from _common import load_cfg


def main(argv=None) -> int:
    from refseg.cli import ArgumentParser

    ap = ArgumentParser(prog="grid_oracle.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--dataset", default=None, help="default: the default config's data.name")
    ap.add_argument("--split", default="val")
    ap.add_argument("--image-size", type=int, default=None, help="model input size (default: the config's)")
    ap.add_argument("--strides", type=int, nargs="+", default=[8, 4, 2, 1])
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    import numpy as np
    import torch
    import torch.nn.functional as F

    from refseg.data import open_source
    from refseg.ops import resize

    cfg = load_cfg(None, [])
    if args.data_root:
        cfg.data.root = args.data_root
    if args.dataset:
        cfg.data.name = args.dataset
    size = args.image_size or cfg.model.image_size
    source = open_source(cfg.data)
    ious = {(s, ac): [] for s in args.strides for ac in (True, False)}
    for sample in source.samples(args.split):
        m = torch.from_numpy(source.load_mask(sample).astype(np.float32))[None, None]
        H, W = m.shape[-2:]
        gt = m > 0.5
        for s, ac in ious:
            grid = (max(1, round(size / s)),) * 2  # the input is a size x size resize (LAVT)
            up = resize(F.interpolate(m, size=grid, mode="area"), (H, W), align_corners=ac) > 0.5
            union = (up | gt).sum().item()
            ious[s, ac].append((up & gt).sum().item() / union if union else 1.0)
    n = len(next(iter(ious.values())))
    print(f"{cfg.data.name} {args.split}: {n} expressions, input {size} px")
    for (s, ac), v in ious.items():
        print(f"stride {s}: {round(size / s)}x{round(size / s)} grid, align_corners={ac}: perfect-mask mIoU "
              f"{100 * np.mean(v):.2f}  (10th percentile IoU {100 * np.percentile(v, 10):.1f})")
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="grid_oracle.py")
