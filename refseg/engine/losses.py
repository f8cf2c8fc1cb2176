"""Segmentation losses: LAVT's weighted cross-entropy plus an optional Dice term."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice on the object probability, averaged over the batch.

    logits (B, 2, H, W), labels (B, H, W) in {0, 1} -> scalar.
    """
    prob = logits.float().softmax(dim=1)[:, 1].flatten(1)
    target = labels.float().flatten(1)
    inter = (prob * target).sum(1)
    return (1.0 - (2.0 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


class SegmentationLoss(nn.Module):
    """CE with class weights [background, object] (LAVT: [0.9, 1.1]) + ``dice_weight`` x Dice; plus
    ``deep_supervision_weight`` x the same loss on each deep-supervision output, and
    ``semantic_weight`` x CE of the auxiliary category segmentation, when those logits are given."""

    def __init__(self, class_weights=(0.9, 1.1), dice_weight: float = 0.0, semantic_weight: float = 0.0,
                 deep_supervision_weight: float = 0.0):
        super().__init__()
        self.semantic_weight = float(semantic_weight)
        self.deep_supervision_weight = float(deep_supervision_weight)
        self.register_buffer("class_weights", torch.tensor(list(class_weights), dtype=torch.float32),
                             persistent=False)
        self.dice_weight = float(dice_weight)

    def mask_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Weighted CE (+ Dice) of (B, 2, h, w) logits against (B, H, W) labels."""
        logits = _to_size(logits, labels)
        loss = F.cross_entropy(logits.float(), labels, weight=self.class_weights)
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(logits, labels)
        return loss

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, deep_logits=(),
                semantic_logits: torch.Tensor | None = None,
                semantic_labels: torch.Tensor | None = None) -> torch.Tensor:
        """logits (B, 2, H, W), labels (B, H, W) long [, deep_logits: list of (B, 2, h, w),
        semantic_logits (B, K, h, w), semantic_labels (B, H, W) long in [0, K)] -> scalar loss (fp32)."""
        loss = self.mask_loss(logits, labels)
        if self.deep_supervision_weight:
            for deep in deep_logits:
                loss = loss + self.deep_supervision_weight * self.mask_loss(deep, labels)
        if self.semantic_weight and semantic_logits is not None:
            loss = loss + self.semantic_weight * F.cross_entropy(
                _to_size(semantic_logits, semantic_labels).float(), semantic_labels)
        return loss


def _to_size(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bilinear-resize (B, K, h, w) logits to the labels' (H, W) when they differ."""
    if logits.shape[-2:] == labels.shape[-2:]:
        return logits
    return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
