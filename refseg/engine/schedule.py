"""Optimiser and learning-rate schedule (LAVT: AdamW, poly decay per iteration, here with warm-up), and
the time budget that fits a schedule's length to ``train.max_minutes``."""
from __future__ import annotations

import time
from typing import Optional

import torch
from torch import nn

# Parameters that never get weight decay besides norms and biases (LAVT / timm conventions).
_NO_DECAY_KEYWORDS = ("temperature", "pos_embed", "cls_token", "gamma", "position_embeddings",
                      "token_type_embeddings", "relative_position")


# LAVT's "backbone" (its MultiModalSwinTransformer) holds the encoder, PWAMs, gates and output norms.
_LAVT_BACKBONE = ("encoder.", "pwams.", "gates.", "norms.")
_LAVT_NO_DECAY_KEYWORDS = ("norm", "absolute_pos_embed", "relative_position_bias_table")


def _no_decay(name: str, param: torch.Tensor, rule: str = "refseg") -> bool:
    if rule == "lavt":  # LAVT train.py: only the backbone's norms and position tables skip decay
        return name.startswith(_LAVT_BACKBONE) and any(k in name for k in _LAVT_NO_DECAY_KEYWORDS)
    return param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in _NO_DECAY_KEYWORDS)


def parameter_groups(model: nn.Module, lr: float, weight_decay: float,
                     text_lr: float | None = None, rule: str = "refseg") -> list[dict]:
    """AdamW groups: {decay, no decay} x {text encoder, rest}; frozen parameters are left out.

    ``rule`` (``train.weight_decay_rule``): refseg exempts every norm, bias, 1-d tensor and position
    table; lavt only the norms and relative-position tables of the encoder, PWAMs, gates and output norms.
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = name.removeprefix("module.")
        is_text = name.startswith("text_encoder.") or ".text_encoder." in name
        groups.setdefault((is_text, _no_decay(name, p, rule)), []).append(p)
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


UNPLANNED = 10**9  # the schedule length a time-budgeted run uses before its first plan (poly factor ~1)


class TimeBudget:
    """Plans how many optimiser steps fit ``train.max_minutes`` from the run's own measured speed.

    The clock starts with the run (data generation included). Timing starts once the loader is warm
    (step 10); the first plan is made at the end of warm-up (at least 20 timed steps later) and refitted
    after every evaluation, with the evaluations' measured cost. Before the first plan the schedule
    length is ``UNPLANNED``.

    Args:
        seconds: the budget; start: ``time.time()`` when the run started; config: ``train.*``;
        world: processes (images per step = batch_size x world x gradient_accumulation_steps).
    """

    def __init__(self, seconds: float, start: float, config, world: int = 1):
        self.seconds, self.start = float(seconds), float(start)
        self.images_per_step = config.batch_size * world * config.gradient_accumulation_steps
        self.eval_every, self.world = config.eval_every, world
        self.anchor: Optional[tuple[int, float]] = None  # (step, training seconds) once the loader is warm
        self.eval_seconds: list[float] = []  # measured periodic evaluations
        self.planned_steps: Optional[int] = None

    def ready_to_plan(self, step: int, elapsed: float, warmup_steps: int) -> bool:
        """Call after every step: True once, at the step where the first plan is due."""
        if self.anchor is None and step >= 10:
            self.anchor = (step, elapsed)
        return self.anchor is not None and step == max(warmup_steps, self.anchor[0] + 20)

    def step_seconds(self, step: int, elapsed: float) -> float:
        """Measured seconds per optimiser step since the anchor (checkpoint saves included)."""
        s0, e0 = self.anchor
        return (elapsed - e0) / max(1, step - s0)

    def plan(self, step: int, elapsed: float, eval_size: int, final_eval_ratio: float) -> int:
        """Total steps that fit what is left of the budget.

        eval_size: samples of a periodic evaluation; final_eval_ratio: final / periodic evaluation size.
        """
        step_s = self.step_seconds(step, elapsed)
        per_image = step_s / self.images_per_step
        # before the first evaluation: forward-only runs ~3x faster per image than a training step
        eval_s = (sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds
                  else 0.4 * per_image * eval_size / self.world)
        remaining = self.seconds - (time.time() - self.start)
        return steps_within_budget(step, remaining, step_s, eval_s, self.eval_every, eval_s * final_eval_ratio)
