"""Saves that survive a full disk, and readers that never see a half-written checkpoint.

A training run hits a full disk while writing ``state/``, then ``best/``, then ``last/`` (``tests/faults.py``:
the kernel's file-size limit inside the real writers, or a writer that fails half-way with ENOSPC);
each time it stops with one line, keeps what it saved before, and ``--resume`` ends with exactly the
uninterrupted ``trained_run``'s weights. Readers load ``best/`` in a loop while it is being replaced.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import TRAINED_RUN, max_weight_diff, run_script, tiny_train_args
from refseg import utils
from refseg.utils import atomic_directory, read_directory

FAULTS = Path(__file__).with_name("faults.py")


def _tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _state_step(out: Path) -> int:
    return json.loads((out / "state" / "trainer_state.json").read_text())["step"]


def _assert_stopped_cleanly(r, out: Path, what: str, step: int, saved_step: int) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = lines[0]
    assert line.startswith(f"train.py: error: could not write {out / what} at step {step} ("), line
    assert f"state/ of step {saved_step}" in line and f"--resume --output-dir {out}" in line, line
    # nothing half-written is left where a reader or --resume would look
    assert _state_step(out) == saved_step
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name or p.name == "state.staging"]
    assert leftovers == [] and not (out / ".lock").exists()


def test_full_disk_at_every_save_then_resume_gives_identical_weights(trained_run, tmp_path):
    base, full, _ = trained_run
    out = tmp_path / "run"
    # 1. state/ at step 4 (its 2nd save): the kernel refuses the large writes (EFBIG) inside
    #    accelerate's safetensors / torch.save writers.
    r = run_script([FAULTS, "fsize:state", 2, "train.py", "--no-progress", "--output-dir", out,
                    *tiny_train_args(base / "data", *TRAINED_RUN)])
    _assert_stopped_cleanly(r, out, "state", step=4, saved_step=2)
    assert "File too large" in r.stderr
    from refseg.models import load_checkpoint
    load_checkpoint(out / "best")  # the step-3 checkpoint is complete

    # 2. resumed: best/ at step 3 fails half-way through model.safetensors with ENOSPC.
    kept = {name: _tree_bytes(out / name) for name in ("state", "best")}
    r = run_script([FAULTS, "enospc", 1, "train.py", "--no-progress", "--resume", "--output-dir", out])
    _assert_stopped_cleanly(r, out, "best", step=3, saved_step=2)
    assert "No space left on device" in r.stderr
    assert {name: _tree_bytes(out / name) for name in ("state", "best")} == kept  # every byte as it was

    # 3. resumed: trains to the end; last/ fails (file-size limit).
    r = run_script([FAULTS, "fsize:last", 1, "train.py", "--no-progress", "--resume", "--output-dir", out])
    _assert_stopped_cleanly(r, out, "last", step=6, saved_step=6)
    assert not (out / "last").exists()

    # 4. space freed: the run ends exactly as the uninterrupted one.
    r = run_script(["train.py", "--no-progress", "--resume", "--output-dir", out])
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(rec["step"], rec["final"]) for rec in records] == [(3, False), (6, True)]  # redone, not doubled
    assert max_weight_diff(full / "last", out / "last") == 0.0
    assert max_weight_diff(full / "best", out / "best") == 0.0


def test_failed_save_before_any_state_says_start_again(tiny_cfg, tmp_path):
    """A full disk before the first state/ was saved: nothing to resume, the line says --overwrite."""
    from refseg.engine.trainer import Trainer

    trainer = Trainer(tiny_cfg, output_dir=tmp_path / "run")
    trainer.out, trainer.state.step = tmp_path / "run", 2
    line = trainer._save_failure("state", "OSError: [Errno 28] No space left on device")
    assert line == (f"could not write {tmp_path / 'run' / 'state'} at step 2 (OSError: [Errno 28] No space left on "
                    f"device); no resumable state was saved yet: free some space, then start again with "
                    f"--overwrite --output-dir {tmp_path / 'run'}")
    trainer._saved_step = 2
    assert trainer._save_failure("best", "x").endswith(
        f"(state/ of step 2): free some space, then continue with: accelerate launch -q train.py --resume "
        f"--output-dir {tmp_path / 'run'}")


# ---------------------------------------------------------------------------------------------
# Readers while a checkpoint is being replaced
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["exchange", "two_renames"])
def swap_mode(request, tmp_path, monkeypatch):
    """The Linux one-step exchange, and the two-rename swap of other platforms (its missing window)."""
    if request.param == "two_renames":
        monkeypatch.setattr(utils, "_rename_exchange", lambda a, b: False)
    else:
        (tmp_path / "x").mkdir()
        (tmp_path / "y").mkdir()
        if not utils._rename_exchange(tmp_path / "x", tmp_path / "y"):
            pytest.skip("this platform or filesystem has no renameat2(RENAME_EXCHANGE)")
    return request.param


def _write_version(path: Path, version: int) -> None:
    with atomic_directory(path) as tmp:
        for name in ("config.yaml", "model.safetensors", "tokenizer.json"):
            (tmp / name).write_text(f"{version}\n" * 2000)


def _read_version(directory: Path) -> int:
    """Every file of one version carries its number: a mix of two versions raises."""
    found = {int((directory / name).read_text().split("\n", 1)[0])
             for name in ("config.yaml", "model.safetensors", "tokenizer.json")}
    assert len(found) == 1, f"files of versions {sorted(found)} read together"
    return found.pop()


def test_reader_during_the_missing_window(tmp_path, monkeypatch):
    """Two-rename swap paused between its renames: a plain reader fails, read_directory gets a whole version."""
    monkeypatch.setattr(utils, "_rename_exchange", lambda a, b: False)
    target = tmp_path / "best"
    _write_version(target, 1)
    in_window, resume = threading.Event(), threading.Event()
    real_replace = os.replace

    def slow_replace(src, dst):
        real_replace(src, dst)
        if ".best.old-" in str(dst):  # the old version moved aside, the new one not yet in
            in_window.set()
            resume.wait(5)

    monkeypatch.setattr(utils.os, "replace", slow_replace)
    writer = threading.Thread(target=_write_version, args=(target, 2))
    writer.start()
    assert in_window.wait(5)
    with pytest.raises(FileNotFoundError):
        _read_version(target)  # the window is real
    threading.Timer(0.2, resume.set).start()  # the writer finishes while read_directory waits
    assert read_directory(target, _read_version) == 2
    writer.join()
    # a writer killed in the window: after the wait, the previous version is read in place
    resume.clear()
    in_window.clear()
    writer = threading.Thread(target=_write_version, args=(target, 3))
    writer.start()
    assert in_window.wait(5)
    assert read_directory(target, _read_version, wait=0.3) == 2
    resume.set()
    writer.join()


def test_reader_of_a_directory_replaced_mid_read(tmp_path, swap_mode):
    """A swap between a reader's first and second file: the read is repeated on the new version."""
    target = tmp_path / "best"
    _write_version(target, 1)
    calls = []

    def read(directory: Path) -> int:
        first = (directory / "config.yaml").read_text().split("\n", 1)[0]
        if not calls:
            _write_version(target, 2)  # a save lands in the middle of the read
        calls.append(first)
        return _read_version(directory)

    assert read_directory(target, read) == 2 and calls == ["1", "2"]


def _stamp(model, processor, version: int) -> None:
    """Make ``version`` part of every file a checkpoint load reads."""
    with torch.no_grad():
        for p in model.parameters():  # model.safetensors: every tensor
            p.view(-1)[0] = float(version)
    model.config.text.max_tokens = 100 + version  # config.yaml (model.text.max_tokens shapes no weight)
    model.text_encoder.model.config.refseg_version = version  # text/config.json
    processor.max_tokens = 200 + version  # processor_config.json
    processor.tokenizer.model_max_length = 1000 + version  # tokenizer_config.json


def _versions(model, processor) -> dict:
    """{file: the versions a loaded (model, processor) got from it}."""
    return {"model.safetensors": {p.detach().reshape(-1)[0].item() for p in model.parameters()},
            "config.yaml": {model.config.text.max_tokens - 100},
            "text/config.json": {getattr(model.text_encoder.model.config, "refseg_version", None)},
            "processor_config.json": {processor.max_tokens - 200},
            "tokenizer_config.json": {processor.tokenizer.model_max_length - 1000}}


_MID_LOAD: dict = {"target": None}


def _swap_at_second_file(event: str, args) -> None:
    """Audit hook (sys.addaudithook, installed once): while ``_MID_LOAD`` is armed, the second distinct file
    a load opens under its target directory triggers one save of a new version first, so the load reads
    its first file(s) from one version and the rest from the next unless it notices and reads again."""
    st = _MID_LOAD
    if event != "open" or st["target"] is None or st["busy"] or st["done"] or isinstance(args[0], int):
        return
    path = os.fsdecode(args[0])
    if not path.startswith(st["target"] + os.sep):
        return
    st["opened"].add(path)
    if len(st["opened"]) == 2:
        st["busy"] = True
        try:
            st["save"]()
        finally:
            st["busy"], st["done"] = False, True


def test_a_save_between_two_files_of_one_load_is_never_mixed(trained_run, tmp_path):
    """Deterministic: each load (load_checkpoint, as demo.py and evaluate.py; Predictor.from_pretrained, as
    app.py) is interrupted between the files it reads by a whole save of the next version (the platform's
    own swap), and every file carries the version: the load must come back whole, from the newer one."""
    import sys

    from refseg.models import load_checkpoint
    from refseg.predictor import Predictor

    _, run, _ = trained_run
    model, processor = load_checkpoint(run / "best")
    target = tmp_path / "best"
    saved = [0]

    def save_next() -> None:
        saved.append(saved[-1] + 1)
        _stamp(model, processor, saved[-1])
        model.save_pretrained(target, processor=processor)

    _stamp(model, processor, 0)
    model.save_pretrained(target, processor=processor)
    if not _MID_LOAD.get("installed"):
        sys.addaudithook(_swap_at_second_file)
        _MID_LOAD["installed"] = True
    loaders = [lambda: load_checkpoint(target),
               lambda: (lambda p: (p.model, p.processor))(Predictor.from_pretrained(target, device="cpu"))]
    try:
        for load in loaders:
            _MID_LOAD.update(target=str(target), save=save_next, opened=set(), busy=False, done=False)
            loaded = load()
            assert _MID_LOAD["done"], "the load opened fewer than two files: nothing was interrupted"
            _MID_LOAD["target"] = None
            versions = _versions(*loaded)
            assert all(v == {saved[-1]} for v in versions.values()), f"one load mixed versions: {versions}"
    finally:
        _MID_LOAD["target"] = None
    assert saved == [0, 1, 2]


def test_checkpoint_loaders_in_a_loop_while_best_is_saved(trained_run, tmp_path, monkeypatch):
    """Predictor.from_pretrained / load_checkpoint (demo.py, evaluate.py) read best/ over and over while
    another thread saves it again and again with different weights (the platform's own swap: the
    renameat2 exchange on Linux): every load is one whole version. The two-rename swap's missing window
    is tested deterministically above."""
    from refseg.models import RefSegModel, load_checkpoint
    from refseg.predictor import Predictor

    _, run, _ = trained_run
    model, processor = load_checkpoint(run / "best")
    target = tmp_path / "best"

    def save_version(version: int) -> None:
        _stamp(model, processor, version)  # every file carries the version number
        model.save_pretrained(target, processor=processor)

    save_version(0)
    stop, errors, versions_saved = threading.Event(), [], [0]

    def writer():  # saves back to back, with short random pauses, until the reader has what it needs
        rng = random.Random(0)
        try:
            while not stop.is_set():
                save_version(versions_saved[-1] + 1)
                versions_saved.append(versions_saved[-1] + 1)
                time.sleep(rng.uniform(0.3, 1.2))
        except Exception as e:  # reported below
            errors.append(e)

    reads = []
    real_load = RefSegModel._load_directory.__func__

    def counted_load(cls, directory, map_location="cpu"):
        reads.append(directory)
        return real_load(cls, directory, map_location)

    monkeypatch.setattr(RefSegModel, "_load_directory", classmethod(counted_load))
    thread = threading.Thread(target=writer)
    thread.start()
    seen, deadline = [], time.monotonic() + 120
    try:  # at least 4 loads and until a load sees a later save (loads can be faster than saves)
        while (len(seen) < 4 or len(set(seen)) < 2) and time.monotonic() < deadline:
            if len(seen) % 2:
                predictor = Predictor.from_pretrained(target, device="cpu")
                loaded = predictor.model, predictor.processor
            else:
                loaded = load_checkpoint(target)
            versions = _versions(*loaded)
            assert len(set().union(*versions.values())) == 1, f"one load mixed versions {versions}"
            seen.append(versions["config.yaml"].pop())
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert seen == sorted(seen) and len(set(seen)) >= 2, seen  # loads overlapped saves: versions moved on
    print(f"{len(versions_saved) - 1} saves during {len(seen)} loads ({len(reads)} reads: "
          f"{len(reads) - len(seen)} repeated after a swap mid-read); versions loaded {seen}")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_of_a_checkpoint_follows_the_umask(tmp_path, umask):
    """model.safetensors (safetensors writes it 0600) gets the permissions of the rest: 0o666 & ~umask."""
    from conftest import TINY_OVERRIDES
    from refseg.config import load_config
    from refseg.models import build_model

    model = build_model(load_config(overrides=list(TINY_OVERRIDES)))
    old = os.umask(umask)
    try:
        path = model.save_pretrained(tmp_path / "ckpt")
        read_umask = getattr(utils, "current_umask", lambda: None)()
    finally:
        os.umask(old)
    modes = {str(p.relative_to(path)): p.stat().st_mode & 0o777 for p in path.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and "config.yaml" in modes
    assert set(modes.values()) == {0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}
    assert read_umask == umask  # read without changing it
