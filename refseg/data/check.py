"""Validate a dataset layout and print split sizes.

    python -m refseg.data.check --data-root data --dataset refcoco --split-by unc [--full]
    python -m refseg.data.check --data-root data --dataset grefcoco --split-by unc     # gRefCOCO layout

Checks that the refs file and instances.json load, that every ref's annotation and image entry exist
(and agree on the image), that image files are on disk (a fixed random subset; ``--full``: all), and
decodes a few images and masks (``--full``: every mask, and every image). Exit code 0 when all is
well, 1 when problems were found, 2 when the layout cannot be opened. On a generalized dataset
(gRefCOCO layout) the split table also counts the expressions that name no object (no-target) and
several (multi-target).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..cli import ArgumentParser
from ..errors import DataError
from .sources import ReferSource, open_source
from .types import Source

# Published RefCOCO (UNC) split sizes: refs / sentences (Yu et al. 2016; the refer toolkit's files).
EXPECTED = {
    ("refcoco", "unc"): {"train": (42404, 120624), "val": (3811, 10834), "testA": (1975, 5657),
                         "testB": (1810, 5095)},
}


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m refseg.data.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data", help="folder holding <dataset>/ and images/ (default: data)")
    p.add_argument("--dataset", default="refcoco",
                   help="refcoco | refcoco+ | refcocog | refshapes | grefcoco | grefshapes | any refer- or "
                        "gRefCOCO-layout folder | an HF export path")
    p.add_argument("--split-by", default=None, help="unc | umd | google | ... (default: umd for refcocog, "
                                                    "refshapes / grefshapes for those, else unc)")
    p.add_argument("--full", action="store_true", help="check every image file and decode every mask and image")
    p.add_argument("--sample", type=int, default=200, help="image files checked without --full (default 200)")
    p.add_argument("--decode", type=int, default=20, help="images+masks decoded without --full (default 20)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def default_split_by(dataset: str) -> str:
    name = Path(dataset).name.lower()
    if name == "refcocog":
        return "umd"
    if name in ("refshapes", "grefshapes"):
        return name
    return "unc"


def check(source: Source, full: bool = False, sample: int = 200, decode: int = 20, out=None) -> list[str]:
    """Run the checks on an opened source, print a report to ``out`` (stdout), return the problems found."""
    out = sys.stdout if out is None else out
    problems: list[str] = []

    def problem(msg: str) -> None:
        problems.append(msg)
        if len(problems) <= 20:
            print(f"  problem: {msg}", file=out)

    splits = source.splits()
    per_split = {}
    all_samples = []
    for s in splits:
        try:
            samples = source.samples(s)
        except DataError as e:
            problem(str(e))
            samples = []
        per_split[s] = samples
        all_samples.extend(samples)

    is_refer = isinstance(source, ReferSource)
    if is_refer:
        n_refs = sum(len(source.refs(s)) for s in splits)
        print(f"refs:      {source.refs_path} ({n_refs} refs, {len(all_samples)} sentences)", file=out)
        print(f"instances: {source.instances_path} ({len(source.images)} images, {len(source.anns)} annotations)",
              file=out)
        print(f"images:    {source.image_dir}" + ("" if source.image_dir.is_dir() else "  (MISSING)"), file=out)
        if not source.image_dir.is_dir():
            problem(f"{source.image_dir}: image folder not found")
        # every ref: annotation exists, belongs to the ref's image (generalized: each of its annotations)
        for s in splits:
            for r in source.refs(s):
                for ann_id in (r.ann_id,) if r.ann_ids is None else r.ann_ids:
                    ann = source.anns.get(ann_id)
                    if ann is None:
                        problem(f"{source.instances_path}: ref_id {r.ref_id}: ann_id {ann_id} not found")
                    elif int(ann.get("image_id", r.image_id)) != r.image_id:
                        problem(f"ref_id {r.ref_id}: ann_id {ann_id} is on image {ann.get('image_id')}, "
                                f"the ref says {r.image_id}")
                    elif not ann.get("segmentation"):
                        problem(f"{source.instances_path}: ref_id {r.ref_id}: ann_id {ann_id} has no segmentation")
                if r.image_id not in source.images:
                    problem(f"{source.instances_path}: ref_id {r.ref_id}: image_id {r.image_id} not found")
    else:
        print(f"export:    {source.name} (format {getattr(source, 'format', '?')}, "
              f"{len(all_samples)} sentences)", file=out)

    # image files on disk
    by_image = {}
    for smp in all_samples:
        by_image.setdefault(smp.image_path, smp)
    paths = sorted(by_image)
    rng = np.random.default_rng(0)
    if is_refer:
        chosen = paths if full or len(paths) <= sample else [paths[i] for i in
                                                             sorted(rng.choice(len(paths), sample, replace=False))]
        missing = [p for p in chosen if not Path(p).is_file()]
        for p in missing[:5]:
            problem(f"{p}: image file missing (ref_id {by_image[p].ref_id})")
        if len(missing) > 5:
            problem(f"... {len(missing)} of {len(chosen)} checked image files are missing")
        print(f"image files: {len(chosen) - len(missing)}/{len(chosen)} checked present"
              + ("" if len(chosen) == len(paths) else f" (a random {len(chosen)} of {len(paths)}; --full checks all)"),
              file=out)

    # decode masks (and images)
    if full:
        to_mask = all_samples
        to_image = [by_image[p] for p in paths]
    else:
        k = min(decode, len(all_samples))
        to_mask = [all_samples[i] for i in sorted(rng.choice(len(all_samples), k, replace=False))] if k else []
        to_image = list({smp.image_path: smp for smp in to_mask}.values())
    t0 = time.time()
    seen_refs = set()
    bad_masks = 0
    for smp in to_mask:
        key = (smp.split, smp.ref_id)
        if key in seen_refs:
            continue
        seen_refs.add(key)
        try:
            m = source.load_mask(smp)
            if m.shape != (smp.height, smp.width):
                problem(f"ref_id {smp.ref_id}: mask {m.shape} differs from the image size {smp.height}x{smp.width}")
        except DataError as e:
            bad_masks += 1
            problem(str(e))
    bad_images = 0
    for smp in to_image:
        if is_refer and not Path(smp.image_path).is_file():
            continue  # already reported above (or outside the checked subset)
        try:
            source.load_image(smp)
        except DataError as e:
            bad_images += 1
            problem(str(e))
    print(f"decoded: {len(seen_refs) - bad_masks}/{len(seen_refs)} masks and "
          f"{len(to_image) - bad_images}/{len(to_image)} images ok ({time.time() - t0:.1f}s)", file=out)

    # split sizes
    name = getattr(source, "dataset", None)
    expected = EXPECTED.get((name, getattr(source, "split_by", None)), {})
    print("", file=out)
    generalized = any(smp.generalized for smp in all_samples)
    head = f"{'split':<10} {'refs':>8} {'sentences':>10} {'images':>8}"
    if generalized:  # expressions that name no object / several objects
        head += f" {'no-target':>10} {'multi-target':>13}"
    if expected:
        head += f"   {'expected refs / sentences':>26}"
    print(head, file=out)
    for s in splits:
        samples = per_split[s]
        n_refs = len({smp.ref_id for smp in samples})
        n_img = len({smp.image_id for smp in samples})
        line = f"{s:<10} {n_refs:>8} {len(samples):>10} {n_img:>8}"
        if generalized:
            n_none = sum(1 for smp in samples if smp.num_targets == 0)
            n_multi = sum(1 for smp in samples if smp.num_targets >= 2)
            line += f" {n_none:>10} {n_multi:>13}"
        if expected:
            if s in expected:
                er, es = expected[s]
                ok = (er, es) == (n_refs, len(samples))
                line += f"   {er:>12} / {es:<11}{'ok' if ok else 'DIFFERENT'}"
                if not ok:
                    problem(f"split {s}: {n_refs} refs / {len(samples)} sentences, expected {er} / {es}")
            else:
                line += f"   {'(not in the published splits)':>26}"
        print(line, file=out)
    for s in expected:
        if s not in per_split:
            problem(f"split {s} is missing (expected {expected[s][0]} refs)")
    print("", file=out)
    print("OK" if not problems else f"{len(problems)} problem(s) found", file=out)
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    from types import SimpleNamespace

    args = _parser().parse_args(argv)
    root = Path(args.data_root)
    split_by = args.split_by or default_split_by(args.dataset)
    source = open_source(SimpleNamespace(name=args.dataset, root=str(root), split_by=split_by))
    if isinstance(source, ReferSource):
        print(f"checking {args.dataset} ({split_by}) under {root}")
    else:
        print(f"checking the Hugging Face export {source.name}")
    problems = check(source, full=args.full, sample=args.sample, decode=args.decode)
    return 1 if problems else 0


if __name__ == "__main__":
    from ..cli import run

    run(main, prog="refseg.data.check")
