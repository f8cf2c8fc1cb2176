"""The model card (``README.md`` with Hugging Face Hub metadata) written into every checkpoint directory.

It says what the checkpoint is without opening it: the architecture, what its config changes from
the embedded default, the data, the command that trained it, and its scores (the final ones from the
run's summary.json when the run has ended; the evaluation that chose it otherwise).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional

import yaml

from .config import RunConfig

_METRIC_ORDER = ("mIoU", "oIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9")


def config_changes(config: Any, base: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, value, base value) for every leaf where dataclass ``config`` differs from ``base``."""
    for f in dataclasses.fields(config):
        value, default = getattr(config, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(value):
            yield from config_changes(value, default, f"{prefix}{f.name}.")
        elif value != default:
            yield f"{prefix}{f.name}", value, default


def _value(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _architecture(cfg: RunConfig) -> str:
    m = cfg.model
    v = m.vision
    vision = {"xcit_columnar": f"XCiT ({v.name}, columnar, cut into 4 stages)",
              "xcit_hierarchical": f"hierarchical XCiT (widths {v.hierarchical_dims})",
              "swin": f"Swin Transformer ({v.name}, window {v.window_size}; LAVT's encoder)"}[v.arch]
    parts = [f"vision encoder: {vision}",
             f"text encoder: {m.text.name} (max {m.text.max_tokens} tokens, trainable layers: "
             f"{m.text.trainable_layers})",
             "language fused into every vision stage: Pixel-Word Attention Modules and language gates "
             "(LAVT)",
             f"CrossViT branch: {'patch %d, width %d' % (m.crossvit.patch_size, m.crossvit.embed_dim) if m.crossvit.enabled else 'off'}",
             f"decoder: LAVT's top-down decoder, width {m.decoder.hidden_dim}"
             + (f", deep supervision (weight {m.loss.deep_supervision_weight:g})"
                if m.loss.deep_supervision_weight > 0 else ""),
             f"input: {m.image_size}x{m.image_size} ({m.image_resize} resize)"]
    return "\n".join(f"- {p}" for p in parts)


def _scores_table(scores: dict) -> str:
    keys = [k for k in _METRIC_ORDER if isinstance(scores.get(k), (int, float))]
    if not keys:
        return ""
    return ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| "
            + " | ".join(f"{scores[k]:.2f}" for k in keys) + " |\n")


def model_card(cfg: RunConfig, scores: Optional[dict] = None, scores_note: str = "",
               command: Optional[str] = None, shuffled_text_miou: Optional[float] = None,
               source: Optional[str] = None) -> str:
    """The README.md text of a checkpoint trained (or converted) with ``cfg``.

    ``scores``: metric -> value (percent) on ``cfg.data.val_split``; ``scores_note`` says which
    evaluation they come from. ``command``: how it was trained. ``shuffled_text_miou``: the
    language ablation's mIoU when it was measured. ``source``: where converted weights came from.
    """
    data = cfg.data
    tags = ["refseg", "referring-image-segmentation", "image-segmentation", "lavt", cfg.model.vision.arch.split("_")[0]]
    meta: dict[str, Any] = {"library_name": "refseg", "pipeline_tag": "image-segmentation", "tags": tags,
                            "datasets": [data.name], "metrics": ["mean_iou"]}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             "# refseg referring-segmentation checkpoint", "",
             "Give it a photo and an English expression; it predicts the mask of the object the expression names.",
             "", "```python", "from refseg import Predictor", "",
             "predictor = Predictor.from_pretrained(\"<this directory or Hub id>\")",
             "mask = predictor.predict(image_rgb_uint8, \"the man on the left\")  # (H, W) bool", "```", "",
             "## Architecture", "", _architecture(cfg), ""]
    changes = list(config_changes(cfg, RunConfig()))
    lines += ["## Configuration", "",
              "`config.yaml` holds the whole run config. What it changes from refseg's embedded default "
              "(`configs/default.yaml`):", ""]
    lines += [f"- `{k}`: `{_value(v)}` (default `{_value(d)}`)" for k, v, d in changes] or ["- nothing"]
    lines += ["", "## Data", "",
              f"`{data.name}` ({data.split_by} splits): trained on `{data.train_split}`, scored on "
              f"`{data.val_split}`." + (" refshapes is refseg's synthetic dataset of coloured shapes: this "
                                        "checkpoint knows shapes, not people or objects in photos."
                                        if data.name == "refshapes" else ""), ""]
    if source:
        lines += ["## Source", "", source, ""]
    if command:
        lines += ["## Training command", "", "```bash", command, "```", ""]
    lines += ["## Scores", ""]
    table = _scores_table(scores or {})
    if table:
        lines += [f"{scores_note or 'Evaluation'} (percent; refseg's protocol, docs/DESIGN.md):", "", table]
    else:
        lines += ["Not scored yet.", ""]
    if shuffled_text_miou is not None:
        lines += [f"With shuffled expressions (each image paired with another object's expression) it scores "
                  f"mIoU {shuffled_text_miou:.2f}: it reads the expression.", ""]
    else:
        lines += ["Shuffled-text ablation: not measured (`evaluate.py --shuffle-text`).", ""]
    return "\n".join(lines)
