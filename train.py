#!/usr/bin/env python
"""Train a referring-segmentation model.

    accelerate launch -q train.py                    # the embedded default (refshapes, CPU-sized)
    accelerate launch -q train.py --config configs/refcoco.yaml --output-dir runs/refcoco
    accelerate launch -q train.py --resume           # continue the newest run
    accelerate launch -q train.py --output-dir runs/x --overwrite  # start over; the old run -> runs/x.old-1
    accelerate launch -q train.py --config configs/lavt_refcoco.yaml --init-from checkpoints/lavt_refcoco   # fine-tune
    python train.py train.max_steps=200 model.image_size=160
    python train.py --help-config                    # every config key with its type, default and help
    torchrun --standalone --nproc_per_node 8 --max-restarts 2 train.py --output-dir runs/x   # restarts resume by themselves

Any config field can be overridden as key=value by its dotted name. A run never overwrites another:
an --output-dir that holds a run needs --resume or --overwrite, and the default runs/<timestamp> gets a
-2, -3 ... suffix when a simultaneous launch took the name.
"""
from __future__ import annotations

import argparse

from refseg.cli import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="train.py", description=__doc__.split("\n\n")[0],
        epilog="Example: accelerate launch -q train.py train.max_steps=500 model.crossvit.enabled=false",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="YAML config (default: the embedded defaults, same as configs/default.yaml)")
    p.add_argument("--output-dir", default=None,
                   help="run directory (default: a new runs/<timestamp>); one that already holds a run is "
                        "refused unless --resume or --overwrite is given")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir (or the newest run under runs/) from its last "
                        "complete checkpoint; key=value overrides apply on top of its config")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --output-dir that holds a run: the old run is moved to "
                        "<dir>.old-<n> (never deleted)")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from a checkpoint directory's weights (fine-tuning, e.g. a converted LAVT "
                        "checkpoint); the same as train.init_from=CHECKPOINT")
    p.add_argument("--help-config", action="store_true",
                   help="list every config key (type, default, help) and exit")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-4")
    return p


def die_with_the_launcher() -> None:
    """Under ``accelerate launch`` (or torchrun), stop when the launcher dies, even by ``kill -9``.

    The launcher runs this script as its child; killed with SIGKILL it cannot pass the signal on, and
    the training would go on as an orphan. Linux delivers SIGTERM to the child when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing changes. The run's state stays resumable.
    """
    import os
    import sys

    launched = "ACCELERATE_USE_CPU" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ
    if not launched or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG = 1
            return
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before prctl: we are already an orphan
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv=None) -> int:
    die_with_the_launcher()
    args = build_parser().parse_intermixed_args(argv)
    if args.help_config:
        from refseg.config import format_config_help
        print(format_config_help(), end="")
        return 0
    from refseg.cli import quiet_libraries
    quiet_libraries()
    from refseg.config import load_config, load_run_config
    from refseg.engine.rundir import finished_summary, resolve_run_dir
    from refseg.engine.trainer import train

    if args.init_from:
        args.overrides.append(f"train.init_from={args.init_from}")
    if args.resume:
        out = resolve_run_dir(args.output_dir, resume=True)
        cfg = load_run_config(out / "config.yaml", args.overrides)
        done = finished_summary(out, cfg)
        if done is not None:  # nothing to continue: repeating its final evaluation would only rewrite it
            import os
            if os.environ.get("RANK", "0") == "0":
                val = done.get("val") or {}
                score = f"; val mIoU {val['mIoU']:.2f}" if "mIoU" in val else ""
                print(f"{out} is finished ({done['steps']} steps{score}; best checkpoint: {out}/best): nothing "
                      f"to resume. To train it further, raise train.max_steps (or max_epochs / max_minutes) "
                      f"with --resume, or start a new run.")
            return 0
    else:
        out = args.output_dir
        cfg = load_config(args.config, args.overrides)
    summary = train(cfg, output_dir=out, resume=args.resume, overwrite=args.overwrite,
                    progress=not args.no_progress, cpu=args.cpu)
    from accelerate.state import PartialState
    if PartialState().is_main_process and summary.get("val"):
        val = summary["val"]
        types = val.get("per_type") or {}
        extra = ("  (" + ", ".join(f"{k} {v:.1f}" for k, v in sorted(types.items())) + ")") if types else ""
        print(f"done: {summary['steps']} steps in {summary['time_total_s'] / 60:.1f} min; "
              f"val mIoU {val['mIoU']:.2f}  oIoU {val['oIoU']:.2f}  P@0.5 {val['P@0.5']:.2f}{extra}; "
              f"run: {summary['run']} (best checkpoint: {summary['run']}/best)")
    return 0


if __name__ == "__main__":
    from refseg.cli import run
    run(main, prog="train.py")
