"""Optimiser schedule: poly warm-up, and fitting the step count to train.max_minutes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import max_weight_diff, run_script, tiny_train_args
from refseg.config import ConfigError, load_config
from refseg.engine.schedule import poly_warmup_lambda, steps_within_budget


def test_poly_warmup_follows_a_changing_total():
    total = [100]
    f = poly_warmup_lambda(lambda: total[0], warmup_steps=10, power=1.0)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    total[0] = 60
    assert f(60) == 0.0 and f(35) == pytest.approx(0.5)
    assert poly_warmup_lambda(100, 10, 1.0)(55) == pytest.approx(0.5)  # a plain int still works


def test_steps_within_budget():
    # 100 s left, 10 s reserved for the final evaluation, 0.5 s/step plus a 5 s evaluation every 50 steps
    assert steps_within_budget(20, 100.0, 0.5, 5.0, 50, 10.0) == 20 + int(90 / 0.6)
    assert steps_within_budget(20, 1.0, 0.5, 5.0, 50, 10.0) == 21  # over budget: stop at the next step
    assert steps_within_budget(0, 60.0, 1.0, 0.0, 0, 0.0) == 60


def test_schedule_length_precedence_and_validation():
    assert load_config().train.max_steps is None and load_config().train.max_minutes > 0
    with pytest.raises(ConfigError, match="set one of max_steps, max_epochs or max_minutes"):
        load_config(overrides=["train.max_minutes=null"])
    with pytest.raises(ConfigError, match="train.max_minutes: must be positive"):
        load_config(overrides=["train.max_minutes=0"])
    with pytest.raises(ConfigError, match="train.max_steps: must be positive"):
        load_config(overrides=["train.max_steps=0"])


FAULTS = Path(__file__).with_name("faults.py")
# A 30-second budget on the virtual clock of tests/faults.py (0.5 s per optimizer step, nothing else takes
# time): timing starts at step 10, the first plan comes at step 30 (15 s used, 15 s left: 30 more steps)
# and the evaluations (every 15 steps) cost nothing, so every later refit agrees: 60 steps.
BUDGET_ARGS = ("train.max_minutes=0.5", "train.warmup_steps=5", "train.eval_every=15", "train.checkpoint_every=20")
STEP_MS, PLANNED = 500, 60


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """(data root, run dir, CompletedProcess) of an uninterrupted time-budgeted run on the fake clock."""
    base = tmp_path_factory.mktemp("budget")
    out = base / "run"
    r = run_script([FAULTS, "fakeclock", STEP_MS, "train.py", "--no-progress", "--output-dir", out,
                    *tiny_train_args(base / "data", *BUDGET_ARGS)], timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "data", out, r


def test_training_fits_its_time_budget(budget_run):
    """The plan follows from the measured speed alone, and the run keeps to its budget, on any machine."""
    _, out, r = budget_run
    summary = json.loads((out / "summary.json").read_text())
    state = json.loads((out / "state" / "trainer_state.json").read_text())
    assert f"step 30: 0.50 s/step, {PLANNED} steps fit train.max_minutes=0.5" in r.stdout + r.stderr
    assert state["planned_steps"] == summary["steps"] == state["step"] == PLANNED
    assert state["scheduler"]["last_epoch"] == PLANNED
    # the whole run (data generation, training, evaluations) took exactly its 30 seconds of the clock
    assert summary["time_total_s"] == summary["time_train_s"] == PLANNED * STEP_MS / 1000 == 0.5 * 60


def test_a_resumed_time_budgeted_run_keeps_its_planned_steps(budget_run, tmp_path):
    """Stopped at step 40 (after its plan), resumed on the real clock: it trains to the 60 steps it had
    planned, with the uninterrupted run's schedule, and ends with exactly its weights."""
    data, full, _ = budget_run
    out = tmp_path / "run"
    r = run_script([FAULTS, "fakeclock", STEP_MS, "train.py", "--no-progress", "--output-dir", out,
                    *tiny_train_args(data, *BUDGET_ARGS, "train.stop_at_step=40")], timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"stopped at step 40/{PLANNED}" in r.stdout
    r = run_script(["train.py", "--no-progress", "--resume", "--output-dir", out], timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {out} at step 40/{PLANNED}" in r.stdout
    state = json.loads((out / "state" / "trainer_state.json").read_text())
    assert state["step"] == json.loads((out / "summary.json").read_text())["steps"] == PLANNED
    diff = max_weight_diff(full / "last", out / "last")
    assert diff == 0.0, f"resumed weights differ by {diff}"
