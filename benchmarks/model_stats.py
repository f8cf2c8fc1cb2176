#!/usr/bin/env python
"""Parameter counts (total / trainable, per part) and forward GMACs of configs at their image size.

    python benchmarks/model_stats.py                                    # configs/default.yaml
    python benchmarks/model_stats.py configs/xcit_s12_p16_480.yaml configs/xcit_m24_p8_480.yaml
    python benchmarks/model_stats.py configs/default.yaml --set model.crossvit.enabled=false

GMACs = FLOPs / 2 counted by torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions and
attention; norms and activations are not counted) for one image and one expression of
``model.text.max_tokens`` tokens. Weights are random (nothing is downloaded).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CONFIG, build_random_model, fake_text, load_cfg  # noqa: E402

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

PARTS = {"encoder": "vision encoder", "text_encoder": "text encoder", "pwams": "PWAM", "gates": "gates",
         "norms": "stage norms", "crossvit": "CrossViT branch", "decoder": "decoder"}


def stats(cfg) -> dict:
    model, note = build_random_model(cfg)
    model.eval()
    parts = {}
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        t = sum(p.numel() for p in child.parameters() if p.requires_grad)
        parts[name] = {"params": n, "trainable": t}
    S = cfg.model.image_size
    ids, mask = fake_text(cfg, 1, torch.device("cpu"))
    model.requires_grad_(False)  # FlopCounterMode's module tracker trips over no-grad views of trainable params
    counter = FlopCounterMode(display=False, depth=1)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, S, S), ids, mask)
    # Per part: modules that ran whose ancestors did not run themselves (the encoder is driven
    # stage by stage, so its blocks are the outermost modules that ran).
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items() if k.startswith("RefSegModel.")}
    outer = [k for k in per_module if not any(k.startswith(o + ".") for o in per_module if o != k)]
    macs = {name: sum(per_module[k] for k in outer if k.split(".")[1] == name) / 2 for name in parts}
    return {"image_size": S, "note": note,
            "params": sum(p["params"] for p in parts.values()),
            "trainable": sum(p["trainable"] for p in parts.values()),
            "gmacs": counter.get_total_flops() / 2e9,
            "parts": {k: dict(v, gmacs=macs[k] / 1e9) for k, v in parts.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("configs", nargs="*", help="config YAMLs (default: configs/default.yaml or the embedded defaults)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to every config (repeatable)")
    ap.add_argument("--json", dest="json_out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    paths = args.configs or [str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None]
    out = {}
    for path in paths:
        cfg = load_cfg(path, args.overrides)
        s = stats(cfg)
        out[path or "<embedded defaults>"] = s
        print(f"{path or '<embedded defaults>'}: {cfg.model.vision.arch} {cfg.model.vision.name} @ {s['image_size']} px, "
              f"text {cfg.model.text.name}")
        if s["note"]:
            print(f"  note: {s['note']}")
        print(f"  {'part':18s} {'params (M)':>11s} {'trainable (M)':>14s} {'GMACs':>9s}")
        for k, v in s["parts"].items():
            print(f"  {PARTS.get(k, k):18s} {v['params'] / 1e6:11.2f} {v['trainable'] / 1e6:14.2f} {v['gmacs']:9.2f}")
        other = s["gmacs"] - sum(v["gmacs"] for v in s["parts"].values())
        print(f"  {'(outside modules)':18s} {'':11s} {'':14s} {abs(other):9.2f}")
        print(f"  {'total':18s} {s['params'] / 1e6:11.2f} {s['trainable'] / 1e6:14.2f} {s['gmacs']:9.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
