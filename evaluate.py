#!/usr/bin/env python
"""Evaluate a checkpoint on a referring-segmentation split with LAVT's protocol.

    python evaluate.py --checkpoint runs/x/best --split val
    python evaluate.py --checkpoint runs/x/best --data-root data --dataset refcoco --split-by unc --split all --out m.json
    accelerate launch evaluate.py --checkpoint runs/x/best --split testA     # same numbers, P processes

Prints P@0.5..P@0.9, oIoU and mIoU (percent, two decimals), one row per split. Scoring is at the
original image size; ``--resized-gt`` scores at image_size x image_size in fp32 like LAVT's test.py.
``--shuffle-text`` pairs every image with another object's expression (the language ablation).
``--out`` is a plain file and is replaced if it exists; it records what was scored (checkpoint,
dataset, split_by, splits, shuffle_text, resized_gt) beside the results of each split; a non-empty ``--gallery`` directory is refused
unless ``--overwrite`` moves it aside (to DIR.old-<n>).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Optional, Sequence

from refseg.cli import ArgumentParser, quiet_libraries, run
from refseg.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.yaml, model.safetensors, tokenizer/)")
    p.add_argument("--data-root", default=None, help="data folder (default: the checkpoint's data.root, or 'data' "
                                                     "with --dataset)")
    p.add_argument("--dataset", default=None, help="refcoco | refcoco+ | refcocog | refshapes | a refer-layout folder "
                                                   "name | an HF export path (default: the checkpoint's dataset)")
    p.add_argument("--split-by", default=None, help="unc | umd | google (default: umd for refcocog, else unc)")
    p.add_argument("--split", required=True, help="val | testA | testB | test | ... | all (every split but train)")
    p.add_argument("--out", default=None, help="write the results as JSON to this file (replaced if it exists)")
    p.add_argument("--shuffle-text", action="store_true", help="pair each image with another object's expression")
    p.add_argument("--resized-gt", action="store_true", help="score at image_size x image_size, in fp32 unless "
                                                             "eval.mixed_precision says otherwise (LAVT test.py)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the checkpoint's eval.batch_size")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: data.num_workers)")
    p.add_argument("--gallery", default=None, help="write the 16 lowest-IoU predictions as PNGs into this directory "
                                                   "(new or empty; see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="a non-empty --gallery directory is moved to "
                                                            "<dir>.old-<n> (never deleted) and written afresh")
    p.add_argument("--max-samples", type=int, default=None, help="score only the first N (ref, sentence) pairs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _load_model(path: Path):
    """(model, tokenizer) from a checkpoint directory (a seam for tests)."""
    from refseg.models import load_checkpoint

    return load_checkpoint(path)


def _data_config(cfg, args):
    from refseg.data.check import default_split_by

    data = copy.deepcopy(cfg.data)
    if args.dataset:
        data.name = args.dataset
        data.root = args.data_root or "data"
        data.split_by = args.split_by or default_split_by(args.dataset)
    else:
        if args.data_root:
            data.root = args.data_root
        if args.split_by:
            data.split_by = args.split_by
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    for name in ("batch_size", "num_workers", "max_samples"):
        v = getattr(args, name)
        if v is not None and (v < 0 or (v == 0 and name != "num_workers")):
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {v}")

    from refseg.config import load_run_config
    from refseg.data.sources import is_hf_export, open_source  # torch-free: bad input fails fast
    from refseg.utils import atomic_write_text, read_directory

    def read_config(ckpt: Path):
        if not ckpt.is_dir():
            raise UserError(f"checkpoint not found: {ckpt} (expected a directory with config.yaml and "
                            f"model.safetensors)")
        if not (ckpt / "config.yaml").is_file():
            raise UserError(f"{ckpt}: not a checkpoint directory (no config.yaml)")
        return load_run_config(ckpt / "config.yaml")

    from refseg.engine.rundir import check_output_dir

    ckpt = Path(args.checkpoint).expanduser()
    cfg = read_directory(ckpt, read_config)  # safe while a training run replaces it
    data = _data_config(cfg, args)
    # Every argument is checked before any work (a refshapes generation takes seconds and disk space).
    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a directory: give a file name such as {Path(args.out) / 'metrics.json'}")
    if args.gallery:
        check_output_dir(args.gallery, args.overwrite)
    if data.name == "refshapes":  # deterministic: regenerate the exact data the model trained on
        from refseg.data.refshapes import SPLITS, ensure_refshapes
        if args.split != "all" and args.split not in SPLITS:
            raise UserError(f"unknown split '{args.split}' for refshapes: valid splits are "
                            f"{', '.join([*SPLITS, 'all'])}")
        ensure_refshapes(data, progress=not args.no_progress)
    if not is_hf_export(data.name) and not Path(data.root).expanduser().is_dir():
        raise UserError(f"data root not found: {data.root} (use --data-root; see docs/DATA.md)")
    source = open_source(data)
    splits = source.splits()
    if args.split == "all":
        eval_splits = [s for s in splits if s != "train"] or splits
    elif args.split in splits:
        eval_splits = [args.split]
    else:
        raise UserError(f"unknown split '{args.split}' for {data.name} ({data.split_by}): valid splits are "
                        f"{', '.join(splits + ['all'])}")

    from accelerate import Accelerator

    from refseg.data.dataset import RefSegDataset, preprocessing
    from refseg.engine.evaluate import evaluate
    from refseg.metrics import format_per_type, format_table

    from refseg.engine.rundir import claim_output_dir, on_main_process

    accelerator = Accelerator()
    if args.gallery:  # decided once, before anything is written
        on_main_process(lambda: str(claim_output_dir(args.gallery, args.overwrite)), accelerator.state)
    model, tokenizer = _load_model(ckpt)
    model.to(accelerator.device)
    batch_size = args.batch_size or cfg.eval.batch_size
    num_workers = cfg.data.num_workers if args.num_workers is None else args.num_workers
    resized_gt = args.resized_gt or cfg.eval.resized_gt
    is_main = accelerator.is_main_process

    results = {}
    for split in eval_splits:
        ds = RefSegDataset(source, split, tokenizer, **preprocessing(cfg.model), train=False,
                           max_samples=args.max_samples)
        gallery = None
        if args.gallery:
            gallery = Path(args.gallery) / split if len(eval_splits) > 1 else Path(args.gallery)
        results[split] = evaluate(model, ds, accelerator=accelerator, batch_size=batch_size,
                                  resized_gt=resized_gt, shuffle_text=args.shuffle_text, gallery_dir=gallery,
                                  progress=is_main and not args.no_progress, num_workers=num_workers,
                                  desc=split, mixed_precision=cfg.eval.mixed_precision)

    if is_main:
        mode = f"resized gt {cfg.model.image_size}x{cfg.model.image_size}" if resized_gt else "original size"
        extra = ", shuffled expressions" if args.shuffle_text else ""
        print(f"{ckpt} on {data.name} ({data.split_by}), scored at {mode}{extra}")
        print(format_table(results, title="split"))
        for split, r in results.items():
            per = format_per_type(r)
            if per:
                print(f"per-type mIoU ({split}):\n{per}")
        if args.gallery:
            print(f"gallery: {args.gallery}")
        if args.out:
            payload = {  # what was scored, then the scores: one shape for one split and for --split all
                "checkpoint": str(ckpt), "dataset": data.name, "data_root": str(data.root),
                "split_by": data.split_by, "splits": eval_splits, "shuffle_text": bool(args.shuffle_text),
                "resized_gt": bool(resized_gt), "max_samples": args.max_samples, "results": results}
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
            print(f"wrote {out}")
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    run(main, prog="evaluate.py")
