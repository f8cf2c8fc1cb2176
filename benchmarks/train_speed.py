#!/usr/bin/env python
"""Training speed of the embedded default against another commit, side by side: images/s of real runs.

    python benchmarks/train_speed.py --against ccdd8bd --steps 200 --repeats 3 [key=value ...]

Checks out ``--against`` into a temporary git worktree, then runs ``train.py`` of this checkout and of
that one in turn, ``--repeats`` times each (this, other, this, other, ...: both see the same machine
load), every run ``--steps`` fixed steps of the default with no periodic evaluation, on one data folder
(refshapes written once). Images/s is steps x batch size / the run's own ``time_train_s`` (its summary:
data loading, steps and state saves; not start-up, dataset writing or the final evaluation) plus, where
a run has it, ``time_text_features_s`` (the frozen text encoder's features computed before step 1). Prints
every run, the medians and their ratio (this / other). Overrides go to both runs.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from _common import REPO, OtherCommit, comparison_parser, run_in_tree, work_folder


def main(argv=None) -> int:
    ap = comparison_parser("train_speed.py", __doc__.split("\n\n")[0], 200, "training steps per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each tree (default: 3)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the figures as JSON here")
    ap.add_argument("overrides", nargs="*", help="config overrides for both runs (key=value)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        ap.error("--steps and --repeats must be positive")
    work, work_ctx = work_folder(args.work, "train-speed-")
    rates: dict[str, list[float]] = {"this": [], "other": []}
    with OtherCommit(args.against, work / "other", "train_speed.py") as other:
        trees = {"this": REPO, "other": other}
        for k in range(args.repeats):
            for name, tree in trees.items():
                out = work / f"run_{name}_{k}"
                run_in_tree(tree, ["train.py", "--no-progress", "--output-dir", str(out), f"data.root={args.data_root}",
                                   f"train.max_steps={args.steps}", f"train.eval_every={10 * args.steps}",
                                   *args.overrides], work / f"train_{name}_{k}.log", "train_speed.py")
                summary = json.loads((out / "summary.json").read_text())
                batch = int(_config_value(out / "config.yaml", "batch_size"))
                seconds = summary["time_train_s"] + summary.get("time_text_features_s", 0.0)
                rate = summary["steps"] * batch / seconds
                rates[name].append(rate)
                print(f"{name:5s} ({'this checkout' if name == 'this' else args.against}) run {k + 1}: "
                      f"{summary['steps']} steps x {batch} in {seconds:.1f} s = {rate:.1f} img/s",
                      flush=True)
    this, that = statistics.median(rates["this"]), statistics.median(rates["other"])
    print(f"median: this checkout {this:.1f} img/s, {args.against} {that:.1f} img/s: {this / that:.2f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"against": args.against, "steps": args.steps, "images_per_s": rates,
                                                   "median_this": this, "median_other": that,
                                                   "ratio": this / that}, indent=1))
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


def _config_value(path: Path, key: str) -> str:
    """``train.<key>`` of a run's saved config.yaml (either commit's layout)."""
    import yaml

    return str(yaml.safe_load(path.read_text())["train"][key])


if __name__ == "__main__":
    sys.exit(main())
