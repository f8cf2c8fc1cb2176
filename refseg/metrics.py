"""Referring segmentation metrics (LAVT's protocol): oIoU, mIoU and precision at IoU thresholds.

Per sample I = |pred AND gt|, U = |pred OR gt| (int64). oIoU = sum(I) / sum(U); mIoU = mean(I / U);
P@t = share of samples with I / U >= t. All reported as percentages. The state is plain lists
(sample index, I, U, type), so processes merge it with ``accelerate.utils.gather_object`` (or
``merge``); duplicates of one sample index (padding) count once, and results do not depend on
the order in which samples arrive. Records are kept in typed arrays (25 bytes a sample, no masks):
scoring RefCOCO's 142,210 expressions holds 3.6 MB.
"""
from __future__ import annotations

from array import array
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
KEYS = tuple(f"P@{t}" for t in THRESHOLDS) + ("oIoU", "mIoU")


def intersection_union(pred, target) -> tuple[int, int]:
    """(I, U) of two bool masks (H, W) (torch or numpy)."""
    if isinstance(pred, torch.Tensor):
        pred, target = pred.bool(), target.to(pred.device).bool()
        return int((pred & target).sum().item()), int((pred | target).sum().item())
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    return int(np.logical_and(pred, target).sum()), int(np.logical_or(pred, target).sum())


class SegMetrics:
    """Accumulates per-sample I and U; ``compute()`` gives the percentages."""

    def __init__(self):
        self.indices, self.I, self.U = array("q"), array("q"), array("q")
        self._type_codes = array("b")  # index into _type_names (0: no type)
        self._type_names: list[Optional[str]] = [None]

    @property
    def types(self) -> list[Optional[str]]:
        return [self._type_names[c] for c in self._type_codes]

    def __len__(self) -> int:
        return len(self.I)

    def add(self, I: int, U: int, index: Optional[int] = None, expr_type: Optional[str] = None) -> None:
        """Record one sample. U == 0 (empty prediction and target) scores IoU 0, as in LAVT."""
        I, U = int(I), int(U)
        if I < 0 or U < I:
            raise ValueError(f"invalid intersection/union {I}/{U}")
        if expr_type not in self._type_names:
            if len(self._type_names) >= 127:
                raise ValueError("more than 126 expression types")
            self._type_names.append(expr_type)
        self.indices.append(len(self.I) if index is None else int(index))
        self.I.append(I)
        self.U.append(U)
        self._type_codes.append(self._type_names.index(expr_type))

    def update(self, pred, target, index: Optional[int] = None, expr_type: Optional[str] = None,
               where: str = "") -> tuple[int, int]:
        """Score a bool prediction against a bool target (same shape). An empty target is a data error."""
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if not bool(target.any()):
            from .errors import DataError

            raise DataError(f"empty ground-truth mask{' for ' + where if where else ''}: every referred object "
                            "must cover at least one pixel")
        I, U = intersection_union(pred, target)
        self.add(I, U, index, expr_type)
        return I, U

    # -- merging --------------------------------------------------------------------------------

    def state(self) -> dict[str, list]:
        return {"indices": self.indices.tolist(), "I": self.I.tolist(), "U": self.U.tolist(), "types": self.types}

    def load_state(self, state: Mapping[str, list]) -> "SegMetrics":
        for i, I, U, t in zip(state["indices"], state["I"], state["U"], state["types"]):
            self.add(I, U, i, t)
        return self

    @classmethod
    def merge(cls, parts: Iterable["SegMetrics | Mapping[str, list]"]) -> "SegMetrics":
        out = cls()
        for p in parts:
            out.load_state(p.state() if isinstance(p, SegMetrics) else p)
        return out

    def records(self) -> list[tuple[int, int, int, Optional[str]]]:
        """(index, I, U, type) sorted by index, one per index (first seen wins)."""
        seen: dict[int, tuple[int, int, int, Optional[str]]] = {}
        names = self._type_names
        for rec in zip(self.indices, self.I, self.U, (names[c] for c in self._type_codes)):
            seen.setdefault(rec[0], rec)
        return [seen[k] for k in sorted(seen)]

    def ious(self) -> dict[int, float]:
        return {i: (I / U if U > 0 else 0.0) for i, I, U, _ in self.records()}

    # -- results --------------------------------------------------------------------------------

    def compute(self) -> dict[str, Any]:
        """{P@0.5..P@0.9, oIoU, mIoU (percent), num_samples[, per_type {type: mIoU}]}."""
        recs = self.records()
        if not recs:
            raise ValueError("no samples were scored")
        I = np.array([r[1] for r in recs], dtype=np.int64)
        U = np.array([r[2] for r in recs], dtype=np.int64)
        iou = np.where(U > 0, I / np.maximum(U, 1), 0.0)
        out: dict[str, Any] = {}
        for t in THRESHOLDS:
            out[f"P@{t}"] = 100.0 * float(np.count_nonzero(iou >= t)) / len(iou)
        out["oIoU"] = 100.0 * float(I.sum()) / float(U.sum()) if U.sum() > 0 else 0.0
        out["mIoU"] = 100.0 * float(iou.mean())
        out["num_samples"] = int(len(iou))
        types = [r[3] for r in recs]
        if any(t is not None for t in types):
            per: dict[str, list[float]] = {}
            for t, v in zip(types, iou):
                per.setdefault("none" if t is None else str(t), []).append(float(v))
            out["per_type"] = {t: 100.0 * float(np.mean(v)) for t, v in sorted(per.items())}
        return out


def format_table(results: Mapping[str, Any], title: str = "split") -> str:
    """LAVT's table: ``| split | P@0.5 | ... | P@0.9 | oIoU | mIoU | N |`` with two decimals.

    ``results`` is one results dict (row named ``title``) or a mapping name -> results dict.
    """
    rows = {title: results} if "oIoU" in results else dict(results)
    name_w = max(len(title), *(len(str(k)) for k in rows))
    head = ["P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "oIoU", "mIoU"]
    cells = [f"{title:<{name_w}}"] + [f"{h:>6}" for h in head] + [f"{'N':>7}"]
    lines = ["| " + " | ".join(cells) + " |",
             "|" + "|".join(["-" * (name_w + 2)] + ["-" * 7 + ":"] * len(head) + ["-" * 8 + ":"]) + "|"]
    for name, r in rows.items():
        vals = [f"{float(r[k]):6.2f}" for k in KEYS]
        lines.append("| " + " | ".join([f"{str(name):<{name_w}}"] + vals + [f"{int(r.get('num_samples', 0)):>7}"])
                     + " |")
    return "\n".join(lines)


def format_per_type(results: Mapping[str, Any]) -> str:
    """``type  mIoU`` lines for results that carry ``per_type``; empty string otherwise."""
    per = results.get("per_type") or {}
    if not per:
        return ""
    w = max(len(t) for t in per)
    return "\n".join(f"  {t:<{w}}  mIoU {v:6.2f}" for t, v in per.items())
