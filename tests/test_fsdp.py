"""FSDP through accelerate's plugin (configs/accelerate/fsdp.yaml: FSDP2, full shard, one unit per
XCiT block): two CPU processes over gloo train the tiny model with sharded parameters, write full
checkpoints that one ordinary process loads, and resume from a sharded state/ to the exact weights of
the uninterrupted run.

accelerate enables FSDP only on GPU-like devices; tests/fsdp_on_cpu.py lets CPU processes take the
same FSDP path (its docstring says exactly what it changes)."""
from __future__ import annotations

import socket

import numpy as np
import pytest

from conftest import REPO, max_weight_diff, run_script, tiny_train_args

FSDP_YAML = REPO / "configs" / "accelerate" / "fsdp.yaml"
ON_CPU = REPO / "tests" / "fsdp_on_cpu.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_train(out, *args):
    r = run_script(["-m", "accelerate.commands.launch", "--config_file", FSDP_YAML, "--num_processes", "2",
                    "--mixed_precision", "no", "--main_process_port", _free_port(), ON_CPU, REPO / "train.py",
                    "--cpu", "--no-progress", "--output-dir", out, *args], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_fsdp_trains_saves_full_checkpoints_and_resumes_exactly(tmp_path):
    from refseg.predictor import Predictor

    args = tiny_train_args(tmp_path / "data", "train.max_steps=3", "train.checkpoint_every=2", "train.eval_every=100",
                           "train.cpu_threads=1")
    ref, run = tmp_path / "ref", tmp_path / "run"
    r = _fsdp_train(ref, *args)
    assert "done: 3 steps" in r.stdout
    # state/ is accelerate's FSDP state: model and optimizer as torch.distributed.checkpoint shards
    state = ref / "state"
    assert sorted(p.name for p in state.iterdir()) == ["optimizer_0", "pytorch_model_fsdp_0", "random_states_0.pkl",
                                                      "random_states_1.pkl", "trainer_state.json"]
    assert len(list((state / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2  # one file per process

    # best/ holds the full weights: one ordinary process loads it (strictly: every key, every shape)
    predictor = Predictor.from_pretrained(ref / "best", device="cpu")
    image = (np.random.default_rng(0).random((48, 56, 3)) * 255).astype(np.uint8)
    mask = predictor.predict(image, "the red circle")
    assert mask.shape == (48, 56) and mask.dtype == bool
    assert max_weight_diff(ref / "best", ref / "last") == 0.0  # best = the final evaluation here

    # stopped after step 2 and resumed: the weights of the uninterrupted run, bit for bit
    _fsdp_train(run, *args, "train.stop_at_step=2")
    assert not (run / "last").exists()
    r = _fsdp_train(run, "--resume")
    assert "resuming" in r.stdout and "at step 2/3" in r.stdout and "done: 3 steps" in r.stdout
    diff = max_weight_diff(ref / "last", run / "last")
    assert diff == 0.0, f"resumed FSDP weights differ from the uninterrupted run's by {diff}"
