"""Helpers shared by the benchmark scripts: config loading, offline model building, fake text inputs."""
from __future__ import annotations

import ctypes
import gc
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from refseg.utils import offline_environment  # noqa: E402

offline_environment()

import torch  # noqa: E402

from refseg.config import load_config  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "default.yaml"


def load_cfg(path: str | None, overrides: list[str]):
    """``path`` or configs/default.yaml (if present) or the embedded defaults, plus overrides."""
    if path is None and DEFAULT_CONFIG.is_file():
        path = str(DEFAULT_CONFIG)
    return load_config(path, overrides=overrides)


def text_source(name: str) -> tuple[str | None, str]:
    """Where the text architecture comes from, offline. Returns (text_source or None, note).

    For bert-base-uncased/-cased when the Hub is out of reach: a local directory with that
    architecture (transformers' BertConfig defaults) and random weights, written once under data/
    (with bert-base-uncased's tokenizer: the bundled MiniLM's, the same 30,522-word uncased vocabulary).
    """
    from transformers import AutoConfig

    from refseg.models.text import resolve_text_path

    try:
        AutoConfig.from_pretrained(resolve_text_path(name), trust_remote_code=False)
        return None, ""
    except Exception:
        pass
    if name in ("bert-base-uncased", "bert-base-cased"):
        return str(random_bert(name)), f"{name} not available offline: same architecture, random weights"
    raise SystemExit(f"error: text model '{name}' is not available offline; add model.text.name=bundled-minilm")


def random_bert(name: str) -> Path:
    """``data/<name>-random``: BERT-base with random weights (seed 0) and, uncased, a tokenizer."""
    from transformers import BertConfig, BertModel

    from refseg.models.text import load_tokenizer
    from refseg.utils import atomic_directory

    out = REPO / "data" / f"{name}-random"
    if (out / "config.json").is_file():
        return out
    cfg = BertConfig()  # transformers' defaults are bert-base's shape
    if name == "bert-base-cased":
        cfg.vocab_size = 28996
    torch.manual_seed(0)
    with atomic_directory(out) as tmp:
        BertModel(cfg, add_pooling_layer=False).save_pretrained(str(tmp))
        if name == "bert-base-uncased":
            load_tokenizer("bundled-minilm").save_pretrained(str(tmp))
    return out


def offline_model(cfg) -> list[str]:
    """Make ``cfg.model`` buildable without downloads (in place); returns notes on what changed.

    The text encoder as ``text_source``; a timm tag in ``model.vision.pretrained`` that is not
    cached is dropped (random vision weights: speed and memory do not depend on the weights).
    """
    notes = []
    source, note = text_source(cfg.model.text.name)
    if source is not None:
        cfg.model.text.name = source
        notes.append(note)
    spec = cfg.model.vision.pretrained
    if spec and not Path(spec).expanduser().exists():
        try:
            import timm

            timm.create_model(spec if "." in spec else cfg.model.vision.name + "." + spec, pretrained=True)
        except Exception:
            cfg.model.vision.pretrained = None
            notes.append(f"vision weights '{spec}' not available offline: random weights")
    return notes


def build_random_model(cfg):
    """The model of ``cfg`` with random weights (no downloads). Returns (model, note)."""
    from refseg.models import RefSegModel

    source, note = text_source(cfg.model.text.name)
    return RefSegModel(cfg, load_pretrained=False, text_source=source), note


def fake_text(cfg, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and a mask with 8 real tokens (a typical RefCOCO expression length)."""
    T = cfg.model.text.max_tokens
    ids = torch.randint(1000, 2000, (batch, T), device=device)
    mask = torch.zeros(batch, T, dtype=torch.long, device=device)
    mask[:, : min(8, T)] = 1
    return ids, mask


def start_app(checkpoint, log, *args: str, timeout: float = 180.0):
    """Start ``python app.py --checkpoint C --port <free> *args`` (output to the open file ``log``)
    and wait until it serves. Returns (Popen, url); the caller terminates it."""
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--checkpoint", str(checkpoint), "--port",
                             str(port), *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"error: app.py did not start; its log: {log.name}")
            time.sleep(0.5)


def markdown_table(rows: list[tuple[str, str]], title: str = "") -> str:
    """Two columns, ``| title | figure |``, labels padded to one width."""
    w = max(len(title), *(len(k) for k, _ in rows))
    lines = [f"| {title:<{w}} | figure |", f"|{'-' * (w + 2)}|--------|"]
    return "\n".join(lines + [f"| {k:<{w}} | {v} |" for k, v in rows])


def proc_kib(key: str) -> int | None:
    """A ``/proc/self/status`` memory field in KiB (VmRSS, VmHWM, ...), or None where there is none."""
    try:
        m = re.search(rf"{key}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def reset_peak_rss() -> bool:
    """Reset this process's peak resident size (VmHWM) to its current RSS; False where Linux does not allow it."""
    gc.collect()
    try:  # hand freed heap back to the OS so the next peak is measured from a clean base
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class OtherCommit:
    """``with OtherCommit(commit, folder) as tree:`` that commit of this repository, checked out (a git
    worktree) at ``folder`` while the block runs, removed after. A commit that is not one exits 2."""

    def __init__(self, commit: str, folder: Path, prog: str):
        self.commit, self.folder, self.prog = commit, Path(folder), prog

    def __enter__(self) -> Path:
        import subprocess

        r = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(self.folder),
                            self.commit], capture_output=True, text=True)
        if r.returncode:
            print(f"{self.prog}: error: --against {self.commit}: not a commit of this repository", file=sys.stderr)
            sys.exit(2)
        return self.folder

    def __exit__(self, *exc) -> None:
        import subprocess

        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.folder)], check=False)


def run_in_tree(tree: Path, args: list[str], log: Path, prog: str, threads: int | None = None) -> None:
    """``python <args>`` with ``tree``'s refseg (its own folder, PYTHONPATH), output to ``log``; a failure
    exits with one line naming the log."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(tree)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, *args], cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"{prog}: error: {' '.join(map(str, args[:2]))} failed in {tree} (log: {log})")


def comparison_parser(prog: str, description: str, steps: int, steps_help: str):
    """The arguments of a comparison with another commit: --against, --steps, --data-root, --work."""
    from refseg.cli import ArgumentParser  # one-line usage errors, exit 2

    ap = ArgumentParser(prog=prog, description=description)
    ap.add_argument("--against", required=True, help="the commit to compare with (e.g. the one before a change)")
    ap.add_argument("--steps", type=int, default=steps, help=f"{steps_help} (default: {steps})")
    ap.add_argument("--data-root", default=str(REPO / "data"), help="where refshapes is (written once)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    return ap


def work_folder(work: str | None, prefix: str):
    """(folder, temporary-directory object or None): ``work``, or a new temporary folder."""
    import tempfile

    ctx = tempfile.TemporaryDirectory(prefix=prefix) if work is None else None
    folder = Path(work or ctx.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder, ctx
