#!/usr/bin/env python
"""Training-step speed of a config on this machine: ms per optimiser step and images/s.

Runs ``Trainer.train_step`` (the trainer's own forward, loss, backward and fused AdamW step, with the
config's mixed precision) on synthetic inputs: random pixels, 8-word expressions padded to max_tokens,
sparse masks; the median of --repeats steps after --warmup steps. Weights are random (the text
encoder's too when it is not available offline). Data loading, logging and evaluation are not included.

``--compile`` wraps the model in ``torch.compile`` first and also prints how long the first step took
(compilation included; it is the first warm-up step): what a run pays before compiled steps start
saving time. Inductor's on-disk caches are bypassed, so that figure is a cold compile, as on a fresh
machine (``--compile-cache`` keeps them: what a second run on the same machine pays).

    python benchmarks/train_step.py [--config C] [--threads N] [--batch-size B] [--compile] [key=value ...]
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
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (default inductor backend)")
    ap.add_argument("--compile-cache", action="store_true",
                    help="with --compile: use inductor's on-disk caches (default: a cold compile)")
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
    source, note = text_source(cfg.model.text.name, weights=True)
    if source is not None:
        cfg.model.text.name = source
    trainer = Trainer(cfg, progress=False).setup(data=False)  # no run directory
    B, S = cfg.train.batch_size, cfg.model.image_size
    g = torch.Generator().manual_seed(0)
    ids, mask = fake_text(cfg, B, "cpu")
    batch = {"pixel_values": torch.randn(B, 3, S, S, generator=g), "input_ids": ids, "attention_mask": mask,
             "labels": (torch.rand(B, S, S, generator=g) > 0.9).long()}
    if args.compile:
        import torch._inductor.config

        torch._inductor.config.force_disable_caches = not args.compile_cache
        trainer.model = torch.compile(trainer.model)
    compiled = (", torch.compile" + (" (cached)" if args.compile_cache else " (cold)")) if args.compile else ""
    print(f"{S} px, batch {B}, {torch.get_num_threads()} threads, mixed precision "
          f"{trainer.accelerator.mixed_precision}, {trainer.accelerator.device}, torch {torch.__version__}"
          + compiled + (f" ({note})" if note else ""))
    times = []
    for i in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        trainer.train_step(batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[args.warmup:])
    print(f"first step: {times[0]:.1f} s" + (" (compilation included)" if args.compile else ""))
    print(f"Trainer.train_step: {1000 * step:6.1f} ms/step (median of {args.repeats}), {B / step:5.1f} img/s")
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="train_step.py")
