"""Training that survives a bad file: unreadable samples are replaced, listed, and counted.

``SkipBadSamples`` wraps the training ``RefSegDataset``: an item whose image or annotation cannot be
read or decoded (``DataError``) is replaced by another item drawn from (seed, epoch, index, attempt)
alone, so the replacement is the same in every process, worker and resumed run, and the item carries
``bad_samples`` (path and reason of what it replaced). The trainer gathers these from every process
once per batch, appends each file's first failure to ``<run>/bad_samples.jsonl`` (path, reason,
step) and stops with one ``error:`` line when more distinct files than ``data.max_bad_samples`` failed
(default: ``default_limit``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError, first_line

BAD_SAMPLES = "bad_samples.jsonl"
MAX_TRIES = 16  # replacements tried for one item before the batch gives up


def default_limit(num_items: int) -> int:
    """``data.max_bad_samples`` when null: 0.1% of the training set, at least 10."""
    return max(10, math.ceil(0.001 * num_items))


def replacement_index(seed: int, epoch: Optional[int], index: int, attempt: int, n: int) -> int:
    """The item that takes the place of an unreadable ``index`` (a pure function of its arguments)."""
    return int(np.random.default_rng([int(seed), 0xBAD, int(epoch or 0), int(index), int(attempt)]).integers(n))


class SkipBadSamples(Dataset):
    """Training items of ``dataset`` with unreadable ones replaced (see the module docstring).

    Keys are those of ``RefSegDataset``: an index or ``(epoch, index)``. Every item gets a
    ``bad_samples`` list (empty when nothing was replaced).
    """

    def __init__(self, dataset, seed: int, max_tries: int = MAX_TRIES):
        self.dataset, self.seed, self.max_tries = dataset, int(seed), int(max_tries)

    def __len__(self) -> int:
        return len(self.dataset)

    def path_of(self, index: int) -> str:
        """The image file of an item (every sentence of a ref shares it)."""
        return str(self.dataset.sample(index).image_path)

    def __getitem__(self, key) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        bad = []
        for attempt in range(self.max_tries):
            try:
                item = self.dataset[(epoch, index) if isinstance(key, tuple) else index]
            except DataError as e:
                bad.append({"path": self.path_of(index), "reason": first_line(e)})
                index = replacement_index(self.seed, epoch, index, attempt, len(self.dataset))
                continue
            item["bad_samples"] = bad
            return item
        raise DataError(f"{self.max_tries} training samples in a row could not be read (the last: "
                        f"{bad[-1]['reason']}): check the dataset")


def read_records(path: Path, max_step: Optional[int] = None) -> list[dict]:
    """The records of a ``bad_samples.jsonl`` (those of steps up to ``max_step``; cut lines skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if max_step is None or rec.get("step", 0) <= max_step:
            out.append(rec)
    return out


__all__ = ["SkipBadSamples", "default_limit", "replacement_index", "read_records", "BAD_SAMPLES"]
