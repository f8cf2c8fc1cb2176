#!/usr/bin/env python
"""fp32 against bf16 autocast on this CPU: the measurement behind ``train.mixed_precision: auto``.

``auto`` trains in bf16 on a CPU only when it reports native bf16 arithmetic (``avx512_bf16`` or
``amx_bf16`` in /proc/cpuinfo); without it PyTorch emulates bf16 and is slower. CPUs differ, so this
script measures both on the machine it runs on, forward + backward in each case:

- ``conv+linear``: a 3x3 convolution over (B, C, S/4, S/4) maps and a C -> 4C -> C MLP over the same
  pixels as tokens (the two kinds of work in the model), at the default model's widths;
- ``model``: the default model (or ``--config``) with random weights, its training loss, batch
  ``train.batch_size`` at ``model.image_size``; parameters in fp32, autocast as the trainer uses it.

fp32 and bf16 steps take turns; the script prints the median ms of ``--repeats`` of each after
``--warmup`` and the bf16 / fp32 time ratio (< 1: bf16 is faster), with the CPU's bf16 flags and
what ``auto`` picks here.

    python benchmarks/precision.py [--threads N] [--repeats 10] [--skip-model] [--config C] [key=value ...]
"""
from __future__ import annotations

import contextlib
import statistics
import time

from _common import build_random_model, fake_text, load_cfg


def _median_ms(fns: dict, warmup: int, repeats: int) -> dict:
    """Median ms per call of each function; the functions take turns, so a machine whose load changes
    while it runs (shared CPUs) slows all of them alike."""
    times: dict = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    from refseg.cli import ArgumentParser

    ap = ArgumentParser(prog="precision.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="default: configs/default.yaml")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skip-model", action="store_true", help="only the conv+linear micro-benchmark")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1:
        ap.error("--warmup must be >= 0 and --repeats >= 1")
    import torch
    from torch import nn

    from refseg.engine.trainer import resolve_mixed_precision
    from refseg.utils import cpu_bf16_flags

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_cfg(args.config, args.overrides)
    flags = cpu_bf16_flags()
    print(f"{_cpu_name()}; native bf16 flags: {', '.join(flags) or 'none'}; torch {torch.__version__} "
          f"(kernels: {torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads; "
          f"train.mixed_precision=auto picks {resolve_mixed_precision('auto', use_cpu=True)} here")

    def autocast(dtype):
        return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    g = torch.Generator().manual_seed(0)
    B, S = cfg.train.batch_size, cfg.model.image_size
    C = cfg.model.vision.embed_dim or 96
    conv = nn.Conv2d(C, C, 3, padding=1)
    mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))
    x = torch.randn(B, C, S // 4, S // 4, generator=g)

    def micro(dtype):
        def step():
            with autocast(dtype):
                y = conv(x)
                z = mlp(y.flatten(2).transpose(1, 2))
                loss = z.float().square().mean()
            loss.backward()
        return step

    rows = [("conv+linear", f"({B}, {C}, {S // 4}, {S // 4}) conv3x3 + MLP {C}->{4 * C}->{C}", micro)]

    if not args.skip_model:
        model, note = build_random_model(cfg)
        model.train()
        pixels = torch.randn(B, 3, S, S, generator=g)
        ids, mask = fake_text(cfg, B, "cpu")
        labels = (torch.rand(B, S, S, generator=g) > 0.9).long()

        def model_step(dtype):
            def step():
                with autocast(dtype):
                    loss = model(pixels, ids, mask, labels=labels).loss
                loss.backward()
                model.zero_grad(set_to_none=True)
            return step

        rows.append(("model", f"batch {B} at {S} px" + (f" ({note})" if note else ""), model_step))

    print(f"{'benchmark':<12} {'fp32 ms':>9} {'bf16 ms':>9} {'bf16/fp32':>10}  forward+backward of")
    for name, what, make in rows:
        ms = _median_ms({"fp32": make("fp32"), "bf16": make("bf16")}, args.warmup, args.repeats)
        fp32, bf16 = ms["fp32"], ms["bf16"]
        print(f"{name:<12} {fp32:9.1f} {bf16:9.1f} {bf16 / fp32:9.2f}x  {what}")
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="precision.py")
