"""Restarts that resume by themselves (``train.resume: auto``) under torchrun's elastic agent.

When a worker of a ``torchrun --max-restarts N`` job dies, the agent kills the others and starts
every worker again with the same command line and ``TORCHELASTIC_RESTART_COUNT`` one higher. A
restarted worker finds the run directory its own job wrote, and continues it from its last complete
``state/`` instead of being refused by the never-overwrite rule.

"Its own job" is decided by ``launch.json``, which the main process writes into the run directory
before anything else of the run (``write_launch_record``): the agent's run id
(``TORCHELASTIC_RUN_ID``: torchrun's ``--rdzv-id``, a fresh UUID with ``--standalone``) and, because
torchrun's default run id is the constant ``none``, the host and the agent's process id (the
workers' parent, the same for every restart of one agent). A fresh launch (restart count 0), or a
restart that finds a run of another job, never resumes by itself.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Optional

from .rundir import RUNS_DIR, has_state

LAUNCH_RECORD = "launch.json"
DEFAULT_RUN_ID = "none"  # torchrun's --rdzv-id default: the same for every job


def restart_count() -> int:
    """The elastic agent's restart count of this worker (0: a first attempt, or no agent)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def launch_identity() -> Optional[dict]:
    """Who launched this process: the elastic job's run id, host and agent pid (None outside torchrun)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id:
        return None
    return {"run_id": run_id, "host": socket.gethostname(), "agent_pid": os.getppid()}


def write_launch_record(run: Path) -> None:
    """``<run>/launch.json`` for a run started under torchrun (kept as it is on a restart)."""
    ident = launch_identity()
    path = Path(run) / LAUNCH_RECORD
    if ident is None or path.exists():
        return
    from ..utils import atomic_write_text

    atomic_write_text(path, json.dumps({**ident, "restart_count": restart_count()}, indent=1))


def same_job(run: Path) -> bool:
    """Whether ``run`` was started by an earlier attempt of this elastic job."""
    ident = launch_identity()
    try:
        rec = json.loads((Path(run) / LAUNCH_RECORD).read_text())
    except (OSError, ValueError):
        return False
    if ident is None or rec.get("run_id") != ident["run_id"]:
        return False
    if ident["run_id"] == DEFAULT_RUN_ID:  # torchrun's constant default: only the same agent counts
        return rec.get("host") == ident["host"] and rec.get("agent_pid") == ident["agent_pid"]
    return True


def restarted_run(output_dir: str | Path | None, runs_dir: str | Path = RUNS_DIR) -> Optional[Path]:
    """The run directory an earlier attempt of this elastic job wrote, when this process is a restart.

    ``output_dir``: that directory if it is the job's own; without one, the job's newest run under
    ``runs_dir`` (a restart would otherwise pick a new timestamped name). None on a first attempt.
    """
    if restart_count() < 1 or launch_identity() is None:
        return None
    if output_dir is not None:
        return Path(output_dir) if same_job(Path(output_dir)) else None
    runs = [p for p in Path(runs_dir).glob("*") if p.is_dir() and same_job(p)]
    return max(runs, key=lambda p: (p / LAUNCH_RECORD).stat().st_mtime) if runs else None


__all__ = ["restarted_run", "write_launch_record", "same_job", "restart_count", "has_state", "LAUNCH_RECORD"]


def restart_store_kwargs() -> dict:
    """What ``init_process_group`` needs on a restart of torchrun's elastic agent: the job's store, seen
    through a prefix of this attempt; {} on a first attempt or outside torchrun.

    The agent keeps one store across restarts (``--standalone`` and c10d rendezvous, torch 2.14), so
    without a prefix the restarted workers can read the previous attempt's gloo addresses from it and
    connect to ports nobody listens on any more: "Gloo connectFullMesh failed ... Connection refused",
    or a hang in ``init_process_group``, in about one restart in three here. accelerate passes these
    to ``init_process_group`` (with its own choice of backend)."""
    attempt = restart_count()
    if attempt <= 0 or not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return {}
    import torch.distributed as dist
    from torch.distributed.rendezvous import rendezvous

    store, rank, world_size = next(rendezvous("env://"))
    return {"store": dist.PrefixStore(f"refseg/restart_{attempt}", store), "rank": rank, "world_size": world_size}
