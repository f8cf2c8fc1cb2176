"""Run train.py and SIGKILL it at a chosen point, as a crash or `kill -9` would.

    python tests/killpoints.py POINT N train.py [train args...]

POINT names where the process kills itself, on the N-th time it gets there:

- ``torch_save``: inside accelerate's ``save_state``, after the model file is written and before the
  optimizer / scheduler / RNG files (``torch.save``): a half-written checkpoint.
- ``swap``: inside ``atomic_directory``, between moving the old ``state/`` aside and moving the new
  one in: for an instant there is no ``state/`` at all.
- ``step``: inside an optimizer step, with its update half applied.
- ``sleep``: never kills itself; each optimizer step sleeps N milliseconds so that a test can kill the
  process from outside at an arbitrary moment.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
import time

point, count = sys.argv[1], int(sys.argv[2])
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

if point == "torch_save":
    _save = torch.save

    def _patched_save(*args, **kwargs):
        if _arrive():
            _die()
        return _save(*args, **kwargs)

    torch.save = _patched_save
elif point == "swap":
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
else:
    raise SystemExit(f"unknown kill point {point}")

runpy.run_path(script, run_name="__main__")
