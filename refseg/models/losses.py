"""Segmentation losses: LAVT's weighted cross-entropy, an optional Dice term, deep supervision and the
no-target head's binary cross-entropy.

Part of the model (``model.loss``): ``RefSegModel.forward(..., labels=...)`` computes them, so the
deep-supervision heads and the loss that trains them live in one place.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig
from ..ops import resize


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice on the object probability, averaged over the batch.

    logits (B, 2, H, W), labels (B, H, W) in {0, 1} -> scalar.
    """
    prob = logits.float().softmax(dim=1)[:, 1].flatten(1)
    target = labels.float().flatten(1)
    inter = (prob * target).sum(1)
    return (1.0 - (2.0 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


class SegmentationLoss(nn.Module):
    """``model.loss.*``: CE with class weights [background, object] (LAVT: [0.9, 1.1]) + ``dice_weight``
    x Dice, plus ``deep_supervision_weight`` x the same loss on each deep-supervision output, plus
    ``no_target_weight`` x BCE of the no-target logits against "the sample's labels are all background".

    forward(logits (B, 2, H, W), labels (B, H, W) long, deep_logits: sequence of (B, 2, H, W),
        no_target_logits (B,) or None) -> scalar loss (fp32). No parameters: the class weights are a non-persistent buffer, so the
        model's state_dict is the same with or without it.
    """

    def __init__(self, config: Optional[LossConfig] = None):
        super().__init__()
        config = config or LossConfig()
        self.dice_weight = float(config.dice_weight)
        self.deep_supervision_weight = float(config.deep_supervision_weight)
        self.no_target_weight = float(config.no_target_weight)
        self.register_buffer("class_weights", torch.tensor(list(config.class_weights), dtype=torch.float32),
                             persistent=False)

    def mask_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Weighted CE (+ Dice) of (B, 2, h, w) logits against (B, H, W) labels."""
        logits = resize(logits, labels.shape[-2:])
        loss = F.cross_entropy(logits.float(), labels, weight=self.class_weights)
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(logits, labels)
        return loss

    @staticmethod
    def no_target_labels(labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) labels -> (B,) float32: 1 where a sample has no object pixel (no target), else 0."""
        return (labels.flatten(1) == 0).all(1).float()

    def no_target_loss(self, no_target_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean BCE of the (B,) no-target logits against ``no_target_labels(labels)`` (unweighted)."""
        return F.binary_cross_entropy_with_logits(no_target_logits.float(), self.no_target_labels(labels))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, deep_logits=(),
                no_target_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        loss = self.mask_loss(logits, labels)
        if self.deep_supervision_weight:
            for deep in deep_logits or ():
                loss = loss + self.deep_supervision_weight * self.mask_loss(deep, labels)
        if no_target_logits is not None and self.no_target_weight:
            loss = loss + self.no_target_weight * self.no_target_loss(no_target_logits, labels)
        return loss
