"""SIGKILL at awkward moments, then `--resume`: the run ends with the uninterrupted run's weights.

The reference is the 6-step ``trained_run`` fixture of conftest.py (state every 2 steps, evaluation every 3).
``tests/faults.py`` makes train.py kill itself inside a checkpoint save, between the two renames
of the atomic swap, or in the middle of an optimizer update; one more test kills it from outside at
a seeded random moment.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TRAINED_RUN, max_weight_diff, run_script, tiny_train_args

FAULTS = Path(__file__).with_name("faults.py")


def _state_step(out: Path) -> int:
    return json.loads((out / "state" / "trainer_state.json").read_text())["step"]


def _resume_and_compare(trained_run, out: Path) -> float:
    _, full, _ = trained_run
    r = run_script(["train.py", "--no-progress", "--resume", "--output-dir", out])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in records] == [3, 6]  # evaluations redone after the kill are not doubled
    assert not list(out.glob(".state.*")) and not (out / "state.staging").exists()
    return max_weight_diff(full / "last", out / "last")


@pytest.mark.parametrize("point,count,resumed_from", [
    ("torch_save", 3, 2),  # the second state save (step 4): model written, optimizer/RNG not yet
    ("swap", 1, 2),        # the step-4 swap: old state/ moved aside, new one not yet in place
    ("step", 5, 4),        # half of the 5th optimizer update applied
])
def test_sigkill_then_resume_gives_identical_weights(trained_run, tmp_path, point, count, resumed_from):
    base, _, _ = trained_run
    out = tmp_path / "run"
    r = run_script([FAULTS, point, count, "train.py", "--no-progress", "--output-dir", out,
                    *tiny_train_args(base / "data", *TRAINED_RUN)])
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert not (out / "last").exists()
    if point == "swap":  # the window the swap must survive: no state/ at all
        assert not (out / "state").exists() and list(out.glob(".state.old-*"))
    else:
        assert _state_step(out) == resumed_from
    diff = _resume_and_compare(trained_run, out)
    assert _state_step(out) == 6
    assert diff == 0.0, f"resumed weights differ by {diff}"


def test_sigkill_at_a_random_moment(trained_run, tmp_path):
    """Kill from outside at a seeded random time after the first checkpoint, resume, compare."""
    base, _, _ = trained_run
    out = tmp_path / "run"
    # 400 ms per optimizer step: the run lasts long enough after its first state save to be hit anywhere.
    proc = subprocess.Popen([sys.executable, str(FAULTS), "sleep", "400", "train.py", "--no-progress",
                             "--output-dir", str(out), *tiny_train_args(base / "data", *TRAINED_RUN)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (out / "state" / "trainer_state.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        time.sleep(random.Random(1234).uniform(0.0, 1.2))
        proc.send_signal(signal.SIGKILL)
    finally:
        rc = proc.wait(timeout=60)
        proc.stderr.close()
    assert rc == -signal.SIGKILL, "the run finished before the kill: lengthen its steps"
    diff = _resume_and_compare(trained_run, out)
    assert diff == 0.0, f"resumed weights differ by {diff}"


def test_atomic_directory_failure_keeps_the_old_version(tmp_path):
    """An exception while writing leaves the previous directory untouched and no temporary behind."""
    from refseg.utils import atomic_directory

    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("v2-partial")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_recover_directory_restores_the_previous_version(tmp_path):
    """What a kill between the two renames leaves (no target, an old copy, a finished temporary)."""
    from refseg.utils import recover_directory

    old, new = tmp_path / ".state.old-1234abcd", tmp_path / ".state.tmp-5678abcd"
    old.mkdir()
    (old / "trainer_state.json").write_text("{}")
    new.mkdir()
    assert recover_directory(tmp_path / "state")
    assert (tmp_path / "state" / "trainer_state.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    assert not recover_directory(tmp_path / "other")
