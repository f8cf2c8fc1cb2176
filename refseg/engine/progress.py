"""What a run has done, so that a resumed run goes on exactly where it stopped: the data order of each
epoch (``EpochBatchSampler``), the counters saved in ``state/`` (``TrainerState``) and the evaluation
records kept across a resume (``drop_records_after``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Sampler

from ..utils import atomic_write_text

__all__ = ["EpochBatchSampler", "TrainerState", "drop_records_after"]


class EpochBatchSampler(Sampler):
    """Batches of a seeded permutation for one epoch, sharded by process, resumable mid-epoch.

    The order depends only on (seed, epoch), so a resumed run sees exactly the batches the
    uninterrupted run would have seen; ``skip`` drops the batches already consumed. Batches hold
    ``(epoch, index)`` keys: the dataset's draws follow the epoch even in persistent workers, and
    ``set_epoch`` moves one sampler (and so one DataLoader) on to the next epoch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int,
                 rank: int = 0, world_size: int = 1, skip: int = 0):
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.epoch, self.rank, self.world_size, self.skip = seed, epoch, rank, world_size, skip

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def global_batches(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def __len__(self) -> int:
        return max(0, self.global_batches() - self.skip)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.num_items, generator=g).tolist()
        step = self.batch_size * self.world_size
        for b in range(self.skip, self.global_batches()):
            chunk = perm[b * step:(b + 1) * step]
            yield [(self.epoch, i) for i in chunk[self.rank::self.world_size]]


@dataclass
class TrainerState:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already consumed
    best_metric: float = -1.0
    best_step: int = -1
    skipped_steps: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumes
    planned_steps: int = 0  # schedule length fitted to train.max_minutes (0: not fitted yet)

    def save(self, path: Path, scheduler) -> None:
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        path.write_text(json.dumps({**self.__dict__, "scheduler": sched}, indent=1))

    @classmethod
    def load(cls, path: Path, scheduler) -> "TrainerState":
        data = json.loads(path.read_text())
        sched = data.pop("scheduler")
        sched["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
        scheduler.load_state_dict(sched)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def end_epoch_if_done(self, batches_per_epoch: int) -> None:
        """Roll over to the next epoch once every batch of this one is consumed."""
        if self.batches_in_epoch >= batches_per_epoch:
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0


def drop_records_after(path: Path, step: int) -> None:
    """Forget evaluations logged after the checkpoint we resume from, and the final one (a save that
    failed after it): they are about to be redone."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill or a full disk
            continue
        if rec.get("step", 0) <= step and not rec.get("final"):
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))
