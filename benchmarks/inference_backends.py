#!/usr/bin/env python
"""Inference backends on this machine, one table: speed per 640x480 request and agreement with fp32.

For each backend of ``refseg.predictor.BACKENDS`` that runs here (fp32 eager, bf16 autocast,
channels_last, torch.compile, dynamic int8 Linear quantisation, ONNX Runtime through an export):
the median and p90 milliseconds of ``Predictor.predict`` on one 640x480 photo (after --warmup calls;
the first call's time is printed too: torch.compile's warm-up), and, against fp32 eager, the mean mask
IoU over --samples validation expressions of the checkpoint's dataset (refshapes unless it says
otherwise; generated under --data-root when missing) and the largest |delta logit| (the object-minus-
background margin at the image's size) over those samples.

    python benchmarks/inference_backends.py --checkpoint runs/x/best [--samples 50] [--repeats 20]
    python benchmarks/inference_backends.py --checkpoint runs/x/best --backends fp32,bf16,onnx

Timings need a quiet machine: run nothing else meanwhile.
"""
from __future__ import annotations

import copy
import importlib.util
import statistics
import time
from pathlib import Path

import numpy as np
from _common import REPO
from app_latency import DEFAULT_IMAGE, commit, machine


def _samples(ckpt_cfg, data_root, n: int, num_val_images: int | None):
    """(image RGB, expression) of the first ``n`` val expressions of the checkpoint's dataset."""
    from refseg.config import load_config
    from refseg.data.io import read_image
    from refseg.data.refshapes.writer import ensure_refshapes
    from refseg.data.sources import open_source

    cfg = ckpt_cfg if ckpt_cfg is not None else load_config(overrides=[])
    data = cfg.data
    if data_root:
        data.root = data_root
    if str(data.name) == "refshapes":
        if num_val_images:
            data.refshapes.num_val_images = num_val_images
        ensure_refshapes(data, progress=False)
    samples = open_source(data).samples(data.val_split)
    out = []
    for s in samples[:n]:
        out.append((read_image(s.image_path, orientation="stored"), s.sentence))
    return out, f"{data.name} {data.val_split} ({data.root})"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main(argv=None) -> int:
    from refseg.cli import ArgumentParser
    from refseg.errors import UserError
    from refseg.hub import resolve_checkpoint

    ap = ArgumentParser(prog="inference_backends.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="default: the newest runs/*/best")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE), help="default: a 640x480 realref photo")
    ap.add_argument("--text", default="the person on the left")
    ap.add_argument("--backends", default="fp32,bf16,channels_last,compile,int8,onnx")
    ap.add_argument("--samples", type=int, default=50, help="val expressions for the agreement columns")
    ap.add_argument("--data-root", default=None, help="where the dataset is (default: the checkpoint's data.root)")
    ap.add_argument("--num-val-images", type=int, default=None,
                    help="refshapes: generate only this many val images (quick runs)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.samples < 1:
        raise UserError("--repeats and --samples must be at least 1")
    ckpt_path = resolve_checkpoint(args.checkpoint, runs_dir=REPO / "runs")
    import torch

    from refseg.data.io import read_image
    from refseg.models import load_checkpoint
    from refseg.predictor import BACKENDS, Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UserError(f"--backends: unknown {', '.join(unknown)} (choose from {', '.join(BACKENDS)})")
    if Path(args.image).is_file():
        photo = read_image(args.image)
    else:
        photo = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        args.image = "random 640x480 noise (the default photo is not on this machine)"
    ckpt = load_checkpoint(ckpt_path)
    samples, where = _samples(ckpt.run_config, args.data_root, args.samples, args.num_val_images)
    print(f"{time.strftime('%Y-%m-%d')}, commit {commit()}, {machine()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"checkpoint {ckpt_path}; photo {args.image} ({photo.shape[1]}x{photo.shape[0]}); agreement on "
          f"{len(samples)} expressions of {where}")

    ref_margins = None
    rows = []
    for backend in backends:
        if backend == "onnx" and not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")):
            rows.append((backend, "not installed (pip install -e \".[onnx]\")"))
            continue
        try:
            t0 = time.perf_counter()
            pred = Predictor(copy.deepcopy(ckpt.model), ckpt.processor, device="cpu", backend=backend)
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            pred.predict(photo, args.text)
            first = time.perf_counter() - t0
            for _ in range(max(args.warmup - 1, 0)):
                pred.predict(photo, args.text)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                pred.predict(photo, args.text)
                times.append(time.perf_counter() - t0)
            margins = [pred._margin(img, text).numpy() for img, text in samples]
        except Exception as e:  # noqa: BLE001 - one backend failing here is a row of the table
            rows.append((backend, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"))
            continue
        if ref_margins is None:
            if backend != "fp32":
                raise UserError("--backends must start with fp32 (the reference)")
            ref_margins = margins
        iou = statistics.mean(_iou(m > 0, r > 0) for m, r in zip(margins, ref_margins))
        dmax = max(float(np.abs(m - r).max()) for m, r in zip(margins, ref_margins))
        p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else times[0]
        rows.append((backend, f"{1000 * statistics.median(times):8.1f} | {1000 * p90:8.1f} | {1000 * first:9.0f} | "
                              f"{setup:7.1f} | {iou:.4f} | {dmax:.3g}"))
        del pred
    print()
    print("| backend       | median ms | p90 ms   | first call ms | setup s | mean IoU vs fp32 | max abs dlogit |")
    print("|---------------|----------:|---------:|--------------:|--------:|-----------------:|---------------:|")
    for name, cells in rows:
        print(f"| {name:<13} | {cells} |")
    print("\nms: Predictor.predict on the photo (preprocess, forward, mask at 640x480); first call: includes "
          "torch.compile's compilation; setup: building the backend (quantisation, ONNX export).")
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="inference_backends.py")
