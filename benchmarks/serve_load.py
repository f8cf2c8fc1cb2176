#!/usr/bin/env python
"""Load on the HTTP API: ``POST /api/segment`` under 1, 4, 8 and 32 concurrent clients.

``python app.py`` on a free 127.0.0.1 port with the serving flags given here, and for each level of
--clients that many client threads send --requests requests in all (each level also stops after
--time-limit seconds). Per level: p50/p95/p99 latency of the 200s, p99/p50, requests/s, 503s, other
errors (any other status or a failed connection), requests per forward (batch) and the server's
resident memory (now and peak). The floor is ``Predictor.predict`` on the same photo in this
process (the model alone); the one-client level alternates with it in blocks of --block requests, so
both medians see the same machine. Last, the server must still answer /api/health, and the ratios
are printed: one client's p50 against the in-process median, each level's requests/s against one
client's in blocks of --block requests just before and after that level.

    python benchmarks/serve_load.py --checkpoint runs/x/best
    python benchmarks/serve_load.py --checkpoint runs/x/best --clients 64 --max-queue 16 --requests 256

Timings need a quiet machine: run nothing else meanwhile.
"""
from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import REPO, start_app
from app_latency import DEFAULT_IMAGE, commit, machine


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB; (nan, nan) where /proc is not there."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = float(line.split()[1]) / 1024
    except OSError:
        pass
    return out.get("VmRSS", float("nan")), out.get("VmHWM", float("nan"))


def _level(url: str, body: bytes, name: str, text: str, clients: int, requests: int, time_limit: float) -> dict:
    """``clients`` threads share ``requests`` requests (stopping at ``time_limit``); counts and latencies."""
    import httpx

    lock = threading.Lock()
    issued = [0]
    lat, codes, errors = [], {}, []
    deadline = time.monotonic() + time_limit

    def worker():
        with httpx.Client(timeout=max(time_limit, 30)) as c:
            while True:
                with lock:
                    if issued[0] >= requests or time.monotonic() > deadline:
                        return
                    issued[0] += 1
                t0 = time.perf_counter()
                try:
                    r = c.post(url + "api/segment", files={"image": (name, body)}, data={"text": text})
                    code = r.status_code
                except httpx.HTTPError as e:
                    code = None
                    with lock:
                        errors.append(type(e).__name__)
                dt = time.perf_counter() - t0
                with lock:
                    codes[code] = codes.get(code, 0) + 1
                    if code == 200:
                        lat.append(dt)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"lat": lat, "codes": codes, "errors": errors, "wall": wall, "sent": issued[0]}


def main(argv=None) -> int:
    from refseg.cli import ArgumentParser
    from refseg.errors import UserError
    from refseg.hub import resolve_checkpoint

    ap = ArgumentParser(prog="serve_load.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="default: the newest runs/*/best")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE), help="default: a 640x480 realref photo")
    ap.add_argument("--text", default="the person on the left")
    ap.add_argument("--clients", default="1,4,8,32", help="concurrency levels, comma-separated")
    ap.add_argument("--requests", type=int, default=64, help="requests per level (default 64)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per level at most (default 120)")
    ap.add_argument("--block", type=int, default=16,
                    help="one client and the in-process Predictor alternate in blocks of this many requests "
                         "(default 16)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads, server and Predictor")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--batch-window-ms", type=float, default=None)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--max-queue", type=int, default=None)
    ap.add_argument("--request-timeout", type=float, default=None)
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    if not levels or min(levels) < 1 or args.requests < 1 or args.time_limit <= 0 or args.block < 1:
        raise UserError("--clients must list positive counts; --requests, --block and --time-limit must be positive")
    ckpt = resolve_checkpoint(args.checkpoint, runs_dir=REPO / "runs")
    import httpx
    import torch

    from refseg.data.io import read_image, write_image
    from refseg.predictor import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="serve-load-")
    if not Path(args.image).is_file():
        noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        args.image = str(write_image(Path(tmp.name) / "noise.jpg", noise))
    image = read_image(args.image)
    body = Path(args.image).read_bytes()
    print(f"{time.strftime('%Y-%m-%d')}, commit {commit()}, {machine()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"checkpoint {ckpt}; image {args.image} ({image.shape[1]}x{image.shape[0]}, {len(body) / 1e3:.0f} KB); "
          f"text {args.text!r}")

    predictor = Predictor.from_pretrained(ckpt, device="cpu", backend=args.backend)

    def in_process(calls: int) -> list[float]:
        """``calls`` + 2 predicts; the seconds of all but the first 2."""
        seconds = []
        for i in range(calls + 2):
            t0 = time.perf_counter()
            predictor.predict(image, args.text)
            if i >= 2:
                seconds.append(time.perf_counter() - t0)
        return seconds

    flags = ["--device", "cpu", "--threads", str(torch.get_num_threads()), "--backend", args.backend]
    for flag in ("batch_window_ms", "max_batch", "max_queue", "request_timeout"):
        if getattr(args, flag) is not None:
            flags += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    log = open(Path(tmp.name) / "server.log", "w")
    proc, url = start_app(ckpt, log, *flags)
    name = Path(args.image).name
    rows, rates, alone, adjacent = [], {}, [], {}
    try:
        health = httpx.get(url + "api/health", timeout=30).json()
        print(f"server: {' '.join(flags)}; batch window {health['batch_window_ms']:g} ms, max batch "
              f"{health['max_batch']}, max queue {health['max_queue']}; RSS {_rss_mb(proc.pid)[0]:.0f} MB idle")
        _level(url, body, name, args.text, 1, 2, 60)  # warm-up

        def counts() -> tuple[int, int]:
            h = httpx.get(url + "api/health", timeout=30).json()
            return h["requests"], h["batches"]

        def block() -> list[float]:
            """One client, --block counted requests (2 more first): their latencies."""
            return _level(url, body, name, args.text, 1, args.block + 2, args.time_limit)["lat"][2:]

        for n in levels:
            if n == 1:
                # One client against the in-process Predictor, in alternating blocks: this VM's speed drifts
                # by a third within minutes, and alternating puts the same drift on both medians. The first
                # 2 calls of each block are not counted (the other process's OpenMP threads may still spin).
                before, parts = counts(), []
                while sum(len(q["lat"]) for q in parts) < args.requests:
                    alone += in_process(args.block)
                    part = _level(url, body, name, args.text, 1, args.block + 2, args.time_limit)
                    part["lat"] = part["lat"][2:]
                    parts.append(part)
                after = counts()
                r = {"lat": [x for q in parts for x in q["lat"]], "wall": sum(q["wall"] for q in parts),
                     "sent": sum(q["sent"] for q in parts), "codes": {}}
                for q in parts:
                    for code, count in q["codes"].items():
                        r["codes"][code] = r["codes"].get(code, 0) + count
            else:
                # One client just before and just after: the level's requests/s is compared with these
                # (the machine's speed drifts within minutes; adjacent blocks see the same machine).
                around = block()
                before = counts()
                r = _level(url, body, name, args.text, n, args.requests, args.time_limit)
                after = counts()
                around += block()
                adjacent[n] = len(around) / max(1e-9, sum(around))
            rss, peak = _rss_mb(proc.pid)
            per_forward = (after[0] - before[0]) / max(1, after[1] - before[1])
            lat = np.array(r["lat"]) * 1000
            q = (lambda p: f"{np.percentile(lat, p):7.1f}") if len(lat) else (lambda p: "      -")
            ok = r["codes"].get(200, 0)
            busy = r["codes"].get(503, 0)
            other = r["sent"] - ok - busy
            rates[n] = ok / r["wall"]
            tail = f"{np.percentile(lat, 99) / np.percentile(lat, 50):7.2f}" if len(lat) else "      -"
            rows.append(f"| {n:7d} | {r['sent']:4d} | {ok:4d} | {busy:4d} | {other:6d} | {q(50)} | {q(95)} | {q(99)} | "
                        f"{tail} | {per_forward:5.2f} | {rates[n]:5.1f} | {rss:6.0f} | {peak:6.0f} |")
            if n == 1:
                one_client = float(np.median(lat)) if len(lat) else float("nan")
            if other:
                rows[-1] += f" other statuses {dict((k, v) for k, v in r['codes'].items() if k not in (200, 503))}"
        still = httpx.get(url + "api/health", timeout=30).status_code
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    if not alone:  # no one-client level: the in-process median alone, after the server has gone
        alone = in_process(args.block * 4)
    model_ms = 1000 * statistics.median(alone)
    print(f"in-process Predictor.predict ({args.backend}): median {model_ms:.1f} ms, "
          f"{1000 / model_ms:.1f} requests/s (n={len(alone)})")
    print()
    print("| clients | sent |  200 |  503 | errors |  p50 ms |  p95 ms |  p99 ms | p99/p50 | batch | req/s |"
          " RSS MB | peak MB |")
    print("|--------:|-----:|-----:|-----:|-------:|--------:|--------:|--------:|--------:|------:|------:|"
          "-------:|--------:|")
    print("\n".join(rows))
    print(f"\nlatency: of the 200s, client side (upload, decode, queue, batch, model, PNG); in-process model alone "
          f"median {model_ms:.1f} ms. After the load: /api/health {still}.")
    if 1 in levels:
        print(f"1 client: p50 {one_client:.1f} ms = {one_client / model_ms:.2f}x the in-process median "
              f"(alternating blocks of {args.block})")
    for n in levels:
        if n > 1:
            print(f"{n} clients: {rates[n] / adjacent[n]:.2f}x the requests/s of 1 client just before and "
                  f"after it ({adjacent[n]:.1f}/s)")
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="serve_load.py")
