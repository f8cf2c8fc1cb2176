"""Helpers shared by the benchmark scripts: config loading, offline model building, fake text inputs."""
from __future__ import annotations

import atexit
import ctypes
import gc
import re
import shutil
import sys
import tempfile
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


def text_source(name: str, weights: bool = False) -> tuple[str | None, str]:
    """Where the text architecture comes from, offline. Returns (text_source or None, note).

    ``weights``: also write random weights there, for code that loads a pretrained text model (the Trainer).
    """
    from transformers import AutoConfig

    from refseg.models.text import resolve_text_path

    try:
        AutoConfig.from_pretrained(resolve_text_path(name), trust_remote_code=False)
        return None, ""
    except Exception:
        pass
    if name in ("bert-base-uncased", "bert-base-cased"):
        from transformers import BertConfig

        d = tempfile.mkdtemp(prefix="refseg-bench-text-")
        atexit.register(shutil.rmtree, d, True)  # removed when this process ends
        cfg = BertConfig()  # transformers' defaults are bert-base's shape
        if name == "bert-base-cased":
            cfg.vocab_size = 28996
        cfg.save_pretrained(d)
        if weights:
            from transformers import BertModel

            from refseg.models.text import quiet_transformers

            with quiet_transformers():
                BertModel(cfg, add_pooling_layer=False).save_pretrained(d)
        return d, f"{name} not available offline: same architecture from BertConfig defaults (random weights)"
    raise SystemExit(f"error: text model '{name}' is not available offline; add model.text.name=bundled-minilm")


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
