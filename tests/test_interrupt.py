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


STEP_SLEEP_MS = 400  # per optimizer step (faults.py sleep): steps 3..6 take at least 4 x 0.4 s


def test_sigkill_at_a_random_moment(trained_run, tmp_path):
    """Kill from outside at a random moment of steps 3..6, resume, compare: the moment is drawn afresh on
    every run (its seed is printed; REFSEG_KILL_SEED=<seed> replays one), the step the run resumed from
    is the one its last complete state/ holds, and the weights equal the uninterrupted run's."""
    import os

    base, _, _ = trained_run
    out = tmp_path / "run"
    seed = int(os.environ.get("REFSEG_KILL_SEED") or time.time_ns() % 2**32)
    # From the moment state/ of step 2 appears, steps 3..6 sleep 4 x 400 ms before the run can save step 6
    # and end: a delay drawn from [0, 1.6 s) lands anywhere in them (an update, an evaluation, a save).
    delay = random.Random(seed).uniform(0.0, 4 * STEP_SLEEP_MS / 1000)
    print(f"kill seed {seed}: SIGKILL {delay:.3f} s after the first state/ (REFSEG_KILL_SEED={seed} replays it)")
    proc = subprocess.Popen([sys.executable, str(FAULTS), "sleep", str(STEP_SLEEP_MS), "train.py", "--no-progress",
                             "--output-dir", str(out), *tiny_train_args(base / "data", *TRAINED_RUN)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (out / "state" / "trainer_state.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        rc = proc.wait(timeout=60)
        proc.stderr.close()
    assert rc == -signal.SIGKILL, f"seed {seed}: the run finished before the kill"
    assert not (out / "last").exists()
    saved = _state_step(out)  # the last complete state/ (saved every 2 steps; step 6 cannot be done yet)
    assert saved in (2, 4), f"seed {seed}: state/ of step {saved}"
    _, full, _ = trained_run
    r = run_script(["train.py", "--no-progress", "--resume", "--output-dir", out])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {out} at step {saved}/6" in r.stdout, (seed, r.stdout[-2000:])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in records] == [3, 6]
    assert _state_step(out) == 6
    diff = max_weight_diff(full / "last", out / "last")
    assert diff == 0.0, f"seed {seed} (resumed from step {saved}): weights differ by {diff}"


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
