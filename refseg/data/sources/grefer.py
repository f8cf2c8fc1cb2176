"""The gRefCOCO layout (generalized referring expressions: an expression names no object, one, or
several), as ReLA's ``grefer.py`` reads it; grefshapes is written in it too.

Layout::

    <root>/<dataset>/grefs(<split_by>).p   (or .json)   list of refs
    <root>/<dataset>/instances.json                     COCO images / annotations / categories
    <root>/<dataset>/images/   if present, else   <root>/images/train2014/

A ref is a refer ref (``ref_id``, ``image_id``, ``split``, ``sentences``, ``sent_ids``) whose
``ann_id`` is an int or a list of ints, ``[-1]`` (or ``-1``) meaning "no target", and whose
``category_id`` is an int or a list. The ground truth of a ref is the union of its annotations' masks
without the crowd annotations (as ReLA's ``getMaskByRef(merge=True)``), all-zero for no target.
The ``.p`` files go through the same restricted unpickler as the refer ones.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...errors import DataError
from ..io import decode_segmentation
from ..types import Ref, Sample
from .refer import ReferSource, py2_text

NO_TARGET = -1  # ann_id [-1]: the expression names no object


def is_grefer_layout(root: str | Path, dataset: str, split_by: str) -> bool:
    """True when ``<root>/<dataset>`` holds ``grefs(<split_by>)``, or grefs files and no refs file."""
    folder = Path(root) / dataset
    if any((folder / f"grefs({split_by}){ext}").is_file() for ext in (".p", ".json")):
        return True
    return folder.is_dir() and any(folder.glob("grefs(*)*")) and not any(folder.glob("refs(*)*"))


def _id_list(value: Any, field: str, where: str) -> list[int]:
    """An int or a list of ints (gRefCOCO's ``ann_id`` / ``category_id``) as a list."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            if isinstance(v, str) and v.strip().lstrip("-").isdigit():
                v = int(v)
            else:
                raise DataError(f"{where}: field '{field}': expected an int or a list of ints, got {value!r}")
        out.append(int(v))
    return out


class GReferSource(ReferSource):
    """A dataset in the gRefCOCO layout. Samples carry ``ann_ids`` (empty: no target)."""

    refs_prefix = "grefs"

    def _normalise_ref(self, ref: Any, i: int) -> Ref:
        where = f"{self.refs_path}: ref #{i}"
        if not isinstance(ref, dict):
            raise DataError(f"{where}: expected a dict, got {type(ref).__name__}")
        ref = {py2_text(k): v for k, v in ref.items()}
        if "ref_id" in ref:
            where = f"{self.refs_path}: ref_id {ref['ref_id']}"
        if "ann_id" not in ref:
            raise DataError(f"{where}: missing key 'ann_id'")
        ann_ids = _id_list(ref["ann_id"], "ann_id", where)
        if not ann_ids:
            raise DataError(f"{where}: field 'ann_id': empty list ([-1] means no target)")
        if NO_TARGET in ann_ids:
            if len(ann_ids) > 1:
                raise DataError(f"{where}: field 'ann_id': {ann_ids} mixes -1 (no target) with objects")
            ann_ids = []
        cats = _id_list(ref.get("category_id", -1), "category_id", where)
        classic = dict(ref, ann_id=ann_ids[0] if ann_ids else NO_TARGET, category_id=cats[0] if cats else -1)
        r = super()._normalise_ref(classic, i)
        return dataclasses.replace(r, ann_ids=tuple(ann_ids))

    # -- masks ----------------------------------------------------------------------------------

    def _annotations(self, sample: Sample) -> list[dict]:
        """The referred non-crowd annotations of ``sample`` (empty for no target)."""
        anns = []
        for aid in sample.ann_ids or ():
            ann = self.anns.get(aid)
            if ann is None or "segmentation" not in ann:
                what = "annotation not found" if ann is None else "annotation has no segmentation"
                raise DataError(f"{self.instances_path}: ref_id {sample.ref_id}, ann_id {aid}: {what}")
            if not ann.get("iscrowd", 0):
                anns.append(ann)
        if sample.ann_ids and not anns:
            raise DataError(f"{self.instances_path}: ref_id {sample.ref_id}: every referred annotation "
                            f"({', '.join(map(str, sample.ann_ids))}) is a crowd annotation")
        return anns

    def segmentation(self, sample: Sample) -> Optional[list]:
        """The referred polygons as one COCO polygon list (their union), for rasterising training masks
        at the model's size; None when there is no target or a part is RLE (then ``load_mask``)."""
        polys: list = []
        for ann in self._annotations(sample):
            segm = ann["segmentation"]
            if isinstance(segm, dict) or not isinstance(segm, (list, tuple)) or not segm:
                return None
            if isinstance(segm[0], dict):
                return None
            polys.extend(segm if isinstance(segm[0], (list, tuple)) else [segm])
        return polys or None

    def load_mask(self, sample: Sample) -> np.ndarray:
        """Bool (H, W): the union of the referred non-crowd annotations; all False for no target."""
        mask = np.zeros((sample.height, sample.width), bool)
        for ann in self._annotations(sample):
            where = f"{self.instances_path}: ref_id {sample.ref_id}, ann_id {ann.get('id')}"
            mask |= decode_segmentation(ann["segmentation"], sample.height, sample.width, where)
        return mask

    def __repr__(self) -> str:
        return f"GReferSource({str(self.root)!r}, {self.dataset!r}, {self.split_by!r})"
