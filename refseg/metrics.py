"""Referring segmentation metrics (LAVT's protocol): oIoU, mIoU and precision at IoU thresholds, and
the generalized (GRES / gRefCOCO) metrics: gIoU, cIoU, N-acc, T-acc, Pr@0.7-0.9.

Per sample I = |pred AND gt|, U = |pred OR gt| (int64). oIoU = sum(I) / sum(U); mIoU = mean(I / U);
P@t = share of samples with I / U >= t. All reported as percentages. The state is plain lists
(sample index, I, U, type, predicted area, number of targets), so processes merge it with
``accelerate.utils.gather_object`` (or ``merge``); duplicates of one sample index (padding) count
once, and results do not depend on the order in which samples arrive. Records are kept in typed
arrays (35 bytes a sample, no masks): scoring RefCOCO's 142,210 expressions holds 5 MB.

Generalized data (a sample records its number of targets, 0 for "no target"): **a prediction says
"no target" exactly when its mask is empty.** Per-sample IoU = I / U, and 1 for a no-target sample
predicted empty; gIoU = mean per-sample IoU; cIoU = sum(I) / sum(U) (a correct empty prediction adds
0 to both); N-acc = share of no-target samples predicted empty; T-acc = share of target samples
predicted non-empty; Pr@t = share of target samples with IoU >= t. These are the numbers of ReLA's
``refer_evaluation.py`` with its no-target flag equal to "mask empty" (docs/DESIGN.md).
"""
from __future__ import annotations

from array import array
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
KEYS = tuple(f"P@{t}" for t in THRESHOLDS) + ("oIoU", "mIoU")
GRES_THRESHOLDS = (0.7, 0.8, 0.9)
GRES_KEYS = ("gIoU", "cIoU", "N_acc", "T_acc") + tuple(f"Pr@{t}" for t in GRES_THRESHOLDS)
TARGET_GROUPS = ("0", "1", "2+")  # the breakdown by number of targets


def intersection_union(pred, target) -> tuple[int, int]:
    """(I, U) of two bool masks (H, W) (torch or numpy)."""
    if isinstance(pred, torch.Tensor):
        pred, target = pred.bool(), target.to(pred.device).bool()
        return int((pred & target).sum().item()), int((pred | target).sum().item())
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    return int(np.logical_and(pred, target).sum()), int(np.logical_or(pred, target).sum())


def gres_ious(I: np.ndarray, U: np.ndarray, num_targets: np.ndarray) -> np.ndarray:
    """Per-sample IoU of generalized samples: I / U, 1 for a no-target sample predicted empty (U = 0)."""
    I, U = np.asarray(I, np.int64), np.asarray(U, np.int64)
    empty_ok = (U == 0) & (np.asarray(num_targets) == 0)
    return np.where(U > 0, I / np.maximum(U, 1), np.where(empty_ok, 1.0, 0.0))


def gres_scores(I, U, pred_area, num_targets) -> dict[str, Any]:
    """The GRES numbers (percent) of a group of generalized samples (arrays of equal length).

    A number with no sample to define it (N-acc without no-target samples, T-acc and Pr@t without
    target samples, cIoU when every union is empty) is None.
    """
    I, U = np.asarray(I, np.int64), np.asarray(U, np.int64)
    P, T = np.asarray(pred_area, np.int64), np.asarray(num_targets, np.int64)
    iou = gres_ious(I, U, T)
    no_target, target = T == 0, T > 0

    def share(hit, among):
        n = int(np.count_nonzero(among))
        return 100.0 * float(np.count_nonzero(hit & among)) / n if n else None

    out: dict[str, Any] = {
        "gIoU": 100.0 * float(iou.mean()) if len(iou) else None,
        "cIoU": 100.0 * float(I.sum()) / float(U.sum()) if U.sum() > 0 else None,
        "N_acc": share(P == 0, no_target),
        "T_acc": share(P > 0, target),
    }
    for t in GRES_THRESHOLDS:
        out[f"Pr@{t}"] = share(iou >= t, target)
    out["num_samples"] = int(len(iou))
    out["num_no_target"] = int(np.count_nonzero(no_target))
    out["num_multi_target"] = int(np.count_nonzero(T >= 2))
    return out


class SegMetrics:
    """Accumulates per-sample I and U (and, for generalized data, the predicted area and the number of
    targets); ``compute()`` gives the percentages."""

    def __init__(self):
        self.indices, self.I, self.U = array("q"), array("q"), array("q")
        self.P = array("q")  # predicted area (-1: not recorded)
        self.T = array("h")  # number of targets (-1: classic sample, exactly one object)
        self._type_codes = array("b")  # index into _type_names (0: no type)
        self._type_names: list[Optional[str]] = [None]

    @property
    def types(self) -> list[Optional[str]]:
        return [self._type_names[c] for c in self._type_codes]

    def __len__(self) -> int:
        return len(self.I)

    @property
    def generalized(self) -> bool:
        """True when the samples came from a generalized dataset (they record their number of targets)."""
        return any(t >= 0 for t in self.T)

    def add(self, I: int, U: int, index: Optional[int] = None, expr_type: Optional[str] = None,
            pred_area: Optional[int] = None, num_targets: Optional[int] = None) -> None:
        """Record one sample. U == 0 (empty prediction and target) scores IoU 0, as in LAVT, on classic
        data. ``num_targets`` (generalized data: 0 = no target) needs ``pred_area`` = |pred|."""
        I, U = int(I), int(U)
        if I < 0 or U < I:
            raise ValueError(f"invalid intersection/union {I}/{U}")
        P = -1 if pred_area is None else int(pred_area)
        T = -1 if num_targets is None else int(num_targets)
        if T >= 0:
            if P < I or P > U:
                raise ValueError(f"invalid predicted area {P} for intersection/union {I}/{U}")
            if (T == 0) != (U - P + I == 0):  # |gt| = U - |pred| + I
                raise ValueError(f"{T} targets but a ground truth of {U - P + I} pixels")
        if expr_type not in self._type_names:
            if len(self._type_names) >= 127:
                raise ValueError("more than 126 expression types")
            self._type_names.append(expr_type)
        self.indices.append(len(self.I) if index is None else int(index))
        self.I.append(I)
        self.U.append(U)
        self.P.append(P)
        self.T.append(T)
        self._type_codes.append(self._type_names.index(expr_type))

    def update(self, pred, target, index: Optional[int] = None, expr_type: Optional[str] = None,
               where: str = "", num_targets: Optional[int] = None) -> tuple[int, int]:
        """Score a bool prediction against a bool target (same shape). An empty target is a data error,
        unless ``num_targets`` is 0 (a generalized no-target sample); ``num_targets`` None: classic."""
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if num_targets is None and not bool(target.any()):
            from .errors import DataError

            raise DataError(f"empty ground-truth mask{' for ' + where if where else ''}: every referred object "
                            "must cover at least one pixel")
        I, U = intersection_union(pred, target)
        area = None if num_targets is None else int(pred.sum())
        self.add(I, U, index, expr_type, area, num_targets)
        return I, U

    # -- merging --------------------------------------------------------------------------------

    def state(self) -> dict[str, list]:
        return {"indices": self.indices.tolist(), "I": self.I.tolist(), "U": self.U.tolist(), "types": self.types,
                "P": self.P.tolist(), "T": self.T.tolist()}

    def load_state(self, state: Mapping[str, list]) -> "SegMetrics":
        n = len(state["I"])
        P, T = state.get("P", [-1] * n), state.get("T", [-1] * n)
        for i, I, U, t, p, k in zip(state["indices"], state["I"], state["U"], state["types"], P, T):
            self.add(I, U, i, t, None if k < 0 else p, None if k < 0 else k)
        return self

    @classmethod
    def merge(cls, parts: Iterable["SegMetrics | Mapping[str, list]"]) -> "SegMetrics":
        out = cls()
        for p in parts:
            out.load_state(p.state() if isinstance(p, SegMetrics) else p)
        return out

    def records(self) -> list[tuple[int, int, int, Optional[str]]]:
        """(index, I, U, type) sorted by index, one per index (first seen wins)."""
        return [r[:4] for r in self._full_records()]

    def _full_records(self) -> list[tuple[int, int, int, Optional[str], int, int]]:
        """(index, I, U, type, predicted area, number of targets) sorted by index, one per index."""
        seen: dict[int, tuple] = {}
        names = self._type_names
        for rec in zip(self.indices, self.I, self.U, (names[c] for c in self._type_codes), self.P, self.T):
            seen.setdefault(rec[0], rec)
        return [seen[k] for k in sorted(seen)]

    def ious(self) -> dict[int, float]:
        """Per-sample IoU by index (generalized samples: 1 for a no-target sample predicted empty)."""
        return {i: (I / U if U > 0 else (1.0 if T == 0 else 0.0)) for i, I, U, _, _, T in self._full_records()}

    # -- results --------------------------------------------------------------------------------

    def compute(self) -> dict[str, Any]:
        """{P@0.5..P@0.9, oIoU, mIoU (percent), num_samples[, per_type {type: mIoU}]}.

        Generalized samples (see ``compute_gres``) give the GRES numbers instead.
        """
        if self.generalized:
            return self.compute_gres()
        recs = self.records()
        if not recs:
            raise ValueError("no samples were scored")
        I = np.array([r[1] for r in recs], dtype=np.int64)
        U = np.array([r[2] for r in recs], dtype=np.int64)
        iou = np.where(U > 0, I / np.maximum(U, 1), 0.0)
        out: dict[str, Any] = {}
        out.update(_precisions(iou))
        out["oIoU"] = 100.0 * float(I.sum()) / float(U.sum()) if U.sum() > 0 else 0.0
        out["mIoU"] = 100.0 * float(iou.mean())
        out["num_samples"] = int(len(iou))
        out.update(_per_type(recs, iou))
        return out

    def compute_gres(self) -> dict[str, Any]:
        """The generalized numbers: {gIoU, cIoU, N_acc, T_acc, Pr@0.7..0.9 (percent; None where no
        sample defines one), num_samples, num_no_target, num_multi_target, by_targets {"0", "1", "2+":
        the same numbers over the samples with that many targets}, per_type {type: gIoU}} plus LAVT's
        keys for code that reads them: mIoU = gIoU, oIoU = cIoU, P@t over all samples (GRES IoU)."""
        recs = self._full_records()
        if not recs:
            raise ValueError("no samples were scored")
        if any(r[5] < 0 for r in recs):
            raise ValueError("generalized and classic samples were mixed in one evaluation")
        I, U, P, T = (np.array([r[k] for r in recs], dtype=np.int64) for k in (1, 2, 4, 5))
        out = gres_scores(I, U, P, T)
        iou = gres_ious(I, U, T)
        out.update(_precisions(iou))
        out["oIoU"] = out["cIoU"] if out["cIoU"] is not None else 0.0
        out["mIoU"] = out["gIoU"]
        groups = {"0": T == 0, "1": T == 1, "2+": T >= 2}
        out["by_targets"] = {g: gres_scores(I[m], U[m], P[m], T[m]) for g, m in groups.items() if m.any()}
        out.update(_per_type(recs, iou))
        return out


def _precisions(iou: np.ndarray) -> dict[str, float]:
    """P@t for every threshold: the share (percent) of samples whose IoU reaches t."""
    return {f"P@{t}": 100.0 * float(np.count_nonzero(iou >= t)) / len(iou) for t in THRESHOLDS}


def _per_type(recs, iou: np.ndarray) -> dict[str, Any]:
    """{"per_type": {type: mean IoU in percent}} when samples carry an expression type, else {}."""
    types = [r[3] for r in recs]
    if not any(t is not None for t in types):
        return {}
    per: dict[str, list[float]] = {}
    for t, v in zip(types, iou):
        per.setdefault("none" if t is None else str(t), []).append(float(v))
    return {"per_type": {t: 100.0 * float(np.mean(v)) for t, v in sorted(per.items())}}


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
    """``type  mIoU`` lines (``gIoU`` for generalized results) for results that carry ``per_type``;
    empty string otherwise."""
    per = results.get("per_type") or {}
    if not per:
        return ""
    w = max(len(t) for t in per)
    name = "gIoU" if "gIoU" in results else "mIoU"
    return "\n".join(f"  {t:<{w}}  {name} {v:6.2f}" for t, v in per.items())


def _cell(v) -> str:
    return f"{'-':>6}" if v is None else f"{float(v):6.2f}"


def format_gres_table(results: Mapping[str, Any], title: str = "split") -> str:
    """The GRES table: ``| split | gIoU | cIoU | N-acc | T-acc | Pr@0.7 | Pr@0.8 | Pr@0.9 | N |`` (``-``
    where a number is undefined). ``results``: one results dict (row ``title``) or name -> results."""
    rows = {title: results} if "gIoU" in results else dict(results)
    name_w = max(len(title), *(len(str(k)) for k in rows))
    head = ["gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    cells = [f"{title:<{name_w}}"] + [f"{h:>6}" for h in head] + [f"{'N':>7}"]
    lines = ["| " + " | ".join(cells) + " |",
             "|" + "|".join(["-" * (name_w + 2)] + ["-" * 7 + ":"] * len(head) + ["-" * 8 + ":"]) + "|"]
    for name, r in rows.items():
        vals = [_cell(r.get(k)) for k in GRES_KEYS]
        lines.append("| " + " | ".join([f"{str(name):<{name_w}}"] + vals + [f"{int(r.get('num_samples', 0)):>7}"])
                     + " |")
    return "\n".join(lines)


def format_gres_breakdown(results: Mapping[str, Any]) -> str:
    """The GRES table of one split's results by number of targets (rows "0 targets", "1 target",
    "2+ targets"); empty string for classic results."""
    by = results.get("by_targets") or {}
    names = {"0": "0 targets", "1": "1 target", "2+": "2+ targets"}
    rows = {names[g]: by[g] for g in TARGET_GROUPS if g in by}
    return format_gres_table(rows, title="targets") if rows else ""
