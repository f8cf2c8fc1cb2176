#!/usr/bin/env python
"""Latency of the web app's /segment API on this machine, end to end, against the model alone.

Starts ``python app.py`` on a free local port with the checkpoint, calls ``/segment`` through
gradio_client (upload, queue, decode, model, overlay, two PNGs encoded and downloaded) --warmup
times and then --repeats times, and prints the median and 90th percentile; then, in this process,
the same for ``Predictor.predict`` alone (preprocessing, forward, mask at the image's size). The
model is loaded once by the server; every request uses it.

    python benchmarks/app_latency.py [--checkpoint runs/x/best] [--image photo.jpg] [--repeats 20]
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

from _common import REPO, start_app

DEFAULT_IMAGE = REPO.parent / "shared" / "realref" / "images" / "train2014" / "000000155341.jpg"  # 640x480


def machine() -> str:
    """CPU model, usable cores and the flags that decide CPU speed here (bf16 / AMX units)."""
    from refseg.utils import cpu_cores

    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    missing = [f for f in ("avx512_bf16", "amx_bf16") if f not in flags]
    return (f"{model}, {cpu_cores()} cores usable, flags {' '.join(shown) or 'none of avx2/avx512'}"
            + (f" (no {', '.join(missing)})" if missing else ""))


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _stats(times: list[float]) -> str:
    q = statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else times[0]
    return f"median {1000 * statistics.median(times):.0f} ms, p90 {1000 * q:.0f} ms (n={len(times)})"


def main(argv=None) -> int:
    from refseg.cli import ArgumentParser
    from refseg.errors import UserError
    from refseg.hub import resolve_checkpoint

    ap = ArgumentParser(prog="app_latency.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="default: the newest runs/*/best")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE), help="default: a 640x480 realref photo")
    ap.add_argument("--text", default="the person on the left")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads, server and Predictor (default: torch's)")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    ckpt = resolve_checkpoint(args.checkpoint, runs_dir=REPO / "runs")
    import torch
    from gradio_client import Client, handle_file

    from refseg.data.io import read_image
    from refseg.predictor import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    image = read_image(args.image)
    print(f"{date.today().isoformat()}, commit {commit()}, {machine()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"checkpoint {ckpt}; image {args.image} ({image.shape[1]}x{image.shape[0]}); text {args.text!r}")
    with tempfile.NamedTemporaryFile("w", prefix="app-latency-", suffix=".log", delete=False) as log:
        proc, url = start_app(ckpt, log, "--device", "cpu", "--threads", str(torch.get_num_threads()))
        try:
            client = Client(url, verbose=False)
            times = []
            for i in range(args.warmup + args.repeats):
                t0 = time.perf_counter()
                client.predict(handle_file(args.image), args.text, api_name="/segment")
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"/segment through gradio_client: {_stats(times)}")
    predictor = Predictor.from_pretrained(ckpt, device="cpu")
    alone = []
    for i in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        predictor.predict(image, args.text)
        if i >= args.warmup:
            alone.append(time.perf_counter() - t0)
    print(f"Predictor.predict alone:        {_stats(alone)}")
    print(f"app overhead (HTTP, queue, file I/O, overlay, PNGs): "
          f"{1000 * (statistics.median(times) - statistics.median(alone)):.0f} ms at the median")
    os.unlink(log.name)
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="app_latency.py")
