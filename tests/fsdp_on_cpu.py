"""Run train.py under accelerate's FSDP on CPU processes (gloo), for tests only.

    accelerate launch --config_file configs/accelerate/fsdp.yaml tests/fsdp_on_cpu.py train.py [args...]

accelerate (1.15) turns FSDP on only for GPU-like distributed types (``AcceleratorState.__init__``
sets ``DistributedType.FSDP`` in its MULTI_GPU / MULTI_NPU / ... branch); a CPU process group is
``MULTI_CPU`` and keeps DDP, with the FSDP plugin dropped. torch's ``fully_shard`` itself runs on CPU
tensors over gloo, so this wrapper only makes that one decision: a MULTI_CPU state with FSDP asked for
(``ACCELERATE_USE_FSDP=true`` from the launcher) becomes an FSDP state with the launcher's plugin.
Everything after it (prepare, clip_grad_norm_, get_state_dict, save_state / load_state) is accelerate's
own FSDP code.
"""
from __future__ import annotations

import os
import runpy
import sys

import accelerate.state
from accelerate.utils import DistributedType

_init = accelerate.state.AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    wanted = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wanted and self.distributed_type == DistributedType.MULTI_CPU and kwargs.get("fsdp_plugin") is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = kwargs["fsdp_plugin"]
        # as accelerate does for FSDP (state.py): every later AcceleratorState() copies PartialState's back
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


accelerate.state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
