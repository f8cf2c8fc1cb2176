#!/usr/bin/env python
"""Training-step speed of a config on this machine: ms per optimiser step and images/s.

Synthetic inputs (random pixels, 8-word expressions padded to max_tokens, sparse masks), random
weights, the config's loss (CE + Dice + deep supervision, as the trainer computes it), AdamW with the
for-loop and the fused implementation (the trainer uses fused), median of --repeats steps after
--warmup steps. Data loading, logging and evaluation are not included.

    python benchmarks/train_step.py [--config C] [--threads N] [--batch-size B] [key=value ...]
"""
from __future__ import annotations

import statistics
import time

from _common import build_random_model, fake_text, load_cfg


def main(argv=None) -> int:
    from refseg.cli import ArgumentParser

    ap = ArgumentParser(prog="train_step.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's train.batch_size")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    import torch

    from refseg.engine.losses import SegmentationLoss

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_cfg(args.config, args.overrides)
    B, S = args.batch_size or cfg.train.batch_size, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, S, S, generator=g)
    ids, mask = fake_text(cfg, B, "cpu")
    labels = (torch.rand(B, S, S, generator=g) > 0.9).long()
    loss_fn = SegmentationLoss(cfg.loss.class_weights, cfg.loss.dice_weight,
                               deep_supervision_weight=cfg.loss.deep_supervision_weight)
    print(f"{S} px, batch {B}, {torch.get_num_threads()} threads, {torch.__version__}")
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_random_model(cfg)[0].train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=fused)
        times, opt_times = [], []
        for i in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            logits, aux = model(x, ids, mask, return_aux=True)  # as the trainer calls it
            loss = loss_fn(logits, labels, aux.get("deep", ()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            if i >= args.warmup:
                times.append(t2 - t0)
                opt_times.append(t2 - t1)
        step = statistics.median(times)
        print(f"AdamW {'fused   ' if fused else 'for-loop'}: {1000 * step:6.1f} ms/step "
              f"(optimizer {1000 * statistics.median(opt_times):5.1f} ms), {B / step:5.1f} img/s")
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="train_step.py")
