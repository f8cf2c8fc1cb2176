"""Run train.py with a fault injected at a chosen point: a SIGKILL, a full disk, a fixed clock.

    python tests/faults.py POINT N train.py [train args...]

POINT names what happens, on the N-th time the process gets there:

- ``torch_save``: SIGKILL inside accelerate's ``save_state``, after the model file is written and
  before the optimizer / scheduler / RNG files (``torch.save``): a half-written checkpoint.
- ``swap``: SIGKILL inside ``atomic_directory``, between moving the old ``state/`` aside and moving
  the new one in (the two-rename swap of platforms without ``renameat2``, forced here): for an
  instant there is no ``state/`` at all.
- ``step``: SIGKILL inside an optimizer step, with its update half applied.
- ``sleep``: never kills itself; each optimizer step sleeps N milliseconds so that a test can kill the
  process from outside at an arbitrary moment.
- ``fsize:state`` / ``fsize:best`` / ``fsize:last``: the disk "fills up" at the N-th save of that
  directory: the process's file-size limit (RLIMIT_FSIZE) drops to 64 KiB, so every larger write fails
  in the kernel (EFBIG) inside the real writers (safetensors, torch.save, json), as on a full disk.
- ``enospc``: the N-th ``safetensors.torch.save_file`` writes half its file, then fails with ENOSPC.
- ``rank1``: SIGKILL rank 1 of a torchrun job at the start of its N-th optimizer step, in the job's first
  attempt only (``TORCHELASTIC_RESTART_COUNT`` 0): the elastic agent's restart then runs unharmed.
- ``clock``: never fails; new run directories are named N (a fixed timestamp, so simultaneous
  launches collide on the name).
- ``fakeclock``: never fails; the trainer and its time budget (``train.max_minutes``) read a virtual
  wall clock that moves by exactly N milliseconds per optimizer step and stands still otherwise (data
  generation and evaluations take no time on it), so a time-budgeted run plans the same steps on every
  machine.

With ``FAULTS_LOG=<file>`` in the environment, every refshapes generation appends a line to it.
"""
from __future__ import annotations

import errno
import os
import resource
import runpy
import signal
import sys
import time

point, arg = sys.argv[1], sys.argv[2]
count = int(arg) if point != "clock" else 0
script = sys.argv[3]
sys.argv = [script, *sys.argv[4:]]
hits = 0


def _arrive() -> bool:
    global hits
    hits += 1
    return hits == count


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


import torch  # noqa: E402

if os.environ.get("FAULTS_LOG"):
    from refseg.data.refshapes import ensure_refshapes

    writer = sys.modules[ensure_refshapes.__module__]  # the module whose write_refshapes it calls
    _write = writer.write_refshapes

    def _logged_write(*args, **kwargs):
        with open(os.environ["FAULTS_LOG"], "a") as f:
            f.write(f"generate {os.getpid()}\n")
        return _write(*args, **kwargs)

    writer.write_refshapes = _logged_write

if point == "torch_save":
    _save = torch.save

    def _patched_save(*args, **kwargs):
        if _arrive():
            _die()
        return _save(*args, **kwargs)

    torch.save = _patched_save
elif point == "swap":
    import refseg.utils

    refseg.utils._rename_exchange = lambda a, b: False
    _replace = os.replace

    def _patched_replace(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        if ".state.old-" in os.fspath(dst) and _arrive():
            _die()

    os.replace = _patched_replace
elif point in ("step", "sleep"):
    _step = torch.optim.AdamW.step

    def _patched_step(self, *args, **kwargs):
        if point == "sleep":
            time.sleep(count / 1000.0)
            return _step(self, *args, **kwargs)
        if _arrive():
            with torch.no_grad():  # half an update: the first parameter group moves, then death
                for p in self.param_groups[0]["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-1.0)
            _die()
        return _step(self, *args, **kwargs)

    torch.optim.AdamW.step = _patched_step
elif point.startswith("fsize:"):
    from refseg.engine.trainer import Trainer

    target = point.split(":", 1)[1]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead

    def _fill_disk_at(name: str) -> None:
        if name == target and _arrive():
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    _save_state, _save_checkpoint = Trainer.save_state, Trainer.save_checkpoint

    def _patched_save_state(self):
        _fill_disk_at("state")
        return _save_state(self)

    def _patched_save_checkpoint(self, name, *args, **kwargs):
        _fill_disk_at(name)
        return _save_checkpoint(self, name, *args, **kwargs)

    Trainer.save_state, Trainer.save_checkpoint = _patched_save_state, _patched_save_checkpoint
elif point == "enospc":
    import safetensors.torch

    _save_file = safetensors.torch.save_file

    def _patched_save_file(tensors, filename, *args, **kwargs):
        if _arrive():
            _save_file(tensors, filename, *args, **kwargs)
            with open(filename, "r+b") as f:  # half the file reached the disk
                f.truncate(os.path.getsize(filename) // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return _save_file(tensors, filename, *args, **kwargs)

    safetensors.torch.save_file = _patched_save_file
elif point == "fakeclock":
    import types

    import refseg.engine.schedule
    import refseg.engine.trainer

    now = [1.0e9]
    fake_time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    fake_time.time = lambda: now[0]
    refseg.engine.trainer.time = refseg.engine.schedule.time = fake_time
    _step = torch.optim.AdamW.step

    def _ticking_step(self, *args, **kwargs):
        now[0] += count / 1000.0
        return _step(self, *args, **kwargs)

    torch.optim.AdamW.step = _ticking_step
elif point == "rank1":
    _step = torch.optim.AdamW.step

    def _patched_step(self, *args, **kwargs):
        if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and _arrive():
            _die()
        return _step(self, *args, **kwargs)

    torch.optim.AdamW.step = _patched_step
elif point == "clock":
    import refseg.engine.rundir

    refseg.engine.rundir._timestamp = lambda: arg
else:
    raise SystemExit(f"unknown fault point {point}")

runpy.run_path(script, run_name="__main__")
