#!/usr/bin/env python
"""LAVT (Swin-B + BERT-base) beside refseg's XCiT models: forward time, training-step time, peak memory.

One run on one machine, every model built the same way (random weights; the text encoder from
BertConfig when bert-base-uncased is not at hand), at each size (default 480, 960, 1440 px):

- forward: one image, ``torch.inference_mode``, the median of ``--repeats`` passes after a warm-up;
- training step: ``Trainer.train_step`` (forward, LAVT's weighted cross-entropy + the config's loss,
  backward, fused AdamW) on a batch of ``--batch-size`` (default 2), median after a warm-up step;
- peak memory above what was resident before the timed passes (CUDA: max_memory_allocated; CPU: the
  process's peak resident set, VmHWM, reset before them).

Every measurement runs in a child process (a clean peak), on CPU with its address space limited to what
it has mapped after start-up plus 80% of the memory available then: a forward pass or training step
that needs more fails there ("out of memory" in the table, with the limit in the log) instead of
pushing the machine into the OOM killer. Precision is the same for all (``--mixed-precision``,
default fp32). Prints the machine (CPU model and flags, threads, torch), the date and the git commit,
then a table with ratios to LAVT.

    python benchmarks/backbones.py                                  # 480/960/1440 px, CPU, fp32
    python benchmarks/backbones.py --sizes 480 960 --device cuda --mixed-precision bf16 --json out.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, fake_text, load_cfg, proc_kib, reset_peak_rss, text_source

MODELS = {  # name -> model config (a model section; run sections keep refseg's defaults for all three)
    "LAVT Swin-B": "configs/lavt_swin_b_480.yaml",
    "XCiT-S12/16": "configs/xcit_s12_p16_480.yaml",
    "XCiT-M24/8": "configs/xcit_m24_p8_480.yaml",
}


def machine() -> str:
    """CPU model, the flags that decide matmul speed, threads, torch version."""
    import torch

    cpu, flags = platform.processor() or "unknown CPU", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), cpu)
        flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu} ({os.cpu_count()} cores, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}"
            f"{'; no AMX' if 'amx_tile' not in flags else ''}){gpu}, torch {torch.__version__}")


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        return (sha or "unknown") + ("+changes" if dirty else "")
    except OSError:
        return "unknown"


def _peak_mib(cuda: bool, base) -> float:
    import torch

    if cuda:
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    hwm = proc_kib("VmHWM")
    return (hwm - base) / 1024 if (hwm is not None and base is not None) else float("nan")


def _reset(cuda: bool):
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    reset_peak_rss()
    return proc_kib("VmRSS")


def _timed(fn, repeats: int, cuda: bool) -> list[float]:
    import torch

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def worker(config: str, size: int, batch: int, repeats: int, device: str, mixed_precision: str,
           text_dir: str | None = None) -> dict:
    """Measure one model at one size in this process (``text_dir``: the text model to use); returns the record."""
    import torch

    from refseg.engine.trainer import Trainer
    from refseg.ops import autocast

    overrides = ["model.vision.pretrained=null", f"model.image_size={size}", f"train.batch_size={batch}",
                 f"train.mixed_precision={mixed_precision}", "train.max_steps=100", "train.warmup_steps=0"]
    cfg = load_cfg(config, overrides + ([f"model.text.name={text_dir}"] if text_dir else []))
    torch.manual_seed(0)
    cuda = device == "cuda"
    trainer = Trainer(cfg, progress=False, cpu=not cuda).setup(data=False)  # no run directory
    model, dev = trainer.unwrapped, trainer.accelerator.device
    rec = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "threads": torch.get_num_threads(),
           "precision": trainer.accelerator.mixed_precision}
    g = torch.Generator().manual_seed(0)

    def forward():
        ids, mask = fake_text(cfg, 1, dev)
        x = torch.randn(1, 3, size, size, generator=g).to(dev)
        model.eval()
        with torch.inference_mode(), autocast(dev, mixed_precision):
            model(x, ids, mask)  # warm-up
            base = _reset(cuda)
            t = _timed(lambda: model(x, ids, mask), repeats, cuda)
            return {"forward_s": statistics.median(t), "forward_peak_mib": _peak_mib(cuda, base)}

    def step():
        ids, mask = fake_text(cfg, batch, "cpu")
        b = {"pixel_values": torch.randn(batch, 3, size, size, generator=g), "input_ids": ids,
             "attention_mask": mask, "labels": (torch.rand(batch, size, size, generator=g) > 0.9).long()}
        model.train()
        trainer.train_step(b)  # warm-up (allocates the optimiser state)
        base = _reset(cuda)
        t = _timed(lambda: trainer.train_step(b), repeats, cuda)
        return {"step_s": statistics.median(t), "step_peak_mib": _peak_mib(cuda, base)}

    for phase, fn in (("forward", forward), ("step", step)):
        try:
            rec.update(fn())
        except (RuntimeError, MemoryError) as e:  # over the address-space limit (or out of GPU memory)
            if "memory" not in str(e).lower() and not isinstance(e, MemoryError):
                raise
            rec[f"{phase}_error"] = "out of memory"
            if cuda:
                torch.cuda.empty_cache()
    return rec


def _cell(rec: dict, key: str, fmt: str) -> str:
    """A measured value, or why there is none (e.g. "out of memory" for a training step that did not fit)."""
    if key in rec:
        return fmt.format(rec[key])
    return rec.get(f"{key.split('_')[0]}_error", "-")


def _available_mib() -> float:
    """MemAvailable of this machine (/proc/meminfo), in MiB."""
    kib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                kib = int(line.split()[1])
    except OSError:
        pass
    return kib / 1024 if kib else float("inf")


def _child(args, name: str, size: int, text_dir: str | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", MODELS[name], str(size), "--batch-size", str(args.batch_size),
           "--repeats", str(args.repeats), "--device", args.device, "--mixed-precision", args.mixed_precision]
    cmd += ["--text-dir", text_dir] if text_dir else []
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode or not lines:
        err = (r.stderr.strip().splitlines() or ["exit code %d" % r.returncode])[-1]
        return {"error": err[:200]}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    from refseg.cli import ArgumentParser

    ap = ArgumentParser(prog="backbones.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[480, 960, 1440], help="square image sides (px)")
    ap.add_argument("--batch-size", type=int, default=2, help="training-step batch")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes after one warm-up (median reported)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no", help="the same for every model")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--json", dest="json_out", default=None, help="also write the records as JSON here")
    ap.add_argument("--worker", nargs=2, metavar=("CONFIG", "SIZE"), help=argparse.SUPPRESS)  # one measurement
    ap.add_argument("--text-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        limit_gib = None
        if args.device == "cpu":  # an allocation that would not fit fails here instead of waking the OOM killer
            # the address space already mapped (libraries: ~3 GiB, little of it resident) + 80% of free memory
            limit = int((proc_kib("VmSize") or 0) * 1024 + _available_mib() * 0.8 * 2 ** 20)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            limit_gib = round(_available_mib() * 0.8 / 1024, 1)
        rec = worker(args.worker[0], int(args.worker[1]), args.batch_size, args.repeats, args.device,
                     args.mixed_precision, args.text_dir)
        print(json.dumps({**rec, "memory_limit_gib": limit_gib}))
        return 0

    print(f"machine: {machine()}")
    print(f"date: {datetime.date.today().isoformat()}, commit {commit()}, device {args.device}, precision "
          f"{args.mixed_precision}, training batch {args.batch_size}, median of {args.repeats} after 1 warm-up")
    # one text model for all (random bert-base weights written once when bert-base-uncased is not at hand)
    texts = {}
    for name in args.models:
        text = load_cfg(MODELS[name], []).model.text.name
        if text not in texts:
            texts[text], note = text_source(text)
            if note:
                print(f"note: {note}")
    records = run_all(args, texts)  # (text_source removes its directories when this process ends)
    print_table(args, records)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": machine(), "commit": commit(), "args": vars(args),
                                                   "records": records}, indent=2))
    return 0


def run_all(args, texts: dict) -> dict[str, dict[int, dict]]:
    records: dict[str, dict[int, dict]] = {}
    for name in args.models:
        text_dir = texts[load_cfg(MODELS[name], []).model.text.name]
        records[name] = {}
        for size in sorted(args.sizes):
            t0 = time.time()
            rec = records[name][size] = _child(args, name, size, text_dir)
            print(f"  {name:12s} {size:5d}px  " + ("error: " + rec["error"] if "error" in rec else
                  f"forward {_cell(rec, 'forward_s', '{:.2f} s')} {_cell(rec, 'forward_peak_mib', '{:.0f} MiB')}   "
                  f"step {_cell(rec, 'step_s', '{:.2f} s')} {_cell(rec, 'step_peak_mib', '{:.0f} MiB')}")
                  + f"   ({time.time() - t0:.0f} s, memory limit {rec.get('memory_limit_gib')} GiB)", file=sys.stderr)
    return records


def print_table(args, records: dict[str, dict[int, dict]]) -> None:
    ref = records.get("LAVT Swin-B", {})
    print(f"\n| model | params | size | forward s | x LAVT | train step s (batch {args.batch_size}) | x LAVT | "
          f"peak MiB forward | x LAVT | peak MiB step | x LAVT |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, by_size in records.items():
        for size, r in sorted(by_size.items()):
            if "error" in r:
                print(f"| {name} | | {size} | {r['error']} | | | | | | | |")
                continue
            cells = []
            for key, fmt in (("forward_s", "{:.2f}"), ("step_s", "{:.2f}"), ("forward_peak_mib", "{:.0f}"),
                             ("step_peak_mib", "{:.0f}")):
                base = ref.get(size, {}).get(key)
                cells += [_cell(r, key, fmt), f"{r[key] / base:.2f}" if base and key in r else "-"]
            print(f"| {name} | {r['params_m']:.0f}M | {size} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="backbones.py")
