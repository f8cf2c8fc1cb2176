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


def poly_warmup_lambda(total_steps: int, warmup_steps: int, power: float):
    """LR factor at optimiser step t: linear warm-up, then (1 - t/T)^power (LAVT's poly)."""
    total_steps = max(1, total_steps)
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return max(0.0, 1.0 - progress) ** power

    return factor
