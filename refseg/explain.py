"""Where each word looked: the PWAMs' pixel-word attention of one forward pass, per stage.

    exp = predictor.explain(image_rgb_uint8, "the man on the left")
    exp.tokens                      # ['[CLS]', 'the', 'man', ..., '[SEP]'] (padding left out)
    exp.word_map(stage=1, word=2)   # (H, W) float32: the weight each pixel gives the word 'man'
    exp.gate_means                  # mean |gate| of stages 1-3: how much language each lets through
    exp.write("explain/", image)    # one PNG per (word, stage) and contact_sheet.png

The weights come from the model's own forward (``RefSegModel(..., output_attentions=True)``): at
every position of a stage's token grid they sum to 1 over the expression's tokens, padding gets 0.
Maps are upsampled bilinearly to the image (which keeps that sum at 1).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .ops import resize

SHEET_TILE = 192  # longest side of a tile in the contact sheet and the page's gallery


@dataclass
class Explanation:
    """One image + expression through the model, with the attention of its 4 PWAMs.

    tokens: the T real tokens of the expression (the tokenizer's, [CLS]/[SEP] included).
    attentions: per stage, (T, h_i, w_i) float32 on the stage's token grid over the image (the
        model's input padding cropped off; heads averaged); sums to 1 over the T tokens.
    gate_means: per gated stage (1-3), the language gate's mean |S| over channels and positions.
    mask: (H, W) bool, the prediction of the same forward pass.
    """

    text: str
    tokens: list[str]
    attentions: list[np.ndarray]
    gate_means: list[float]
    mask: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)

    @property
    def num_stages(self) -> int:
        return len(self.attentions)

    def word_map(self, stage: int, word: int, size: Sequence[int] | None = None) -> np.ndarray:
        """(H, W) float32 weight of token ``word`` at stage ``stage`` (0-based), bilinear to ``size``
        (default: the image's)."""
        return self.stage_maps(stage, size)[word]

    def stage_maps(self, stage: int, size: Sequence[int] | None = None) -> np.ndarray:
        """(T, H, W) float32: every token's map at ``stage``, bilinear to ``size`` (default: the image's)."""
        a = torch.from_numpy(self.attentions[stage])[None]
        return resize(a, tuple(size or self.image_shape))[0].numpy()

    def tiles(self, image: np.ndarray, max_side: int = SHEET_TILE) -> list[tuple[np.ndarray, str]]:
        """(heat map over a reduced copy of ``image``, caption) for every (token, stage), token-major."""
        from .visualize import heatmap

        small = _shrink(image, max_side)
        maps = [self.stage_maps(s, small.shape[:2]) for s in range(self.num_stages)]
        return [(heatmap(small, maps[s][t]), f"{tok} · stage {s + 1}")
                for t, tok in enumerate(self.tokens) for s in range(self.num_stages)]

    def contact_sheet(self, image: np.ndarray, max_side: int = SHEET_TILE) -> np.ndarray:
        """RGB uint8 grid: one row per token, one column per stage, labelled."""
        from .visualize import contact_sheet

        tiles = [t for t, _ in self.tiles(image, max_side)]
        n = self.num_stages
        rows = [tiles[i:i + n] for i in range(0, len(tiles), n)]
        gates = [f" |S| {g:.3f}" for g in self.gate_means] + [""] * (n - len(self.gate_means))
        return contact_sheet(rows, row_labels=self.tokens, col_labels=[f"stage {s + 1}{gates[s]}" for s in range(n)],
                             title=self.text)

    def write(self, folder: str | os.PathLike, image: np.ndarray) -> list[Path]:
        """Write ``stage<s>_word<t>_<token>.png`` (the image's size) for every (token, stage) and
        ``contact_sheet.png`` into ``folder``; returns the paths. One full-size map in memory at a time."""
        from .data.io import write_image
        from .visualize import heatmap

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for s in range(self.num_stages):
            maps = self.attentions[s]
            for t, tok in enumerate(self.tokens):
                full = resize(torch.from_numpy(maps[t])[None, None], self.image_shape)[0, 0].numpy()
                written.append(write_image(out / f"stage{s + 1}_word{t:02d}_{_slug(tok)}.png", heatmap(image, full)))
        written.append(write_image(out / "contact_sheet.png", self.contact_sheet(image)))
        return written


def from_model_output(out, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer, text: str,
                      input_size: Sequence[int], pad_multiple: int, mask: np.ndarray) -> Explanation:
    """The first sample of a ``RefSegOutput`` with attentions -> Explanation.

    input_size: (S_h, S_w), the model input before the model padded it to ``pad_multiple``: the
    part of each grid that covers it is kept. mask: the prediction at the image's size.
    """
    real = int(attention_mask[0].sum())
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0, :real].tolist())
    padded = [-(-n // pad_multiple) * pad_multiple for n in input_size]

    def crop(t: torch.Tensor) -> torch.Tensor:  # (..., h, w) on the padded input -> the input's part
        h, w = t.shape[-2:]
        return t[..., :-(-input_size[0] * h // padded[0]), :-(-input_size[1] * w // padded[1])]

    attentions = [crop(a[0].float().mean(0))[:real].cpu().numpy() for a in out.attentions]  # heads averaged
    gates = [float(crop(g[0]).mean()) for g in out.gate_magnitudes]
    return Explanation(text=text, tokens=list(tokens), attentions=attentions, gate_means=gates, mask=mask)


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    f = max_side / max(h, w)
    if f >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _slug(token: str) -> str:
    return re.sub(r"[^\w-]+", "", token) or "tok"
