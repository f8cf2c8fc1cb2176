"""Checkpoints by Hub id, offline: a Hugging Face cache written here in huggingface_hub's own layout
(blobs + snapshot symlinks + refs), served with HF_HUB_OFFLINE=1; what a push would upload; model cards."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_OVERRIDES
from refseg.config import load_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache: Path, repo_id: str, source: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """Put the files of ``source`` into ``cache`` as huggingface_hub stores a downloaded model repo."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    for f in sorted(source.rglob("*")):
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / f.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from refseg.models import build_model

    torch.manual_seed(0)
    cfg = load_config(overrides=list(TINY_OVERRIDES))
    ck = tmp_path_factory.mktemp("ck") / "best"
    build_model(cfg.model).eval().save_pretrained(ck, run_config=cfg)
    return ck


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, checkpoint):
    """An offline Hugging Face cache holding ``org/refseg-tiny`` (the checkpoint) and ``org/not-refseg``."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf" / "hub"
    _cache_repo(cache, "org/refseg-tiny", checkpoint)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "pytorch_model.bin").write_bytes(b"not ours")
    _cache_repo(cache, "org/not-refseg", other)
    # huggingface_hub reads these module constants at call time (its env vars only at import)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_predictor_from_a_hub_id_equals_the_local_directory(hub_cache, checkpoint):
    from refseg.predictor import Predictor

    img = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    local = Predictor.from_pretrained(checkpoint, device="cpu")
    for spec in ("org/refseg-tiny", f"org/refseg-tiny@{COMMIT}"):
        hub = Predictor.from_pretrained(spec, device="cpu")
        assert hub.checkpoint_path.is_relative_to(hub_cache)  # served from the cache's snapshot
        assert np.array_equal(hub.predict_proba(img, "the red circle"), local.predict_proba(img, "the red circle"))


def test_hub_errors_are_one_line(hub_cache):
    from refseg.errors import CheckpointError
    from refseg.models import RefSegModel

    with pytest.raises(CheckpointError, match="not in the Hugging Face cache") as e:
        RefSegModel.from_pretrained("org/unknown-model")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="not a refseg checkpoint"):
        RefSegModel.from_pretrained("org/not-refseg")
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        RefSegModel.from_pretrained("./org/refseg-tiny")  # a path, never an id


def _run(args, cwd, env_extra):
    env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_demo_by_hub_id_offline_and_a_local_path_wins(hub_cache, checkpoint, tmp_path):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(img)
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    r = _run([str(REPO / "demo.py"), "--image", str(img), "--text", "the circle", "--checkpoint", "org/refseg-tiny",
              "--out", str(tmp_path / "o.png"), "--device", "cpu"], tmp_path, env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "o.png").is_file()
    bad = _run([str(REPO / "demo.py"), "--image", str(img), "--text", "x", "--checkpoint", "org/missing"], tmp_path, env)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "error: org/missing" in bad.stderr and "Traceback" not in bad.stderr
    # a local directory spelled like the id wins: a broken one there is reported, not the Hub's
    (tmp_path / "org" / "refseg-tiny").mkdir(parents=True)
    local = _run([str(REPO / "demo.py"), "--image", str(img), "--text", "x", "--checkpoint", "org/refseg-tiny"],
                 tmp_path, env)
    assert local.returncode == 2 and "org/refseg-tiny: missing config.yaml" in local.stderr


def test_push_uploads_the_checkpoint_files_only(checkpoint, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import HfApi

    from refseg.hub import files_to_upload, push

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint, ck)
    (ck / ".env").write_text("TOKEN=secret")
    (ck / "notes.py").write_text("print('hi')")
    (ck / "weights.pth").write_bytes(b"pickle")
    files = files_to_upload(ck)
    assert {"config.yaml", "model.safetensors", "text/config.json", "processor_config.json", "README.md",
            "tokenizer_config.json"} <= set(files)
    assert not {".env", "notes.py", "weights.pth"} & set(files)
    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("create", (repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.setdefault("upload", kw))
    push(ck, "org/name", private=True)
    assert calls["create"] == ("org/name", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls["upload"]["folder_path"] == str(ck) and calls["upload"]["repo_id"] == "org/name"
    assert sorted(calls["upload"]["allow_patterns"]) == sorted(files)
    r = _run(["-m", "refseg.hub", "push", str(ck), "org/name", "--dry-run"], tmp_path, {})
    assert r.returncode == 0, r.stderr
    assert f"would upload {len(files)} files" in r.stdout and ".env" not in r.stdout
    r = _run(["-m", "refseg.hub", "push", str(tmp_path / "nope"), "org/name", "--dry-run"], tmp_path, {})
    assert r.returncode == 2 and "checkpoint directory not found" in r.stderr


def test_model_card_metadata_and_config_changes(tmp_path):
    import yaml

    from refseg.modelcard import model_card

    cfg = load_config(overrides=["model.decoder.hidden_dim=48", "data.name=refcoco", "data.split_by=unc"])
    card = model_card(cfg, {"mIoU": 51.234, "oIoU": 47.5, "P@0.5": 60.0}, "Final evaluation", command="python train.py x",
                      shuffled_text_miou=14.58)
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "refseg" and meta["datasets"] == ["refcoco"] and "refseg" in meta["tags"]
    assert "`model.decoder.hidden_dim`: `48` (default `64`)" in card
    assert "`data.name`: `refcoco` (default `refshapes`)" in card
    assert "| 51.23 | 47.50 | 60.00 |" in card and "python train.py x" in card and "14.58" in card


def test_trained_run_checkpoints_carry_processor_and_card(trained_run):
    """best/ and last/ of a real run: the processor files and a model card whose final scores are
    summary.json's."""
    _, out, _ = trained_run
    summary = json.loads((out / "summary.json").read_text())
    for name in ("best", "last"):
        assert (out / name / "processor_config.json").is_file()
        card = (out / name / "README.md").read_text()
        assert "library_name: refseg" in card and "train.py" in card
    last = (out / "last" / "README.md").read_text()
    assert f"{summary['val']['mIoU']:.2f}" in last and f"step {summary['steps']}" in last
