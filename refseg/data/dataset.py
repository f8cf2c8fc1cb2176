"""Torch dataset over a data source (refer layout or Hugging Face export), plus ``collate``.

Training (``train=True``): one item per ref; each access draws one of the ref's sentences (LAVT).
The draw comes from the torch RNG, which DataLoader seeds per worker from the main process seed, so a
seeded run repeats exactly; after ``set_epoch(e)``, or for a key ``(epoch, index)``, it is instead a
pure function of (seed, epoch, index), independent of workers and of resuming mid-epoch (the trainer's
sampler sends such keys, so persistent workers need no epoch of their own). Evaluation: one item per
(ref, sentence). Images and masks are decoded per item with OpenCV / pycocotools; nothing is cached.

Items stop at uint8, so that loader workers can feed a GPU: no float work in the workers, training
masks rasterised at the target size from the polygons, 0.9 MB per 480-px sample instead of the
4.6 MB of float32 pixels and int64 labels; the processor's ``to_device`` moves a batch to the device
and normalises it there (bit-identical to the float32 normalisation the workers did before; that path
measured no gain and was removed, RESULTS' history, 2026-12-02). Images and expressions are prepared
by the model's ``RefSegProcessor`` (``refseg.processing``), the one place that preprocesses.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .transforms import polygon_mask, resize_mask
from .types import Sample, Source

__all__ = ["RefSegDataset", "collate", "photometric_jitter", "worker_init"]


class RefSegDataset(Dataset):
    """Items: ``pixel_values`` (3,S,S) uint8, ``input_ids`` (T,) long, ``attention_mask`` (T,) long,
    ``labels`` (S,S) uint8 0/1, ``index`` int; eval items also ``target`` (H,W) bool at the original
    image size. Training labels are the polygons rasterised at S when the source exposes
    ``segmentation(sample)`` (else, and for evaluation, the original-size mask resized nearest).

    ``max_samples`` keeps the first N items (refs when training, (ref, sentence) pairs otherwise).
    ``augment`` (training only) adds photometric jitter; no flips ("left"/"right" in expressions).
    ``processor``: the model's ``RefSegProcessor`` (image size and resize method, tokenizer and
    truncation; a bare tokenizer with ``image_size``, ``max_tokens``, ``image_resize`` and ``truncation``
    builds one); with ``image_resize`` ``pil`` (LAVT's) training masks are resized from the
    original-size mask as LAVT does, not rasterised from the polygons.
    """

    def __init__(self, source: Source, split: str, processor, image_size: Optional[int] = None,
                 max_tokens: int = 20, train: bool = False, augment: bool = False, max_samples: Optional[int] = None,
                 seed: int = 0, image_resize: str = "opencv", truncation: str = "sep"):
        if not hasattr(processor, "encode_text"):  # a bare tokenizer: the processor of these settings
            from ..processing import RefSegProcessor
            if image_size is None:
                raise ValueError("RefSegDataset: give a RefSegProcessor, or a tokenizer and image_size")
            processor = RefSegProcessor(processor, image_size, image_resize, max_tokens, truncation)
        self.source = source
        self.seed = int(seed)
        self.epoch: Optional[int] = None
        self.split = split
        self.processor = processor
        self.image_size = processor.image_size
        self.image_resize = processor.image_resize
        self.train = bool(train)
        self.augment = bool(augment) and self.train
        self.samples: list[Sample] = list(source.samples(split))
        if not self.samples:
            raise DataError(f"{getattr(source, 'name', source)}: split '{split}' has no samples")
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(self.samples):
            groups.setdefault(s.ref_id, []).append(i)
        self.groups: list[list[int]] = list(groups.values())  # sample indices per ref, in file order
        if max_samples is not None:
            if self.train:
                self.groups = self.groups[:max_samples]
                keep = sorted(i for g in self.groups for i in g)
                remap = {old: new for new, old in enumerate(keep)}
                self.samples = [self.samples[i] for i in keep]
                self.groups = [[remap[i] for i in g] for g in self.groups]
            else:
                self.samples = self.samples[:max_samples]
                self.groups = [[i for i in g if i < len(self.samples)] for g in self.groups]
                self.groups = [g for g in self.groups if g]
        self._text_of: Optional[list[int]] = None  # item -> sample whose sentence is used (shuffle_text)

    def __len__(self) -> int:
        return len(self.groups) if self.train else len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Make training draws (sentence, jitter) a function of (seed, epoch, index)."""
        self.epoch = int(epoch)

    def _rng(self, index: int, epoch: Optional[int]) -> np.random.Generator:
        if epoch is not None:
            return np.random.default_rng([self.seed, int(epoch), int(index)])
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    # -- helpers used by evaluation -------------------------------------------------------------

    def sample(self, index: int) -> Sample:
        """The sample an eval item scores (training: the ref's first sentence)."""
        return self.samples[self.groups[index][0]] if self.train else self.samples[index]

    def text(self, index: int) -> str:
        """The expression an eval item is paired with (differs from ``sample(index)`` after shuffling)."""
        if self._text_of is not None:
            return self.samples[self._text_of[index]].sentence
        return self.sample(index).sentence

    def with_texts(self, text_of: Sequence[int]) -> "RefSegDataset":
        """A view of this (eval) dataset whose item i uses the sentence of sample ``text_of[i]``."""
        if self.train:
            raise ValueError("with_texts is for evaluation datasets (train=False)")
        if len(text_of) != len(self.samples):
            raise ValueError(f"text_of has {len(text_of)} entries for {len(self.samples)} samples")
        view = copy.copy(self)
        view._text_of = [int(i) for i in text_of]
        return view

    # -- items ----------------------------------------------------------------------------------

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``key``: an index, or ``(epoch, index)`` (training draws for that epoch)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rng = None
        if self.train:
            group = self.groups[index]
            rng = self._rng(index, epoch)
            sample = self.samples[group[int(rng.integers(len(group)))]]
            text = sample.sentence
        else:
            sample = self.samples[index]
            text = self.text(index)
        try:
            image = self.source.load_image(sample)
            # evaluation keeps the original-size mask (scoring) and resizes it (resized_gt scoring)
            labels = self._target_size_mask(sample) if self.train and self.image_resize == "opencv" else None
            mask = self.source.load_mask(sample) if labels is None else None
            if mask is not None and mask.shape != image.shape[:2]:
                raise DataError(f"{sample.image_path}: mask {mask.shape} and image {image.shape[:2]} differ "
                                f"(ref_id {sample.ref_id})")
            if self.augment:
                image = photometric_jitter(image, rng)
            pixel_values = self.processor.image_to_uint8(image)
            if labels is None:
                labels = resize_mask(mask, self.image_size, self.image_resize).view(np.uint8)
            labels = torch.from_numpy(np.ascontiguousarray(labels))
        except DataError:
            raise
        except (cv2.error, ValueError, OSError) as e:
            raise DataError(f"{sample.image_path}: ref_id {sample.ref_id}, sent_id {sample.sent_id}: "
                            f"{type(e).__name__}: {e}") from None
        ids, attn = self.processor.encode_text(text)
        item = {"pixel_values": pixel_values, "input_ids": ids[0], "attention_mask": attn[0],
                "labels": labels, "index": int(index)}
        if not self.train:
            item["target"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
        return item

    def _target_size_mask(self, sample: Sample) -> Optional[np.ndarray]:
        """uint8 (S, S) from the polygons, or None (the source has no polygons for this sample)."""
        segmentation = getattr(self.source, "segmentation", None)
        if segmentation is None:
            return None
        m = polygon_mask(segmentation(sample), sample.height, sample.width, self.image_size)
        return None if m is None else np.ascontiguousarray(m)


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one core per worker (OpenCV's own thread pool would oversubscribe
    the machine), and numpy / random seeded from the worker's torch seed."""
    import random

    cv2.setNumThreads(1)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.2,
                       contrast: float = 0.2, saturation: float = 0.2) -> np.ndarray:
    """Random brightness / contrast / saturation on RGB uint8 (H, W, 3)."""
    f = rng.uniform(-1.0, 1.0, size=3)
    x = image.astype(np.float32)
    x *= 1.0 + brightness * f[0]
    gray = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    x = gray.mean() + (x - gray.mean()) * (1.0 + contrast * f[1])
    x = gray[..., None] + (x - gray[..., None]) * (1.0 + saturation * f[2])
    return np.clip(x, 0, 255).astype(np.uint8)


def _stack(values: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``; inside a DataLoader worker straight into shared memory (as torch's
    default_collate does), so sending the batch to the main process copies nothing more."""
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(values)
    first = values[0]
    storage = first._typed_storage()._new_shared(len(values) * first.numel(), device=first.device)
    out = first.new(storage).resize_(len(values), *first.shape)
    return torch.stack(values, out=out)


def collate(batch: list[dict]) -> dict[str, Any]:
    """Stack fixed-size tensors; ``index`` -> (B,) long; ``target`` stays a list of (H,W) bool tensors.

    ``input_ids`` / ``attention_mask`` are cut to the longest expression in the batch: padding words
    change nothing (they are masked everywhere) but cost text-encoder and fusion time.
    """
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key == "target":
            out[key] = values
        elif isinstance(values[0], torch.Tensor):
            out[key] = _stack(values)
        elif isinstance(values[0], (int, np.integer)):
            out[key] = torch.tensor([int(v) for v in values], dtype=torch.long)
        else:
            out[key] = values
    if "attention_mask" in out and out["attention_mask"].ndim == 2:
        length = max(1, int(out["attention_mask"].sum(dim=1).max()))
        out["input_ids"] = out["input_ids"][:, :length]
        out["attention_mask"] = out["attention_mask"][:, :length]
    return out
