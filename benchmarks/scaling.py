#!/usr/bin/env python
"""Forward time and peak memory of the full model vs image size: XCA vs global self-attention.

Builds the model of a config (default: configs/default.yaml, else the embedded defaults) twice -
as configured (``model.vision.attention=xca``) and with every XCA swapped for standard multi-head
softmax attention over tokens (same widths, ``model.vision.attention=global``) - and measures one
forward pass (batch 1, torch.inference_mode) at each size: the median of ``--repeats`` runs after
a warm-up, and the peak memory above what was in use before the pass (CUDA: max_memory_allocated;
CPU: peak resident set size from /proc, reset before each pass). Prints a table and, for both
models, t(size)/t(first size) next to the pixel ratio: XCA should track the pixel ratio, global
attention should grow faster.

    python benchmarks/scaling.py                       # 384/768/1152 px
    python benchmarks/scaling.py --sizes 128 256 --repeats 2 --json out.json
    python benchmarks/scaling.py --config configs/xcit_s12_p16_480.yaml --device cuda
    python benchmarks/scaling.py model.crossvit.enabled=false      # any config override

The CrossViT branch's blocks are XCA in both runs (its own, coarser tokens).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_random_model, fake_text, load_cfg, proc_kib, reset_peak_rss  # noqa: E402

import torch  # noqa: E402


def measure(model, cfg, size: int, repeats: int, warmup: int, device: torch.device) -> dict:
    """Median forward seconds and peak extra memory (MiB) at size x size, batch 1."""
    ids, mask = fake_text(cfg, 1, device)
    x = torch.randn(1, 3, size, size, device=device)
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for _ in range(warmup):
            model(x, ids, mask)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            resettable = reset_peak_rss()
            base = proc_kib("VmRSS")
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, ids, mask)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        if cuda:
            peak_mib = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        else:
            hwm = proc_kib("VmHWM")
            peak_mib = (hwm - base) / 1024 if (resettable and hwm is not None and base is not None) else float("nan")
    return {"size": size, "seconds": statistics.median(times), "all_seconds": times, "peak_mib": peak_mib}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--config", default=None, help="config YAML (default: configs/default.yaml if present)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[384, 768, 1152], help="square image sides (px)")
    ap.add_argument("--repeats", type=int, default=3, help="timed forward passes per size (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    ap.add_argument("--device", default="auto", help="cpu | cuda | auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--only", choices=["xca", "global"], default=None, help="measure one variant only")
    ap.add_argument("--json", dest="json_out", default=None, help="write the results as JSON here")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)
    if args.repeats < 1 or any(s < 32 for s in args.sizes):
        ap.error("--repeats must be >= 1 and sizes >= 32")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    variants = [v for v in ("xca", "global") if args.only in (None, v)]
    results: dict[str, list[dict]] = {}
    for variant in variants:
        cfg = load_cfg(args.config, list(args.overrides) + [f"model.vision.attention={variant}"])
        model, note = build_random_model(cfg)
        model = model.to(device).eval()
        if note:
            print(f"note: {note}", file=sys.stderr)
        print(f"[{variant}] {cfg.model.vision.arch} {cfg.model.vision.name} "
              f"crossvit={'on' if cfg.model.crossvit.enabled else 'off'} "
              f"params={sum(p.numel() for p in model.parameters()) / 1e6:.1f}M device={device}", file=sys.stderr)
        results[variant] = []
        for size in args.sizes:
            try:
                r = measure(model, cfg, size, args.repeats, args.warmup, device)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as e:  # e.g. global attention out of memory
                r = {"size": size, "seconds": float("nan"), "peak_mib": float("nan"), "error": str(e).splitlines()[0]}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            results[variant].append(r)
            print(f"  {variant:6s} {size:5d}px  {r['seconds'] * 1000:10.1f} ms  {r['peak_mib']:9.1f} MiB", file=sys.stderr)
        del model
        gc.collect()

    base = args.sizes[0]
    header = f"{'size':>6} {'pixels x':>9}" + "".join(f" {v + ' ms':>12} {v + ' MiB':>12} {v + ' t/t0':>11}" for v in variants)
    print(header)
    for k, size in enumerate(args.sizes):
        row = f"{size:>6} {(size / base) ** 2:>9.2f}"
        for v in variants:
            r, r0 = results[v][k], results[v][0]
            row += f" {r['seconds'] * 1000:>12.1f} {r['peak_mib']:>12.1f} {r['seconds'] / r0['seconds']:>11.2f}"
        print(row)
    ratios = {v: {f"t({s})/t({base})": results[v][k]["seconds"] / results[v][0]["seconds"]
                  for k, s in enumerate(args.sizes) if k} for v in variants}
    for v in variants:
        print(f"{v}: " + ", ".join(f"{name} = {val:.2f}" for name, val in ratios[v].items())
              + "   (pixel ratios: " + ", ".join(f"{(s / base) ** 2:.2f}" for s in args.sizes[1:]) + ")")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"device": str(device), "config": args.config, "sizes": args.sizes,
                                                   "repeats": args.repeats, "overrides": args.overrides,
                                                   "results": results, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
