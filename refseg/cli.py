"""Shared command-line plumbing: one clear error line and a non-zero exit instead of a traceback."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from .errors import SaveError, UserError
from .utils import quiet_environment

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``prog: error: ... (see --help)``), exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def quiet_libraries() -> None:
    """Silence library chatter (weight-load reports, hub warnings) that would bury our output."""
    quiet_environment()
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing or very old
        pass


def check_device(device: str | None) -> None:
    """``--device``: UserError (one line) if it names no device or one this machine does not have.

    Checked before a model is loaded; ``None`` (the default: cuda if available) passes.
    """
    if not device:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device}: not a device name (cpu, cuda, cuda:1 ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                            f"(cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise UserError(f"--device {device}: not a device this command supports (cpu, cuda, cuda:1 ...)")


def _is_user_error(exc: BaseException) -> bool:
    # refseg's own input errors (ConfigError, DataError, CheckpointError, ...) subclass UserError.
    return isinstance(exc, (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError))


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
        prog: str | None = None) -> None:
    """Call ``main(argv)``; turn exceptions into one stderr line and an exit code.

    ``--debug`` anywhere in argv re-raises with the full traceback. An error that every process of a
    launch raised together (``agreed``, see ``refseg.engine.rundir.on_main_process``) is printed by the
    main process only.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("REFSEG_DEBUG") == "1"
    prog = prog or os.path.basename(sys.argv[0])
    try:
        code = main(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # output piped into `head` etc.: not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        sys.exit(0)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the whole point is one clean line
        if debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        known = _is_user_error(exc) or isinstance(exc, SaveError)
        if known and not (getattr(exc, "agreed", False) and os.environ.get("RANK", "0") != "0"):
            print(f"{prog}: error: {msg}", file=sys.stderr)
        if known:
            sys.exit(EXIT_BAD_INPUT if _is_user_error(exc) else 1)
        print(f"{prog}: error: {type(exc).__name__}: {msg} (run with --debug for the traceback)",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(int(code or 0))
