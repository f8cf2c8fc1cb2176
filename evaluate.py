#!/usr/bin/env python
"""Evaluate a checkpoint on a referring-segmentation split with LAVT's protocol.

    python evaluate.py --checkpoint runs/x/best --split val
    python evaluate.py --checkpoint runs/x/best --data-root data --dataset refcoco --split-by unc --split all --out m.json
    accelerate launch evaluate.py --checkpoint runs/x/best --split testA     # same numbers, P processes
    python evaluate.py --predictions masks/ --dataset grefcoco --split-by unc --split val   # any system's PNGs

Prints P@0.5..P@0.9, oIoU and mIoU (percent, two decimals), one row per split. Scoring is at the
original image size; ``--resized-gt`` scores at image_size x image_size in fp32 like LAVT's test.py.
``--shuffle-text`` pairs every image with another object's expression (the language ablation).
``--out`` is a plain file and is replaced if it exists; it records what was scored (checkpoint,
dataset, split_by, splits, shuffle_text, resized_gt) beside ``results`` (split -> numbers), and with
one split that split's numbers at the top level too. A non-empty ``--gallery`` directory is refused
unless ``--overwrite`` moves it aside (to DIR.old-<n>).

On a generalized dataset (gRefCOCO layout: grefcoco, grefshapes) it prints the GRES table (gIoU, cIoU,
N-acc, T-acc, Pr@0.7-0.9; a prediction says "no target" exactly when its mask is empty) and its
breakdown by number of targets (0 / 1 / 2+). ``--predictions DIR`` scores masks written by any system,
one PNG per expression (DIR/<sent_id>.png, nonzero = object, the image's size), with the same
protocol and without a checkpoint (then --dataset is needed).
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
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (config.yaml, model.safetensors, "
                                                      "processor) or Hub id org/name[@revision]; or --predictions")
    p.add_argument("--predictions", default=None, metavar="DIR",
                   help="score the masks DIR/<sent_id>.png (nonzero = object) instead of a checkpoint's")
    p.add_argument("--data-root", default=None, help="data folder (default: the checkpoint's data.root, or 'data' "
                                                     "with --dataset)")
    p.add_argument("--dataset", default=None, help="refcoco | refcoco+ | refcocog | refshapes | grefcoco | grefshapes "
                                                   "| a refer- or gRefCOCO-layout folder name | an HF export path "
                                                   "(default: the checkpoint's dataset)")
    p.add_argument("--split-by", default=None, help="unc | umd | google (default: umd for refcocog, the dataset's "
                                                    "own for refshapes / grefshapes, else unc)")
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
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out expressions whose image or mask cannot be read (default: stop with an error), "
                        "and report how many")
    p.add_argument("--max-samples", type=int, default=None, help="score only the first N (ref, sentence) pairs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _load_model(path: Path):
    """The ``Checkpoint`` (model, processor, run config) of a checkpoint directory (a seam for tests)."""
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


def _ensure_synthetic(data, progress: bool) -> None:
    """Regenerate refshapes / grefshapes when they are the dataset (deterministic: the exact data)."""
    if data.name == "refshapes":
        from refseg.data.refshapes import ensure_refshapes
        ensure_refshapes(data, progress=progress)
    elif data.name == "grefshapes":
        from refseg.data.grefshapes import ensure_grefshapes
        ensure_grefshapes(data, progress=progress)


def _write_out(path: str, what: dict, results: dict) -> None:
    """``--out``: what was scored, then ``splits`` and ``results`` (split -> its numbers), one shape for
    one split and for ``--split all``; with one split its numbers are also at the top level (``mIoU``,
    ``oIoU``, ... or ``gIoU``, ``cIoU``, ``N_acc``, ``T_acc``, ``num_samples``, ...). Replaced if it exists."""
    from refseg.utils import atomic_write_text

    payload = {**what, "splits": list(results), "results": results}
    if len(results) == 1:
        payload.update(next(iter(results.values())))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


def _print_results(results: dict, header: str) -> None:
    """LAVT's table, or the GRES table with the breakdown by number of targets on generalized data."""
    from refseg.metrics import format_gres_breakdown, format_gres_table, format_per_type, format_table

    print(header)
    generalized = all("gIoU" in r for r in results.values())
    print(format_gres_table(results, title="split") if generalized else format_table(results, title="split"))
    for split, r in results.items():
        if generalized:
            print(f"by number of targets ({split}):\n{format_gres_breakdown(r)}")
        per = format_per_type(r)
        if per:
            print(f"per-type {'gIoU' if generalized else 'mIoU'} ({split}):\n{per}")


def _main_predictions(args) -> int:
    """``--predictions DIR``: score any system's PNG masks on a dataset, without a checkpoint."""
    from refseg.config import DataConfig
    from refseg.data.check import default_split_by
    from refseg.data.sources import is_hf_export, open_source
    from refseg.engine.predictions import score_predictions

    for flag in ("shuffle_text", "resized_gt", "gallery", "batch_size", "num_workers"):
        if getattr(args, flag) not in (None, False):
            raise UserError(f"--{flag.replace('_', '-')} needs --checkpoint (--predictions scores masks that "
                            "are already written)")
    if not args.dataset:
        raise UserError("--predictions needs --dataset (refcoco | grefcoco | ...; there is no checkpoint to "
                        "take it from)")
    pred_dir = Path(args.predictions).expanduser()
    if not pred_dir.is_dir():
        raise UserError(f"predictions directory not found: {pred_dir} (expected <sent_id>.png files)")
    data = DataConfig()
    data.name = args.dataset
    data.root = args.data_root or "data"
    data.split_by = args.split_by or default_split_by(args.dataset)
    if not (Path(data.root).expanduser() / data.name).exists():  # the synthetic ones: written with the defaults
        _ensure_synthetic(data, progress=not args.no_progress)
    if not is_hf_export(data.name) and not Path(data.root).expanduser().is_dir():
        raise UserError(f"data root not found: {data.root} (use --data-root; see docs/DATA.md)")
    source = open_source(data)
    eval_splits = _eval_splits(source, args.split, data)
    results = {split: score_predictions(source, split, pred_dir, args.max_samples,
                                        progress=not args.no_progress).compute() for split in eval_splits}
    _print_results(results, f"{pred_dir} on {data.name} ({data.split_by}), scored at original size")
    if args.out:
        _write_out(args.out, {"checkpoint": None, "predictions": str(pred_dir), "dataset": data.name,
                              "data_root": str(data.root), "split_by": data.split_by, "shuffle_text": False,
                              "resized_gt": False, "max_samples": args.max_samples}, results)
    return 0


def _eval_splits(source, split: str, data) -> list[str]:
    splits = source.splits()
    if split == "all":
        return [s for s in splits if s != "train"] or splits
    if split in splits:
        return [split]
    raise UserError(f"unknown split '{split}' for {data.name} ({data.split_by}): valid splits are "
                    f"{', '.join(splits + ['all'])}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    for name in ("batch_size", "num_workers", "max_samples"):
        v = getattr(args, name)
        if v is not None and (v < 0 or (v == 0 and name != "num_workers")):
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if bool(args.checkpoint) == bool(args.predictions):
        raise UserError("give either --checkpoint (score a model) or --predictions DIR (score written masks)")
    if args.predictions:
        return _main_predictions(args)

    from refseg.config import load_run_config
    from refseg.data.sources import is_hf_export, open_source  # torch-free: bad input fails fast
    from refseg.hub import resolve_checkpoint
    from refseg.utils import read_directory

    def read_config(ckpt: Path):
        if not (ckpt / "config.yaml").is_file():
            raise UserError(f"{ckpt}: not a checkpoint directory (no config.yaml)")
        return load_run_config(ckpt / "config.yaml")

    from refseg.engine.rundir import check_output_dir

    ckpt = resolve_checkpoint(args.checkpoint)  # a local directory, or a Hub id's snapshot
    # the data settings, read before the (slower) model load so a bad dataset or split fails fast
    cfg = read_directory(ckpt, read_config)  # safe while a training run replaces it
    data = _data_config(cfg, args)
    # Every argument is checked before any work (a refshapes generation takes seconds and disk space).
    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a directory: give a file name such as {Path(args.out) / 'metrics.json'}")
    if args.gallery:
        check_output_dir(args.gallery, args.overwrite)
    if data.name in ("refshapes", "grefshapes"):
        from refseg.data.refshapes import SPLITS
        if args.split != "all" and args.split not in SPLITS:
            raise UserError(f"unknown split '{args.split}' for {data.name}: valid splits are "
                            f"{', '.join([*SPLITS, 'all'])}")
    _ensure_synthetic(data, progress=not args.no_progress)  # deterministic: the exact data the model trained on
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

    from refseg.data.dataset import RefSegDataset
    from refseg.engine.evaluate import evaluate
    from refseg.engine.rundir import claim_output_dir, on_main_process
    from refseg.predictor import in_backend_layout, resolve_backend

    accelerator = Accelerator()
    if args.gallery:  # decided once, before anything is written
        on_main_process(lambda: str(claim_output_dir(args.gallery, args.overwrite)), accelerator.state)
    checkpoint = _load_model(ckpt)
    model, processor = checkpoint.model.to(accelerator.device), checkpoint.processor
    # the Predictor's default backend on this device: the masks scored are its masks
    model = in_backend_layout(model, resolve_backend("auto", accelerator.device))
    batch_size = args.batch_size or cfg.eval.batch_size
    num_workers = cfg.data.num_workers if args.num_workers is None else args.num_workers
    resized_gt = args.resized_gt or cfg.eval.resized_gt
    is_main = accelerator.is_main_process

    results = {}
    for split in eval_splits:
        ds = RefSegDataset(source, split, processor, train=False, max_samples=args.max_samples)
        gallery = None
        if args.gallery:
            gallery = Path(args.gallery) / split if len(eval_splits) > 1 else Path(args.gallery)
        results[split] = evaluate(model, ds, processor, accelerator=accelerator, batch_size=batch_size,
                                  resized_gt=resized_gt, shuffle_text=args.shuffle_text, gallery_dir=gallery,
                                  progress=is_main and not args.no_progress, num_workers=num_workers,
                                  desc=split, mixed_precision=cfg.eval.mixed_precision, skip_bad=args.skip_bad)

    if is_main:
        mode = f"resized gt {cfg.model.image_size}x{cfg.model.image_size}" if resized_gt else "original size"
        extra = ", shuffled expressions" if args.shuffle_text else ""
        _print_results(results, f"{ckpt} on {data.name} ({data.split_by}), scored at {mode}{extra}")
        for split, r in results.items():
            if args.skip_bad:
                first = f" (first: {r['bad_sample_list'][0]['reason']})" if r["bad_samples"] else ""
                print(f"{split}: skipped {r['bad_samples']} unreadable samples (--skip-bad){first}")
        if args.gallery:
            print(f"gallery: {args.gallery}")
        if args.out:
            _write_out(args.out, {"checkpoint": args.checkpoint, "checkpoint_path": str(ckpt), "predictions": None,
                                  "dataset": data.name, "data_root": str(data.root), "split_by": data.split_by,
                                  "shuffle_text": bool(args.shuffle_text), "resized_gt": bool(resized_gt),
                                  "max_samples": args.max_samples}, results)
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    run(main, prog="evaluate.py")
