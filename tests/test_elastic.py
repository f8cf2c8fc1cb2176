"""train.resume=auto: a worker restarted by torchrun's elastic agent continues its own job's run by itself."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import REPO, max_weight_diff, run_script, tiny_train_args

FAULTS = Path(__file__).with_name("faults.py")


@pytest.fixture
def elastic_env(monkeypatch):
    """Pretend to be a torchrun worker: set(run_id, restart_count)."""
    def set_env(run_id: str | None, restarts: int = 0):
        if run_id is None:
            monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
        else:
            monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restarts))
    return set_env


def test_only_a_restart_of_the_same_job_finds_its_run(tmp_path, elastic_env):
    from refseg.engine.elastic import restarted_run, write_launch_record

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    elastic_env("job-1", 0)
    write_launch_record(run)
    assert json.loads((run / "launch.json").read_text())["run_id"] == "job-1"
    assert restarted_run(run) is None  # a first attempt never resumes by itself
    elastic_env("job-1", 1)
    assert restarted_run(run) == run
    assert restarted_run(None, runs_dir=tmp_path / "runs") == run  # the default runs/<timestamp> is found too
    elastic_env("job-2", 1)  # another job's restart: not its run
    assert restarted_run(run) is None and restarted_run(None, runs_dir=tmp_path / "runs") is None
    elastic_env(None, 1)  # not under torchrun at all
    assert restarted_run(run) is None


def test_default_run_id_needs_the_same_agent(tmp_path, elastic_env):
    """torchrun's default --rdzv-id is the constant 'none': only the same agent (host, pid) counts."""
    from refseg.engine.elastic import restarted_run, write_launch_record

    elastic_env("none", 0)
    write_launch_record(tmp_path)
    elastic_env("none", 1)
    assert restarted_run(tmp_path) == tmp_path
    rec = json.loads((tmp_path / "launch.json").read_text())
    (tmp_path / "launch.json").write_text(json.dumps({**rec, "agent_pid": os.getppid() + 1}))
    assert restarted_run(tmp_path) is None


@pytest.mark.slow
def test_killed_rank_restarts_and_finishes_with_uninterrupted_weights(trained_run, tmp_path):
    """SIGKILL rank 1 of a `torchrun --nproc_per_node 2 --max-restarts 2` job after its first state (step 2):
    the agent restarts both workers, they continue from state/ with no manual step, and the job ends with
    the weights of the same job run uninterrupted."""
    base, _, _ = trained_run
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--max-restarts", "2"]
    args = ["--cpu", "--no-progress",
            *tiny_train_args(base / "data", "train.max_steps=5", "train.checkpoint_every=2", "train.eval_every=100",
                             "train.cpu_threads=1")]
    ref, out = tmp_path / "ref", tmp_path / "run"
    r = run_script([*launch, REPO / "train.py", "--output-dir", ref, *args], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "elastic restart" not in r.stdout
    r = run_script([*launch, FAULTS, "rank1", 3, REPO / "train.py", "--output-dir", out, *args], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("train.resume=auto: elastic restart 1 continues") == 1, r.stdout[-3000:]
    assert "resuming" in r.stdout and "at step 2/5" in r.stdout
    assert json.loads((out / "state" / "trainer_state.json").read_text())["step"] == 5
    assert not list(tmp_path.glob("run.old-*"))
    diff = max_weight_diff(ref / "last", out / "last")
    assert diff == 0.0, f"restarted weights differ by {diff}"
