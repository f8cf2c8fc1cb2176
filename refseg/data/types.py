"""What every data source yields: ``Sample`` (one expression of one object), ``Ref`` (one referred
object with its expressions) and the ``Source`` protocol that ``RefSegDataset`` reads through.

The sources are ``refseg.data.sources.refer.ReferSource`` (refer layout: RefCOCO family, refshapes)
and ``refseg.data.sources.hf.HFSource`` (Hugging Face exports); ``open_source`` picks one.
Their errors are ``refseg.errors.DataError`` naming the file and the item.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Optional, Protocol, runtime_checkable

import numpy as np

# Canonical order for printing; other split names follow alphabetically.
SPLIT_ORDER = ("train", "val", "validation", "test", "testA", "testB", "testC")


def sort_splits(names: Iterable[str]) -> list[str]:
    """Split names without duplicates, in ``SPLIT_ORDER`` first, the rest alphabetically."""
    names = list(dict.fromkeys(names))
    known = [s for s in SPLIT_ORDER if s in names]
    return known + sorted(s for s in names if s not in SPLIT_ORDER)


@dataclass(frozen=True)
class Sample:
    """One (ref, sentence) pair. ``height``/``width`` are the original image size.

    ``image_path`` is the image file, or ``<table file>#row=<n>`` for an image embedded in an export.
    ``expr_type`` is the expression type where the data has one (refshapes: attribute / position /
    superlative / relation), else None.
    ``ann_ids`` is None for the classic sources (one object per expression: ``ann_id``) and the tuple
    of referred annotation ids for the generalized ones (gRefCOCO layout): empty for an expression
    that names no object (``ann_id`` is then -1), several for one that names several (``ann_id`` is
    the first).
    """

    ref_id: int
    sent_id: int
    sentence: str
    image_id: int
    ann_id: int
    image_path: str
    height: int
    width: int
    category_id: int
    split: str
    expr_type: Optional[str] = None
    ann_ids: Optional[tuple[int, ...]] = None

    @property
    def generalized(self) -> bool:
        """True for a sample of a generalized dataset (no, one or several referred objects)."""
        return self.ann_ids is not None

    @property
    def num_targets(self) -> int:
        """How many objects the expression names (1 for the classic sources)."""
        return 1 if self.ann_ids is None else len(self.ann_ids)


class Sentence(NamedTuple):
    """One expression of a ref (unpacks as ``sent_id, text, type``)."""

    sent_id: int
    text: str
    type: Optional[str] = None


@dataclass(frozen=True)
class Ref:
    """One referred object: its ids, split and expressions in file order (``category_id`` -1 if unknown).

    ``ann_ids``: as in ``Sample`` (None for the classic sources; the referred annotations, possibly
    none or several, for the generalized ones).
    """

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    split: str
    sentences: tuple[Sentence, ...]
    ann_ids: Optional[tuple[int, ...]] = None

    def samples(self, image_path: str, height: int, width: int) -> list[Sample]:
        """One ``Sample`` per sentence, on the image ``image_path`` of size (height, width)."""
        return [Sample(ref_id=self.ref_id, sent_id=s.sent_id, sentence=s.text, image_id=self.image_id,
                       ann_id=self.ann_id, image_path=image_path, height=height, width=width,
                       category_id=self.category_id, split=self.split, expr_type=s.type, ann_ids=self.ann_ids)
                for s in self.sentences]


@runtime_checkable
class Source(Protocol):
    """A dataset of referring expressions, read split by split."""

    name: str  # for messages: "refcoco (unc)", an export path, ...

    def splits(self) -> list[str]:
        """Split names in ``sort_splits`` order."""
        ...

    def samples(self, split: str) -> list[Sample]:
        """Every (ref, sentence) pair of ``split`` in file order; DataError for an unknown split."""
        ...

    def refs(self, split: str) -> list[Ref]:
        """The refs of ``split`` in file order; DataError for an unknown split."""
        ...

    def load_image(self, sample: Sample) -> np.ndarray:
        """RGB uint8 (H, W, 3) at the original size (H, W) = (sample.height, sample.width), in the
        stored pixel frame (EXIF orientation ignored: masks are annotated in that frame)."""
        ...

    def load_mask(self, sample: Sample) -> np.ndarray:
        """bool (H, W): the referred object (the union of its parts); DataError when empty (generalized
        sources: the union of the referred objects, all-False for an expression that names none)."""
        ...
