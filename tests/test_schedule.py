"""Optimiser schedule: poly warm-up, and fitting the step count to train.max_minutes."""
from __future__ import annotations

import json

import pytest

from conftest import run_script, tiny_train_args
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


def test_training_fits_its_time_budget(tmp_path):
    out = tmp_path / "run"
    args = tiny_train_args(tmp_path / "data", "train.max_minutes=0.5", "train.warmup_steps=5",
                           "train.eval_every=15", "train.checkpoint_every=1000")
    r = run_script(["train.py", "--no-progress", "--output-dir", out, *args])
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    state = json.loads((out / "state" / "trainer_state.json").read_text())
    # the step count was planned from the measured speed, recorded, and trained to the end
    assert "steps fit train.max_minutes=0.5" in r.stdout + r.stderr
    assert state["planned_steps"] == summary["steps"] == state["step"] > 30  # first fit after step 30
    assert state["scheduler"]["last_epoch"] == summary["steps"]
    # ... and the whole run (data generation, training, evaluations) kept to its 30-second budget. The
    # first plan comes at step 30; on a machine too slow for even that, the run must stop right after it.
    if summary["steps"] > 31:
        assert summary["time_total_s"] <= 1.3 * 0.5 * 60, summary
