"""Small shared helpers: atomic directory writes, CPU cores and bf16 support, the offline environment."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Write a directory atomically: yields a temporary sibling; on success it replaces ``path``.

    A crash or kill at any moment leaves either the old complete directory or the new complete one
    at ``path`` (plus, at worst, a stray ``.<name>.tmp-*`` sibling that nothing reads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_directory(path: str | os.PathLike) -> bool:
    """Undo what a kill inside ``atomic_directory`` left behind; True if ``path`` exists afterwards.

    A kill between its two renames leaves no ``path`` but a complete ``.<name>.old-*`` (the previous
    version, complete by construction): put it back. Unfinished ``.<name>.tmp-*`` siblings were never
    trusted and are removed. Call this only where nothing else is writing ``path`` (e.g. on resume).
    """
    path = Path(path)
    parent, name = path.parent, path.name
    if not parent.is_dir():
        return False
    olds = sorted(parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not path.exists() and olds:
        os.replace(olds.pop(0), path)
    for stale in [*olds, *parent.glob(f".{name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    return path.exists()


def _fsync_tree(root: Path) -> None:
    """Flush file contents to disk before the rename makes them visible (power loss safety)."""
    for p in root.rglob("*"):
        if p.is_file():
            try:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


def cpu_bf16_flags() -> list[str]:
    """The native-bf16 flags this CPU reports (``avx512_bf16``, ``amx_bf16``); [] if none or unknown.

    Without them PyTorch emulates bf16 on the CPU, which is slower than fp32.
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in CPU_BF16_FLAGS if f in flags]


OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
}


def offline_environment() -> None:
    """Hugging Face libraries offline and quiet, unless the environment already says otherwise.

    Weights and datasets load from local paths (a Hub download would hang or fail without a network).
    """
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def newest_checkpoint(runs_dir: str | os.PathLike = "runs") -> Path | None:
    """The most recently written ``<runs_dir>/*/best`` checkpoint directory, or None."""
    found = [p for p in Path(runs_dir).glob("*/best") if (p / "model.safetensors").is_file()]
    return max(found, key=lambda p: (p / "model.safetensors").stat().st_mtime) if found else None


def resolve_checkpoint(path: str | os.PathLike | None, runs_dir: str | os.PathLike = "runs") -> Path:
    """``path`` if given, else the newest ``runs/*/best``; UserError (one line) when there is none.

    Checked here: that it exists (before a command spends seconds importing torch); whether it is
    a complete, loadable checkpoint is checked when it is loaded.
    """
    from .errors import CheckpointError, UserError

    if path:
        p = Path(path).expanduser()
        if not p.is_dir():
            what = "not a checkpoint directory" if p.exists() else "checkpoint directory not found"
            raise CheckpointError(f"{what}: {p}")
        return p
    found = newest_checkpoint(runs_dir)
    if found is None:
        raise UserError(f"no checkpoint found under {Path(runs_dir) / '*' / 'best'}: train one with "
                        "`accelerate launch train.py` or pass --checkpoint DIR")
    return found
