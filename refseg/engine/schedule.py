"""Optimiser and learning-rate schedule (LAVT: AdamW, poly decay per iteration, here with warm-up)."""
from __future__ import annotations

import torch
from torch import nn

# Parameters that never get weight decay besides norms and biases (LAVT / timm conventions).
_NO_DECAY_KEYWORDS = ("temperature", "pos_embed", "cls_token", "gamma", "position_embeddings",
                      "token_type_embeddings", "relative_position")


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in _NO_DECAY_KEYWORDS)


def parameter_groups(model: nn.Module, lr: float, weight_decay: float,
                     text_lr: float | None = None) -> list[dict]:
    """AdamW groups: {decay, no decay} x {text encoder, rest}; frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_text = name.startswith("text_encoder.") or ".text_encoder." in name
        groups.setdefault((is_text, _no_decay(name, p)), []).append(p)
    out = []
    for (is_text, no_decay), params in sorted(groups.items()):
        out.append({
            "params": params,
            "lr": (text_lr if (is_text and text_lr is not None) else lr),
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": f"{'text' if is_text else 'model'}_{'no_decay' if no_decay else 'decay'}",
        })
    return out


def poly_warmup_lambda(total_steps, warmup_steps: int, power: float):
    """LR factor at optimiser step t: linear warm-up, then (1 - t/T)^power (LAVT's poly).

    ``total_steps``: T, or a function returning it (a schedule fitted to a time budget changes T
    while it runs).
    """
    total = total_steps if callable(total_steps) else (lambda: total_steps)

    def factor(step: int) -> float:
        total_steps = max(1, total())
        warm = max(0, min(warmup_steps, total_steps - 1))
        if warm and step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return max(0.0, 1.0 - progress) ** power

    return factor


def steps_within_budget(step: int, remaining_s: float, step_s: float, eval_s: float, eval_every: int,
                        final_eval_s: float) -> int:
    """Total optimiser steps that fit the rest of a wall-clock budget (``train.max_minutes``).

    step: steps done; remaining_s: seconds left of the budget; step_s: measured seconds per step
    (checkpoint saves included); eval_s: seconds per periodic evaluation, one every ``eval_every``
    steps; final_eval_s: the final evaluation. Returns at least ``step + 1``.
    """
    per_step = step_s + (eval_s / eval_every if eval_every else 0.0)
    left = (remaining_s - final_eval_s) / max(per_step, 1e-9)
    return step + max(1, int(left))
