"""Checkpoint directories: what they hold, and where they come from — a local path, or a Hugging Face
Hub id ``org/name`` / ``org/name@revision``.

    python -m refseg.hub push runs/x/best org/name             # upload a checkpoint directory
    python -m refseg.hub push runs/x/best org/name --dry-run   # list what would be uploaded
    python demo.py --checkpoint org/name --image x.jpg --text "the man on the left"

Resolution (``resolve_checkpoint``): an existing local path always wins over an id of the same
spelling; otherwise ``org/name[@revision]`` is fetched with ``huggingface_hub.snapshot_download``
(``HF_HUB_OFFLINE=1``: from the local Hugging Face cache only). Only a checkpoint's own files are
fetched — safetensors weights, YAML/JSON configs, the tokenizer's text files and the model card —
never pickles or code, and nothing from the repository is ever executed. An unknown id, a missing
network or a repository that is not a refseg checkpoint is a ``CheckpointError`` (one ``error:``
line, exit 2, in the commands).
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import re
from pathlib import Path
from typing import Optional, Sequence

from .errors import CheckpointError, UserError, first_line

# The layout of a checkpoint directory (RefSegModel.save_pretrained).
CONFIG_FILE = "config.yaml"  # the run config; its ``model`` rebuilds the model
WEIGHTS_FILE = "model.safetensors"
TEXT_DIR = "text"  # the text model's Hugging Face config.json
PROCESSOR_FILE = "processor_config.json"  # beside the tokenizer's own files
LEGACY_TOKENIZER_DIR = "tokenizer"  # where checkpoints written before the processor kept the tokenizer
MODEL_CARD = "README.md"
# What is fetched from and uploaded to the Hub: weights as safetensors only, never pickles or code.
CHECKPOINT_FILES = ["*.safetensors", "*.yaml", "*.json", "*.txt", "*.md", "text/*.json", "*.model"]
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]{1,200}))?")


def parse_hub_id(spec: str) -> Optional[tuple[str, Optional[str]]]:
    """``org/name`` or ``org/name@revision`` -> (repo_id, revision or None); None if ``spec`` is not one."""
    m = HUB_ID.fullmatch(str(spec).strip())
    if m is None or ".." in m.group("repo"):
        return None
    return m.group("repo"), m.group("revision")


def checkpoint_directory(path: str | os.PathLike) -> Path:
    """``path`` as a Path, after checking it holds a complete checkpoint (else CheckpointError)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"not a checkpoint directory: {path}")
    for name in (CONFIG_FILE, WEIGHTS_FILE, f"{TEXT_DIR}/config.json"):
        if not (path / name).exists():
            raise CheckpointError(f"{path}: missing {name} (not a complete refseg checkpoint)")
    if not (path / PROCESSOR_FILE).is_file() and not (path / LEGACY_TOKENIZER_DIR).is_dir():
        raise CheckpointError(f"{path}: missing {PROCESSOR_FILE} (not a complete refseg checkpoint)")
    return path


def newest_checkpoint(runs_dir: str | os.PathLike = "runs") -> Optional[Path]:
    """The most recently written ``<runs_dir>/*/best`` checkpoint directory, or None."""
    found = [p for p in Path(runs_dir).glob("*/best") if (p / "model.safetensors").is_file()]
    return max(found, key=lambda p: (p / "model.safetensors").stat().st_mtime) if found else None


def resolve_checkpoint(spec: str | os.PathLike | None, runs_dir: str | os.PathLike = "runs") -> Path:
    """A local checkpoint directory for ``spec``: a path, a Hub id, or None for the newest
    ``runs/*/best``. Whether it is a complete checkpoint is checked once, when it is loaded.

    Raises CheckpointError / UserError with one line when nothing can be found.
    """
    if spec is None or str(spec) == "":
        found = newest_checkpoint(runs_dir)
        if found is None:
            raise UserError(f"no checkpoint found under {Path(runs_dir) / '*' / 'best'}: train one with "
                            "`accelerate launch train.py` or pass --checkpoint DIR (or a Hub id org/name)")
        return found
    path = Path(spec).expanduser()
    if path.exists():  # a local path wins over a Hub id of the same spelling
        if not path.is_dir():
            raise CheckpointError(f"not a checkpoint directory: {path}")
        return path
    hub = parse_hub_id(str(spec))
    if hub is None or str(spec).startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint directory not found: {path}")
    return download(*hub)


def download(repo_id: str, revision: Optional[str] = None) -> Path:
    """The snapshot of Hub repository ``repo_id`` (at ``revision``) in the local Hugging Face cache,
    fetched if needed; CheckpointError with one line if it cannot be had or is not a refseg checkpoint."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    shown = repo_id + (f"@{revision}" if revision else "")
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES))
    except RevisionNotFoundError:
        raise CheckpointError(f"{shown}: no such revision on the Hugging Face Hub") from None
    except GatedRepoError:
        raise CheckpointError(f"{shown}: a gated repository (log in with `hf auth login` and accept its terms)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{shown}: no such checkpoint directory here, and no such repository on the "
                              f"Hugging Face Hub (or it is private)") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{shown}: not a local directory, and not in the Hugging Face cache; the Hub "
                              f"cannot be reached (offline or HF_HUB_OFFLINE=1)") from None
    except (OSError, ValueError) as e:  # HTTP errors (HfHubHTTPError is an OSError), bad ids
        raise CheckpointError(f"{shown}: cannot download it from the Hugging Face Hub ({type(e).__name__}: "
                              f"{first_line(e)})") from None
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{shown}: not a refseg checkpoint (no {' or '.join(missing)} in the repository)")
    return path


def files_to_upload(directory: str | os.PathLike) -> list[str]:
    """The files of checkpoint directory ``directory`` that ``push`` uploads (relative POSIX paths):
    the checkpoint's own files, nothing else that lies there."""
    root = Path(directory)
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.is_symlink() and any(fnmatch.fnmatch(rel, pat) for pat in CHECKPOINT_FILES) \
                and not any(part.startswith(".") for part in Path(rel).parts):
            out.append(rel)
    return out


def push(directory: str | os.PathLike, repo_id: str, private: bool = False, token: Optional[str] = None,
         revision: Optional[str] = None, commit_message: Optional[str] = None):
    """Upload checkpoint directory ``directory`` to the Hub as model repository ``repo_id`` (created
    if needed). Only ``files_to_upload``; the directory is checked to be a complete checkpoint first.
    Returns huggingface_hub's commit info."""
    from huggingface_hub import HfApi

    directory = checkpoint_directory(directory)
    if parse_hub_id(repo_id) is None or "@" in repo_id:
        raise UserError(f"not a Hub repository id: {repo_id!r} (expected org/name)")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model", revision=revision,
                             allow_patterns=files_to_upload(directory),
                             commit_message=commit_message or "Upload refseg checkpoint")


def build_parser() -> argparse.ArgumentParser:
    from .cli import ArgumentParser

    p = ArgumentParser(prog="python -m refseg.hub", description="Share refseg checkpoints on the Hugging Face Hub.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("push", help="upload a checkpoint directory (best/, last/, a converted one)")
    up.add_argument("directory", help="checkpoint directory (config.yaml, model.safetensors, processor, README.md)")
    up.add_argument("repo_id", help="the Hub repository, org/name (created if it does not exist)")
    up.add_argument("--private", action="store_true", help="create the repository as private")
    up.add_argument("--revision", default=None, help="branch to push to (default: main)")
    up.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded, upload nothing")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    directory = checkpoint_directory(args.directory)
    if parse_hub_id(args.repo_id) is None or "@" in args.repo_id:
        raise UserError(f"not a Hub repository id: {args.repo_id!r} (expected org/name)")
    files = files_to_upload(directory)
    if args.dry_run:
        print(f"would upload {len(files)} files from {directory} to {args.repo_id}:")
        for f in files:
            print(f"  {f}  ({(directory / f).stat().st_size} bytes)")
        return 0
    info = push(directory, args.repo_id, private=args.private, revision=args.revision)
    print(f"uploaded {len(files)} files to {getattr(info, 'commit_url', args.repo_id)}")
    return 0


if __name__ == "__main__":
    from .cli import run
    run(main, prog="python -m refseg.hub")
