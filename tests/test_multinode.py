"""Several machines through accelerate: two "nodes" on localhost (gloo, one process each) train exactly
as one node with two processes, into one run directory written by the main process only."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO, max_weight_diff, run_script, tiny_train_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no",
            "--dynamo_backend", "no", *args]


@pytest.mark.slow
def test_two_localhost_nodes_equal_one_node_with_two_processes(trained_run, tmp_path):
    base, _, _ = trained_run
    args = ["--cpu", "--no-progress",
            *tiny_train_args(base / "data", "train.max_steps=3", "train.eval_every=100", "train.cpu_threads=1")]
    one, two = tmp_path / "one", tmp_path / "two"
    r = run_script(["-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend",
                    "no", "--num_processes", "2", "--main_process_port", _free_port(), REPO / "train.py",
                    "--output-dir", one, *args], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    port = str(_free_port())
    nodes = [subprocess.Popen(_accelerate("--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
                                          "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                                          str(REPO / "train.py"), "--output-dir", str(two), *map(str, args)),
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ))
             for rank in (0, 1)]
    outs = [p.communicate(timeout=900) for p in nodes]
    for p, (_, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-3000:]
    assert "done: 3 steps" in outs[0][0] and "done:" not in outs[1][0]  # only the main process reports
    assert sorted(p.name for p in (two / "state").glob("random_states_*")) == ["random_states_0.pkl",
                                                                              "random_states_1.pkl"]
    assert not list(tmp_path.glob("runs")) and sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    diff = max_weight_diff(one / "last", two / "last")
    assert diff == 0.0, f"two nodes differ from one node with two processes by {diff}"


def test_shipped_accelerate_configs_load():
    """configs/accelerate/*.yaml are valid accelerate config files (accelerate's own loader)."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    found = {p.stem: ClusterConfig.from_yaml_file(str(p)) for p in (REPO / "configs" / "accelerate").glob("*.yaml")}
    assert set(found) == {"multi_gpu", "multi_node", "fsdp"}
    assert found["multi_gpu"].distributed_type == found["multi_node"].distributed_type == DistributedType.MULTI_GPU
    assert found["fsdp"].distributed_type == DistributedType.FSDP
    fsdp = found["fsdp"].fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert found["multi_node"].num_machines == 2 and found["multi_node"].main_process_ip
    assert found["multi_gpu"].num_machines == 1


def test_fsdp_config_wraps_classes_of_our_model(tiny_cfg):
    """accelerate refuses a wrap class the model lacks: every class fsdp.yaml names is in an XCiT model."""
    from accelerate.commands.config.config_args import ClusterConfig

    from refseg.models import build_model

    fsdp = ClusterConfig.from_yaml_file(str(REPO / "configs" / "accelerate" / "fsdp.yaml")).fsdp_config
    names = {type(m).__name__ for m in build_model(tiny_cfg.model, load_pretrained=False).modules()}
    wanted = set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","))
    assert wanted <= names, wanted - names
