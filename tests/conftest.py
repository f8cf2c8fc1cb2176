"""Shared test fixtures: tiny configs and an offline environment."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from refseg.utils import offline_environment

offline_environment()

REPO = Path(__file__).resolve().parents[1]
# The 15 real photos in the refer layout: $REFSEG_REALREF, else shared/realref beside the clone (../shared).
REALREF = Path(os.environ.get("REFSEG_REALREF") or REPO.parent / "shared" / "realref").expanduser()


def require_realref() -> Path:
    """REALREF, or skip the test where it is not there; under CI (``CI=true``, where ../shared is always
    checked out beside the clone) a missing folder fails the test instead of skipping it silently."""
    if REALREF.is_dir():
        return REALREF
    msg = (f"realref photos not found at {REALREF}: put shared/ beside the clone (../shared/realref) or set "
           f"REFSEG_REALREF")
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)

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


def score_independently(checkpoint: Path, dataset_dir: Path, split: str, resized_gt: bool = False) -> dict:
    """LAVT's numbers for ``checkpoint`` on one split of a refer-layout dataset, computed without the
    evaluation engine: the samples come from the refs/instances JSON read here, each mask from
    ``Predictor.predict`` (at the image size) and the ground truth from pycocotools, and
    I, U, oIoU = sum(I) / sum(U), mIoU = mean(I / U), P@t = share with I / U >= t are counted here.

    ``resized_gt``: LAVT's test.py protocol instead: the object/background margin at the model's
    input size S x S (``Predictor.predict`` on the image resized to S x S with the model's own
    resizing) against the ground truth resized to S x S by pixel-centre nearest neighbour.
    """
    import json

    import cv2
    import numpy as np
    from pycocotools import mask as mask_utils

    from refseg.predictor import Predictor

    predictor = Predictor.from_pretrained(checkpoint, device="cpu")
    refs_file = next(Path(dataset_dir).glob("refs(*).json"))
    refs = json.loads(refs_file.read_text())
    inst = json.loads((Path(dataset_dir) / "instances.json").read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    images = {im["id"]: im for im in inst["images"]}
    ious, inter, union = [], 0, 0
    for ref in refs:
        if ref["split"] != split:
            continue
        ann = anns[ref["ann_id"]]
        gt = mask_utils.decode(ann["segmentation"]).astype(bool)
        image = cv2.cvtColor(cv2.imread(str(Path(dataset_dir) / "images" / images[ref["image_id"]]["file_name"])),
                             cv2.COLOR_BGR2RGB)
        for s in ref["sentences"]:
            if resized_gt:
                S = predictor.processor.image_size  # model.image_resize: opencv (INTER_LINEAR); S -> S is the identity
                pred = predictor.predict(cv2.resize(image, (S, S), interpolation=cv2.INTER_LINEAR), s["raw"])
                rows = (2 * np.arange(S) + 1) * gt.shape[0] // (2 * S)  # source pixel floor((i + 0.5) H / S)
                cols = (2 * np.arange(S) + 1) * gt.shape[1] // (2 * S)
                g = gt[rows][:, cols]
            else:
                pred, g = predictor.predict(image, s["raw"]), gt
            i, u = int((pred & g).sum()), int((pred | g).sum())
            inter, union = inter + i, union + u
            ious.append(i / u)
    ious = np.array(ious)
    out = {f"P@{t}": 100.0 * float(np.mean(ious >= t)) for t in (0.5, 0.6, 0.7, 0.8, 0.9)}
    out.update(oIoU=100.0 * inter / union, mIoU=100.0 * float(ious.mean()), num_samples=len(ious))
    return out
