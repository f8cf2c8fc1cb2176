"""Run and output directories: a new run never shares a directory, and nothing a user trained is overwritten.

The decision is made once, on the main process, before any process writes anything; every process
of the launch gets the same answer (``on_main_process``)::

    --output-dir DIR, DIR holds a run    refused (RunDirectoryError) unless --resume or --overwrite
    --output-dir DIR --overwrite         the old run is moved to DIR.old-<n> (never deleted)
    --resume [--output-dir DIR]          DIR, or the newest run with saved state under runs/
    (no --output-dir)                    runs/<YYYYmmdd-HHMMSS>, made with an exclusive mkdir;
                                         -2, -3 ... when another launch took the name

A run is "there" when the directory holds any of ``RUN_ENTRIES`` (or an atomic write's leftovers).
While a training uses a directory its main process holds an ``fcntl.flock`` on ``DIR/.lock``, so a
second launch into the same directory (``--resume`` twice, ``--overwrite`` of a live run) is refused.
A process forked from the trainer (a DataLoader worker) closes its copy of the lock's descriptor at
once (``os.register_at_fork``): the lock dies with the trainer, so ``--resume`` works right after a
``kill -9`` even while orphaned workers are still winding down.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

from ..errors import RunDirectoryError, UserError
from ..utils import recover_directory

T = TypeVar("T")

RUNS_DIR = "runs"
TRAINER_STATE = "trainer_state.json"
# What a training writes into its directory; any of these means "a run is here".
RUN_ENTRIES = ("config.yaml", "state", "best", "last", "metrics.jsonl", "summary.json", "logs", "state.staging")
SWAPPED = ("state", "best", "last")  # written with atomic_directory (leftovers: .state.old-*, .best.tmp-*)
LOCK_FILE = ".lock"


def run_entries(path: str | Path) -> list[str]:
    """The names in ``path`` that belong to a run (directories with a trailing ``/``), sorted; [] if none."""
    path = Path(path)
    if not path.is_dir():
        return []
    found = []
    for entry in path.iterdir():
        name = entry.name
        if name in RUN_ENTRIES or any(name.startswith(f".{s}.") for s in SWAPPED):
            found.append(name + ("/" if entry.is_dir() else ""))
    return sorted(found)


def has_state(run: Path) -> bool:
    """Whether ``run`` holds resumable state (also the previous one a kill mid-swap left aside)."""
    return (run / "state" / TRAINER_STATE).is_file() or any(
        (p / TRAINER_STATE).is_file() for p in run.glob(".state.old-*"))


def latest_run(runs_dir: str | Path = RUNS_DIR) -> Optional[Path]:
    """The run under ``runs_dir`` whose state was saved last (``--resume`` without ``--output-dir``)."""
    def saved(run: Path) -> float:
        return max(p.stat().st_mtime for p in [run / "state", *run.glob(".state.old-*")] if p.exists())

    runs = [p for p in Path(runs_dir).glob("*") if p.is_dir() and has_state(p)]
    return max(runs, key=saved) if runs else None


def resolve_run_dir(output_dir: str | Path | None, resume: bool, runs_dir: str | Path = RUNS_DIR) -> Path:
    """Where a launch would train, without creating or changing anything.

    ``--resume``: ``output_dir`` (it must hold saved state) or the newest resumable run. Otherwise
    ``output_dir``, or the name a new timestamped run would try first.
    """
    if resume:
        if output_dir is None:
            found = latest_run(runs_dir)
            if found is None:
                raise RunDirectoryError(f"--resume: nothing to resume (no run with saved state under {runs_dir}/; "
                                        f"name one with --output-dir)")
            return found
        out = Path(output_dir)
        if not has_state(out):
            raise RunDirectoryError(f"--resume: nothing to resume in {out} (no saved state there)")
        return out
    return Path(output_dir) if output_dir is not None else Path(runs_dir) / _timestamp()


SCHEDULE_KEYS = ("max_steps", "max_epochs", "max_minutes")  # train.*: what decides where a run ends


def finished_summary(run: str | Path, config=None) -> Optional[dict]:
    """The ``summary.json`` of ``run`` if the run is finished, else None.

    Finished: its final evaluation was written for the step its last state holds, and ``config`` (the
    config a ``--resume`` would continue with, overrides applied) keeps the schedule the run ended
    with (``train.max_steps``, ``max_epochs``, ``max_minutes``). A resume that raises one of them
    trains on; one that does not would only repeat the final evaluation and rewrite the records.
    """
    import json

    run = Path(run)
    try:
        summary = json.loads((run / "summary.json").read_text())
        step = json.loads((run / "state" / TRAINER_STATE).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(summary, dict) or summary.get("steps") != step or summary.get("stopped_early"):
        return None
    if config is not None:
        from ..config import load_run_config

        try:
            saved = load_run_config(run / "config.yaml").train
        except (UserError, OSError):
            return None
        if any(getattr(saved, k) != getattr(config.train, k) for k in SCHEDULE_KEYS):
            return None
    return summary


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _aside_name(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.old-{n}")


def _next_aside(path: Path) -> Path:
    return next(_aside_name(path, n) for n in itertools.count(1) if not _aside_name(path, n).exists())


def move_aside(path: Path) -> Path:
    """Rename ``path`` to the first free ``<path>.old-<n>`` (never deletes); returns the new name.

    The name is reserved with an exclusive mkdir first, so two launches never pick the same one;
    the rename then replaces that empty directory (POSIX rename onto an empty directory).
    """
    for n in itertools.count(1):
        target = _aside_name(path, n)
        try:
            target.mkdir()
        except FileExistsError:
            continue
        os.replace(path, target)
        return target
    raise AssertionError("unreachable")


def create_unique_dir(parent: Path, name: str) -> Path:
    """``parent/name``, else ``name-2``, ``name-3`` ...: the first one this process creates (exclusive mkdir)."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        path = parent / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


class RunDirectory:
    """A run directory claimed by this launch's main process (``RunDirectory.claim``).

    Attributes: ``path``; ``created`` (this launch made the directory); ``moved_to`` (where
    ``--overwrite`` put the previous run, else None). ``release()`` gives the lock up.
    """

    def __init__(self, path: Path, created: bool, moved_to: Optional[Path] = None):
        self.path, self.created, self.moved_to = path, created, moved_to
        self._lock_fd: Optional[int] = None

    @classmethod
    def claim(cls, output_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
              runs_dir: str | Path = RUNS_DIR) -> "RunDirectory":
        """Decide where this launch trains, and take the directory (see the module docstring).

        Raises ``RunDirectoryError`` (nothing changed on disk) when the directory holds a run and
        neither ``resume`` nor ``overwrite`` is given, when another training uses it, or when there is
        nothing to resume.
        """
        if resume and overwrite:
            raise RunDirectoryError("--resume continues a run and --overwrite starts it over: give one of them")
        if resume:
            run = cls(resolve_run_dir(output_dir, resume=True, runs_dir=runs_dir), created=False)
            run._lock()
            for name in SWAPPED:  # a kill mid-swap may have left only the previous version (we hold the lock)
                recover_directory(run.path / name)
            return run
        if output_dir is None:
            run = cls(create_unique_dir(Path(runs_dir), _timestamp()), created=True)
            run._lock()
            return run
        path = Path(output_dir)
        if path.exists() and not path.is_dir():
            raise RunDirectoryError(f"--output-dir {path} is a file, not a directory: choose another --output-dir")
        moved = None
        if run_entries(path):
            if not overwrite:
                raise already_a_run(path)
            _refuse_if_in_use(path)
            moved = move_aside(path)
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, created=created, moved_to=moved)
        run._lock()
        if run_entries(path):  # another launch claimed, trained and left between our check and our lock
            run.release(remove=True)
            raise already_a_run(path)
        return run

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise in_use(self.path) from None
        except OSError:  # a filesystem without flock: go on unlocked
            pass
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        _HELD_LOCKS.add(fd)

    def release(self, remove: bool = False) -> None:
        """Give up the lock. ``remove``: also undo the claim (the run failed before it wrote anything):
        the lock file, and the directory itself if this launch created it and it is empty."""
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            (self.path / LOCK_FILE).unlink()
            if remove and self.created:
                self.path.rmdir()
        _HELD_LOCKS.discard(self._lock_fd)
        os.close(self._lock_fd)
        self._lock_fd = None


# The descriptors of the run-directory locks this process holds. A flock belongs to the open file
# description, which a fork shares: a forked DataLoader worker would keep the lock after the trainer
# died (kill -9) until it noticed and exited. Children close their copies as soon as they are forked.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def already_a_run(path: Path) -> RunDirectoryError:
    entries = run_entries(path)
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    return RunDirectoryError(f"{path} already holds a run ({shown}): continue it with --resume, start over with "
                             f"--overwrite (keeps the old run as {_next_aside(path)}), or choose another --output-dir")


def in_use(path: Path) -> RunDirectoryError:
    try:
        pid = (path / LOCK_FILE).read_text().strip()
    except OSError:
        pid = ""
    return RunDirectoryError(f"{path} is in use by another training{f' (pid {pid})' if pid else ''}: "
                             f"wait for it to finish or choose another --output-dir")


def _refuse_if_in_use(path: Path) -> None:
    """Raise if a live training holds ``path``'s lock (without creating a lock file in an old run)."""
    import fcntl

    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise in_use(path) from None
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_dir(path: str | Path, overwrite: bool = False, option: str = "--gallery") -> Path:
    """Raise what ``claim_output_dir`` would refuse, changing nothing (a command's check before its work)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{option} {path} is a file, not a directory: choose another {option}")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise RunDirectoryError(f"{option} {path} is not empty: choose another {option}, or add --overwrite "
                                f"(keeps the old contents as {_next_aside(path)})")
    return path


def claim_output_dir(path: str | Path, overwrite: bool = False, option: str = "--gallery") -> Path:
    """An output directory a command fills (e.g. ``evaluate.py --gallery``): new, or existing and empty.

    A non-empty one is refused (``RunDirectoryError`` naming ``option``), or with ``overwrite`` moved
    to ``<path>.old-<n>``. The directory exists afterwards (created by an exclusive mkdir when new).
    """
    path = check_output_dir(path, overwrite, option)
    if path.is_dir() and any(path.iterdir()):
        move_aside(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def on_main_process(decide: Callable[[], T], state=None) -> T:
    """``decide()`` on the main process only; every process of the launch returns its result.

    A ``UserError`` it raises is raised on every process (marked ``agreed``, so the command lines
    print it once), instead of leaving the others waiting for a broadcast that never comes.
    ``state``: accelerate's ``PartialState`` (default: a new one). The result must be picklable.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = state or PartialState()
    box: list = [None]
    if state.is_main_process:
        try:
            box[0] = (True, decide())
        except UserError as e:
            box[0] = (False, e)
    if state.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    ok, value = box[0]
    if not ok:
        value.agreed = True
        raise value
    return value



__all__ = ["RunDirectory", "finished_summary", "run_entries", "has_state", "latest_run", "resolve_run_dir", "move_aside",
           "create_unique_dir", "check_output_dir", "claim_output_dir", "on_main_process", "RUN_ENTRIES", "TRAINER_STATE"]
