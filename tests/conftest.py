"""Shared test fixtures: tiny configs and an offline environment."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from refseg.utils import offline_environment

offline_environment()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REALREF = SHARED / "realref"

# A model small enough that a forward/backward takes milliseconds on 2 CPU cores.
TINY_OVERRIDES = [
    "model.image_size=64",
    "model.vision.name=xcit_nano_12_p8",
    "model.vision.embed_dim=32",
    "model.vision.depth=4",
    "model.vision.num_heads=2",
    "model.crossvit.embed_dim=32",
    "model.crossvit.num_heads=2",
    "model.decoder.hidden_dim=32",
]


# Training runs in fp32 on every machine: `auto` would pick bf16 only on CPUs with native bf16
# (avx512_bf16 / AMX), so the same test would run different arithmetic on different machines.
# The bf16 path has its own tests (test_train.py).
TINY_DATA = [
    "train.mixed_precision=no",
    "data.refshapes.num_train_images=24",
    "data.refshapes.num_val_images=6",
    "data.refshapes.num_test_images=2",
    "data.refshapes.image_size=64",
    "data.num_workers=0",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.log_every=1",
    "eval.batch_size=8",
]


def tiny_train_args(root: Path, *extra: str) -> list[str]:
    """train.py overrides for a tiny model on a tiny refshapes set generated under ``root``."""
    return [*TINY_OVERRIDES, *TINY_DATA, f"data.root={root}", *extra]


# The reference run of the train/resume tests: evaluation every 3 steps, state every 2.
TRAINED_RUN = ("train.max_steps=6", "train.eval_every=3", "train.checkpoint_every=2")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(base, run_dir, CompletedProcess) of a 6-step ``TRAINED_RUN``; its data lives in base/data."""
    base = tmp_path_factory.mktemp("train")
    out = base / "run"
    r = run_script(["train.py", "--no-progress", "--output-dir", out, *tiny_train_args(base / "data", *TRAINED_RUN)])
    assert r.returncode == 0, r.stderr[-3000:]
    return base, out, r


def max_weight_diff(ckpt_a: Path, ckpt_b: Path) -> float:
    """Largest absolute difference between two checkpoints' weights (same keys required)."""
    import numpy as np
    from safetensors.numpy import load_file

    a = load_file(str(Path(ckpt_a) / "model.safetensors"))
    b = load_file(str(Path(ckpt_b) / "model.safetensors"))
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a)


@pytest.fixture
def tiny_cfg():
    from refseg.config import load_config

    return load_config(overrides=list(TINY_OVERRIDES))


def run_script(args, cwd=None, timeout=600, env=None):
    """Run a repo script (train.py, demo.py, evaluate.py) in a subprocess; returns CompletedProcess."""
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, *[str(a) for a in args]], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=e)
