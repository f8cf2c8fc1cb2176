"""Shared test fixtures: tiny configs and an offline environment."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REALREF = SHARED / "realref"

# A model small enough that a forward/backward takes milliseconds on 2 CPU cores.
TINY_OVERRIDES = [
    "data.image_size=64",
    "model.vision.name=xcit_nano_12_p8",
    "model.vision.embed_dim=32",
    "model.vision.depth=4",
    "model.vision.num_heads=2",
    "model.crossvit.embed_dim=32",
    "model.crossvit.num_heads=2",
    "model.decoder.hidden_dim=32",
]


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
