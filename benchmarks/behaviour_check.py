#!/usr/bin/env python
"""Same behaviour as another commit: training weights and predictions, side by side.

    python benchmarks/behaviour_check.py --against ccdd8bd --steps 40 --samples 100

Checks out ``--against`` into a temporary git worktree and, with this checkout and that one in turn
(each process imports only its own tree's refseg):

1. trains the embedded default for ``--steps`` fixed steps (``train.max_steps=<steps+1>
   train.stop_at_step=<steps>``: the state is saved and the run stops before the final evaluation)
   on one CPU thread, and compares the two ``state/model.safetensors`` tensor by tensor;
2. runs ``Predictor.predict_logits`` of one checkpoint (the other commit's run's state, saved as a
   checkpoint by that commit's code, which both can read) on the first ``--samples`` refshapes val expressions with both codes,
   and prints the largest |Δlogit| at the image's size and the share of mask pixels that differ.

Both runs use one data folder (``--data-root``, refshapes generated once). Prints what it measured.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from _common import REPO, OtherCommit, comparison_parser, run_in_tree, work_folder

PREDICT = r"""
import sys, numpy as np, torch
from refseg import Predictor
from refseg.config import load_config
from refseg.data import open_source
ckpt, out, n, root = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
pred = Predictor.from_pretrained(ckpt, device="cpu")
cfg = load_config(None, [f"data.root={root}"])
src = open_source(cfg.data)
arrays = {}
for s in src.samples("val")[:n]:
    arrays[str(s.sent_id)] = pred.predict_logits(src.load_image(s), s.sentence).numpy()
np.savez(out, **arrays)
"""

SAVE = r"""
import sys
from refseg.config import load_run_config
from refseg.models import build_model
from safetensors.torch import load_file
run, out = sys.argv[1], sys.argv[2]
cfg = load_run_config(run)
model = build_model(cfg.model, load_pretrained=False)
model.load_state_dict(load_file(f"{run}/state/model.safetensors"))
model.save_pretrained(out, run_config=cfg)
"""


def main(argv=None) -> int:

    import numpy as np
    from safetensors.numpy import load_file

    ap = comparison_parser("behaviour_check.py", __doc__.split("\n\n")[0], 40, "training steps compared")
    ap.add_argument("--samples", type=int, default=100, help="refshapes val expressions predicted (default: 100)")
    args = ap.parse_args(argv)
    work, work_ctx = work_folder(args.work, "behaviour-")

    def _run(tree: Path, run_args: list[str], log: Path) -> None:
        run_in_tree(tree, run_args, log, "behaviour_check.py", threads=1)

    with OtherCommit(args.against, work / "other", "behaviour_check.py") as other:
        trees = {"this": REPO, "other": other}
        train = ["train.py", "--no-progress", f"data.root={args.data_root}", f"train.max_steps={args.steps + 1}",
                 f"train.stop_at_step={args.steps}", "train.cpu_threads=1"]
        for name, tree in trees.items():
            _run(tree, [*train[:2], "--output-dir", str(work / f"run_{name}"), *train[2:]], work / f"train_{name}.log")
        a = load_file(str(work / "run_this" / "state" / "model.safetensors"))
        b = load_file(str(work / "run_other" / "state" / "model.safetensors"))
        same_keys = a.keys() == b.keys()
        differing = [k for k in a if k in b and not np.array_equal(a[k], b[k])]
        wmax = max((float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a if k in b),
                   default=0.0)
        print(f"training, {args.steps} steps of the default on one thread: same keys {same_keys}, "
              f"{len(differing)} of {len(a)} tensors differ, largest |diff| {wmax:.3g}")
        ckpt = work / "checkpoint"
        _run(other, ["-c", SAVE, str(work / "run_other"), str(ckpt)], work / "save.log")
        for name, tree in trees.items():
            _run(tree, ["-c", PREDICT, str(ckpt), str(work / f"pred_{name}.npz"), str(args.samples), args.data_root],
                 work / f"predict_{name}.log")
        p, q = np.load(work / "pred_this.npz"), np.load(work / "pred_other.npz")
        dmax, changed, pixels = 0.0, 0, 0
        for k in p.files:
            x, y = p[k].astype(np.float64), q[k].astype(np.float64)
            dmax = max(dmax, float(np.abs(x - y).max()))
            mx, my = x[1] > x[0], y[1] > y[0]
            changed += int((mx != my).sum())
            pixels += mx.size
        result = {"against": args.against, "steps": args.steps, "same_keys": same_keys,
                  "tensors_differing": len(differing), "weights_max_abs_diff": wmax, "samples": len(p.files),
                  "logits_max_abs_diff": dmax, "mask_pixels_differing": changed, "mask_pixels": pixels}
        print(f"predictions on {len(p.files)} refshapes val expressions (image size): largest |Δlogit| {dmax:.3g}, "
              f"{changed} of {pixels} mask pixels differ ({100.0 * changed / max(1, pixels):.4f} %)")
        print(json.dumps(result))
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
