#!/usr/bin/env python
"""Training-step speed of a config on this machine: ms per optimiser step and images/s.

Runs ``Trainer.train_step`` (the trainer's own forward, loss, backward and fused AdamW step, with the
config's mixed precision) on synthetic inputs: random pixels, 8-word expressions padded to max_tokens,
sparse masks; the median of --repeats steps after --warmup steps. Weights are random (the text
encoder's too when it is not available offline). Data loading, logging and evaluation are not included.

    python benchmarks/train_step.py [--config C] [--threads N] [--batch-size B] [key=value ...]
"""
from __future__ import annotations

import statistics
import time

from _common import fake_text, load_cfg, text_source


def main(argv=None) -> int:
    from refseg.cli import ArgumentParser

    ap = ArgumentParser(prog="train_step.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the trainer's choice)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's train.batch_size")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    import torch

    from refseg.engine.trainer import Trainer

    overrides = list(args.overrides)
    if args.threads:
        overrides.append(f"train.cpu_threads={args.threads}")
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    cfg = load_cfg(args.config, overrides)
    source, note = text_source(cfg.model.text.name)
    if source is not None:
        cfg.model.text.name = source
    trainer = Trainer(cfg, progress=False).setup(data=False)  # no run directory
    B, S = cfg.train.batch_size, cfg.model.image_size
    g = torch.Generator().manual_seed(0)
    ids, mask = fake_text(cfg, B, "cpu")
    batch = {"pixel_values": torch.randn(B, 3, S, S, generator=g), "input_ids": ids, "attention_mask": mask,
             "labels": (torch.rand(B, S, S, generator=g) > 0.9).long()}
    print(f"{S} px, batch {B}, {torch.get_num_threads()} threads, mixed precision "
          f"{trainer.accelerator.mixed_precision}, {trainer.accelerator.device}, torch {torch.__version__}"
          + (f" ({note})" if note else ""))
    times = []
    for i in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        trainer.train_step(batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    print(f"Trainer.train_step: {1000 * step:6.1f} ms/step (median of {args.repeats}), {B / step:5.1f} img/s")
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="train_step.py")
