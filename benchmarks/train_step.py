#!/usr/bin/env python
"""Training-step speed of a config on this machine: ms per optimiser step, images/s, peak memory, MFU.

Runs ``Trainer.train_step`` (the trainer's own device normalisation, forward, loss, backward and fused
AdamW step, with the config's mixed precision) on synthetic batches as the loader gives them: uint8
pixels, 8-word expressions padded to max_tokens, sparse uint8 masks; the median of --repeats steps
after --warmup steps. Weights are random (text and vision too when not available offline). Data
loading, logging and evaluation are not included. FLOPs per image are counted for one training step
(forward + backward) by torch.utils.flop_counter (matmuls, convolutions, attention); MFU divides the
achieved FLOP/s by --peak-tflops (the device's dense bf16 peak) when given.

``--compile`` wraps the model in ``torch.compile`` first and also prints how long the first step took
(compilation included; it is the first warm-up step): what a run pays before compiled steps start
saving time. Inductor's on-disk caches are bypassed, so that figure is a cold compile, as on a fresh
machine (``--compile-cache`` keeps them: what a second run on the same machine pays).

``--text-cache`` also times the step with the frozen text encoder's precomputed features
(``train.text_feature_cache_mb``: a run computes every training expression's once, before its first
step), alternating steps without and with them in the same run so that both see the same machine
load. Without the flag the encoder runs in every step, as this benchmark has always measured.

    python benchmarks/train_step.py [--config C] [--threads N] [--batch-size B] [--compile] [--text-cache] [--json F] [key=value ...]
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from _common import fake_text, load_cfg, offline_model


def train_flops_per_image(trainer, batch: dict) -> float:
    """FLOPs of one forward + backward of ``trainer``'s model on ``batch``, per image.

    Attention runs on SDPA's math backend while counting: the fused CPU kernel is invisible to
    FlopCounterMode (its matmuls would go uncounted).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = trainer.processor.to_device(batch, trainer.accelerator.device)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        trainer.model(**x).loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch["pixel_values"].shape[0]


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
    ap.add_argument("--text-cache", action="store_true",
                    help="also time steps with precomputed text features (alternating with steps that run the encoder)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the figures as JSON here")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    import torch

    from refseg.engine.trainer import Trainer
    from refseg.models.text import TextFeatureTable

    overrides = list(args.overrides)
    if args.threads:
        overrides.append(f"train.cpu_threads={args.threads}")
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    cfg = load_cfg(args.config, overrides)
    notes = offline_model(cfg)
    trainer = Trainer(cfg, progress=False).setup(data=False)  # no run directory
    text = trainer.unwrapped.text_encoder
    if args.text_cache and (not text.frozen or cfg.train.text_feature_cache_mb == 0):
        from refseg.errors import UserError
        raise UserError("--text-cache needs a frozen text encoder (model.text.trainable_layers=none) and "
                        "train.text_feature_cache_mb > 0")
    device = trainer.accelerator.device
    B, S = cfg.train.batch_size, cfg.model.image_size
    g = torch.Generator().manual_seed(0)
    ids, mask = fake_text(cfg, B, "cpu")
    batch = {"pixel_values": torch.randint(0, 256, (B, 3, S, S), generator=g, dtype=torch.uint8),
             "input_ids": ids, "attention_mask": mask,
             "labels": (torch.rand(B, S, S, generator=g) > 0.9).to(torch.uint8)}
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    table = TextFeatureTable(cfg.train.text_feature_cache_mb * 2**20)
    if args.text_cache:  # the batch's expressions, computed as a run computes them before its first step
        text.features = table
        with trainer.accelerator.autocast():
            text.precompute(ids.to(device), mask.to(device))
    text.features = TextFeatureTable(0)  # the baseline: the encoder runs
    flops = train_flops_per_image(trainer, batch)  # before compiling: eager kernels are what is counted
    if args.compile:
        import torch._inductor.config

        torch._inductor.config.force_disable_caches = not args.compile_cache
        trainer.model = torch.compile(trainer.model)
    compiled = (", torch.compile" + (" (cached)" if args.compile_cache else " (cold)")) if args.compile else ""
    print(f"{S} px, batch {B}, {torch.get_num_threads()} threads, mixed precision "
          f"{trainer.accelerator.mixed_precision}, {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, torch {torch.__version__}"
          + compiled + "".join(f"\n  note: {n}" for n in notes))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cached_times = [], []
    for i in range(args.warmup + args.repeats):
        for features, out in [(TextFeatureTable(0), times)] + ([(table, cached_times)] if args.text_cache else []):
            text.features = features
            t0 = time.perf_counter()
            trainer.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out.append(time.perf_counter() - t0)
    step = statistics.median(times[args.warmup:])
    print(f"first step: {times[0]:.1f} s" + (" (compilation included)" if args.compile else ""))
    res = {"config": args.config, "image_size": S, "batch_size": B, "device": str(device),
           "mixed_precision": trainer.accelerator.mixed_precision, "compile": bool(args.compile),
           "first_step_s": times[0], "step_s": step, "images_per_s": B / step,
           "train_gflops_per_image": flops / 1e9, "achieved_tflops": flops * B / step / 1e12, "notes": notes}
    line = (f"Trainer.train_step: {1000 * step:6.1f} ms/step (median of {args.repeats}), {B / step:6.1f} img/s, "
            f"{flops / 1e9:.1f} GFLOP per image (forward + backward), {res['achieved_tflops']:.2f} TFLOP/s")
    if device.type == "cuda":
        res["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        line += f", peak {res['peak_memory_gb']:.1f} GB"
    if args.peak_tflops:
        res["mfu"] = res["achieved_tflops"] / args.peak_tflops
        line += f", MFU {100 * res['mfu']:.1f}% of {args.peak_tflops:g} TFLOP/s"
    print(line)
    if args.text_cache:
        c_step = statistics.median(cached_times[args.warmup:])
        res.update(text_cache_step_s=c_step, text_cache_images_per_s=B / c_step, text_cache_speedup=step / c_step)
        print(f"with precomputed text features (alternating with the steps above): "
              f"{1000 * c_step:6.1f} ms/step, {B / c_step:6.1f} img/s, {step / c_step:.2f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="train_step.py")
