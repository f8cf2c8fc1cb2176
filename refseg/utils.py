"""Small shared helpers: atomic writes of files and directories, CPU cores and bf16 support, the offline
environment."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Write a directory atomically: yields a temporary sibling; on success it replaces ``path``.

    A crash or kill at any moment leaves either the old complete directory or the new complete one
    at ``path`` (plus, at worst, a stray ``.<name>.tmp-*`` sibling that nothing reads). A failed write
    (disk full, I/O error: from a writer or from ``fsync``) raises and leaves the old version untouched.
    On Linux the two versions are exchanged in one ``renameat2(RENAME_EXCHANGE)``, so ``path`` never
    goes missing; elsewhere the old version is renamed aside first and, for an instant, ``path`` does
    not exist (``read_directory`` waits that out, ``recover_directory`` repairs a kill in between).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old = None
    try:
        yield tmp
        _respect_umask(tmp)
        _fsync_tree(tmp)
        if not path.exists():
            os.replace(tmp, path)
        elif _rename_exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous version
        else:
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_directory(path.parent)
    except BaseException:
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # an exception between the two renames: put the previous version back
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through a temporary sibling and a rename: readers see the old or the new file."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
    olds = _previous_versions(path)
    if not path.exists() and olds:
        os.replace(olds.pop(0), path)
    for stale in [*olds, *parent.glob(f".{name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    return path.exists()


def read_directory(path: str | os.PathLike, read: Callable[[Path], T], wait: float = 2.0,
                   attempts: int = 100) -> T:
    """``read(directory)`` on one complete version of ``path`` while ``atomic_directory`` may replace it.

    For readers of checkpoints a training run is saving (``best/``, ``last/``). If ``path`` was replaced
    while ``read`` ran (its inode or ctime changed), the read is repeated (up to ``attempts`` times), so
    the result comes from one version, never from files of two. Where ``path`` is missing but a
    ``.<name>.old-*`` sibling exists (the instant between the two renames of the non-Linux swap, or a
    writer killed there), it waits up to ``wait`` seconds for ``path`` to return, then reads that
    previous complete version in place. Errors of a directory that did not change while it was read
    propagate unchanged.
    """
    path = Path(path)
    missing_since, retries = None, 0
    while True:
        before = _identity(path)
        source = path
        if before is None and (olds := _previous_versions(path)):
            missing_since = missing_since or time.monotonic()
            if time.monotonic() - missing_since < wait:
                time.sleep(0.002)
                continue
            source = olds[0]
        try:
            result = read(source)
        except Exception:
            if _identity(path) == before:
                raise
        else:
            if _identity(path) == before:
                return result
        retries += 1  # replaced while being read: read the new version
        if retries >= attempts:
            raise OSError(errno.EBUSY, f"replaced {attempts} times while being read", str(path))


def _identity(path: Path) -> Optional[tuple]:
    """(device, inode, ctime) of a directory: changes whenever a new version is swapped in."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _previous_versions(path: Path) -> list[Path]:
    """``.<name>.old-*`` siblings (previous complete versions), newest first."""
    olds = []
    for p in path.parent.glob(f".{path.name}.old-*"):
        with contextlib.suppress(OSError):  # it may vanish while we look
            olds.append((p.stat().st_mtime, p))
    return [p for _, p in sorted(olds, key=lambda t: t[0], reverse=True)]


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None  # libc's renameat2, False where unavailable


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2``); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                _renameat2 = fn
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):  # this filesystem or kernel cannot
        return False
    raise OSError(err, os.strerror(err), str(b))


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (/proc/self/status)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def _respect_umask(root: Path) -> None:
    """Give every file under ``root`` the permissions an ordinary ``open()`` would (0o666 & ~umask).

    Some writers create private files (safetensors' ``save_file`` makes ``model.safetensors`` 0600),
    which left one file of a checkpoint unreadable to the group and others that can read the rest.
    Bits a writer set beyond those (e.g. executable) are kept.
    """
    wanted = 0o666 & ~current_umask()
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                mode = p.stat().st_mode & 0o7777
                if mode | wanted != mode:
                    os.chmod(p, mode | wanted)


def _fsync_tree(root: Path) -> None:
    """Flush file contents to disk before the rename makes them visible (power-loss safety).

    A full disk can surface only here (delayed allocation): such an error propagates, so a directory
    whose data did not reach the disk is never swapped in. Filesystems without fsync are skipped.
    """
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
            finally:
                os.close(fd)


def _fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every platform can open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


QUIET_ENVIRONMENT = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       **QUIET_ENVIRONMENT}


def quiet_environment() -> None:
    """Hugging Face libraries quiet, unless the environment already says otherwise. The commands stay
    online-capable: a Hub id (``--checkpoint org/name``) downloads where a network exists and is served
    from the local cache where none does (or with HF_HUB_OFFLINE=1)."""
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def offline_environment() -> None:
    """Hugging Face libraries offline and quiet, unless the environment already says otherwise (the
    tests and benchmarks: everything they load is local, so nothing may wait on a network)."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
