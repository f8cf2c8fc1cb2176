"""Drawing mask overlays on images (demo, evaluation gallery); image files are read and written by
``refseg.data.io``."""
from __future__ import annotations

import os
import unicodedata
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

TINT = (255, 64, 32)  # RGB of the predicted-mask tint
GT_COLOUR = (40, 220, 60)
# One colour per expression when several are drawn in one overlay (TINT first; GT's green left out).
PALETTE = (TINT, (30, 144, 255), (255, 200, 0), (200, 80, 255), (0, 210, 200), (255, 105, 180))


def no_match_message(expression: str) -> str:
    """What demo.py prints and the overlays and the app show for an empty mask (nothing matches)."""
    return f'no object matches "{expression}"'


def captions(expressions: Sequence[str], masks: np.ndarray) -> list[str]:
    """One caption per expression: the expression, or ``no_match_message`` where its mask is empty.
    ``masks`` bool (K, H, W)."""
    return [e if m.any() else no_match_message(e) for e, m in zip(expressions, masks)]


FONT = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
# Fonts for captions the first font cannot draw (CJK ...), where a system has them; REFSEG_CAPTION_FONT
# names one more. A caption line is drawn in the first font that has every one of its characters.
FALLBACK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc", "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf", "C:/Windows/Fonts/msyh.ttc",
)
_NOTDEF_PROBE = "\U0010FFFD"  # a private-use code point no font maps: it draws the font's "missing" box


def _font(size: int, path: str | None = None):
    from PIL import ImageFont

    for name in ((path,) if path else FONT):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def printable_line(text: str) -> str:
    """``text`` as one plain line: control and formatting characters (bidi overrides and isolates
    U+202A-202E / U+2066-2069, zero-width characters, variation selectors) removed; line and paragraph
    separators, tabs and newlines as spaces; runs of spaces collapsed. What a caption or a page shows
    is then the text in its reading order, on one line."""
    out = []
    for ch in unicodedata.normalize("NFC", str(text)):
        cat = unicodedata.category(ch)
        if cat in ("Zl", "Zp", "Zs") or ch in "\t\n\r\v\f\x1c\x1d\x1e\x1f\x85":
            out.append(" ")
        elif cat in ("Cc", "Cf", "Cs", "Co", "Cn") or 0xFE00 <= ord(ch) <= 0xFE0F or 0xE0100 <= ord(ch) <= 0xE01EF:
            continue
        else:
            out.append(ch)
    return " ".join("".join(out).split())


@lru_cache(maxsize=8192)
def _has_glyph(path: str, ch: str) -> bool:
    """Whether the font at ``path`` draws ``ch`` with a glyph of its own (not its "missing" box)."""
    font = _font(24, path)
    got, missing = font.getmask(ch), font.getmask(_NOTDEF_PROBE)
    return not (got.size == missing.size and bytes(got) == bytes(missing))


def _font_paths() -> list[str]:
    first = next((p for p in FONT if _loads(p)), None)
    extra = [os.environ["REFSEG_CAPTION_FONT"]] if os.environ.get("REFSEG_CAPTION_FONT") else []
    return [p for p in [first, *extra, *FALLBACK_FONTS] if p and _loads(p)]


@lru_cache(maxsize=64)
def _loads(path: str) -> bool:
    from PIL import ImageFont

    try:
        ImageFont.truetype(path, 12)
    except OSError:
        return False
    return True


def _named(ch: str) -> str:
    """A visible stand-in for a character no available font draws: ``[dog face]``, ``[U+72D7]``."""
    name = unicodedata.name(ch, "")
    if name and len(name) <= 32 and not name.startswith(("CJK ", "HANGUL SYLLABLE", "HIRAGANA", "KATAKANA")):
        return f"[{name.lower()}]"
    return f"[U+{ord(ch):04X}]"


def caption_font_and_text(line: str, size: int):
    """(font, text) to draw ``line`` with: the first available font that has all of its characters,
    else the first font with every character it lacks written out (``_named``), never as boxes."""
    paths = _font_paths()
    if not paths:  # no TrueType font at all: PIL's built-in one, ASCII only
        return _font(size), "".join(c if ord(c) < 128 else _named(c) for c in line)
    for path in paths:
        if all(c == " " or _has_glyph(path, c) for c in line):
            return _font(size, path), line
    first = paths[0]
    return _font(size, first), "".join(c if c == " " or _has_glyph(first, c) else _named(c) for c in line)


def overlay(image: np.ndarray, mask: np.ndarray, text: str | Sequence[str] | None = None,
            gt: np.ndarray | None = None, alpha: float = 0.45,
            colours: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
    """Tint each mask on ``image`` in its own colour, outline it (and ``gt`` in green), caption it.

    image RGB uint8 (H, W, 3); mask bool (H, W), or (K, H, W) for K expressions; text one caption,
    or K captions (one line each, in its mask's colour). ``colours`` defaults to ``PALETTE`` (the
    first is ``TINT``). Returns RGB uint8 (H, W, 3), the image's size. Later masks are blended over
    earlier ones where they overlap.
    """
    masks = mask[None] if mask.ndim == 2 else mask
    colours = list(colours or PALETTE)
    if len(colours) < len(masks):
        raise ValueError(f"overlay: {len(masks)} masks but only {len(colours)} colours")
    out = image.copy()
    h, w = masks.shape[-2:]
    thick = max(1, round(min(h, w) / 250))
    for m, colour in zip(masks, colours):
        m = m.astype(bool, copy=False)
        tint = np.array(colour, np.float32) * alpha
        # Blend in bands of rows: float scratch memory stays small on 6000x4000 photos.
        for r0 in range(0, h, 256):
            band, mb = out[r0:r0 + 256], m[r0:r0 + 256]
            band[mb] = (band[mb].astype(np.float32) * (1 - alpha) + tint + 0.5).astype(np.uint8)
    if gt is not None:
        cs, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, cs, -1, GT_COLOUR, thick)
    for m, colour in zip(masks, colours):
        cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, cs, -1, colour, thick)
    if text:
        texts = [text] if isinstance(text, str) else list(text)
        # One caption: white text (the mask's colour is obvious); several: each in its mask's colour.
        fills = [(255, 255, 255)] if len(texts) == 1 else colours[:len(texts)]
        _caption(out, texts, fills)
    return out


def _caption(out: np.ndarray, texts: Sequence[str], fills: Sequence[tuple[int, int, int]]) -> None:
    """Draw ``texts`` one per line on a black box at the top left of ``out`` (in place)."""
    from PIL import Image, ImageDraw

    h, w = out.shape[:2]
    size = max(10, min(h, w) // 22)
    max_chars = max(8, int(w / (0.55 * size)))
    lines, fonts = [], []
    for t in texts:
        font, line = caption_font_and_text(printable_line(t), size)
        lines.append(line[: max_chars - 1] + "…" if len(line) > max_chars else line)
        fonts.append(font)
    pad = max(2, size // 4)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), line, font=font) for line, font in zip(lines, fonts)]
    step = max(b[3] for b in boxes) + pad
    bw = min(w, max(b[2] for b in boxes) + 2 * pad)
    bh = min(h, step * len(lines) + pad)
    # Draw the caption on its own small black box, then paste it: no full-size PIL copy.
    label = Image.new("RGB", (bw, bh), (0, 0, 0))
    draw = ImageDraw.Draw(label)
    for i, (line, fill, font) in enumerate(zip(lines, fills, fonts)):
        draw.text((pad, pad + i * step), line, fill=tuple(fill), font=font)
    out[:bh, :bw] = np.asarray(label)


def heatmap(image: np.ndarray, weights: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``weights`` (H, W) float, scaled to its own maximum, in viridis over a dimmed grey ``image``.

    image RGB uint8 (H, W, 3) -> RGB uint8 (H, W, 3).
    """
    top = float(weights.max())
    level = np.clip(weights * (255.0 / top if top > 0 else 0.0), 0, 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(colour, alpha, grey, 1.0 - alpha, 0.0)


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], col_labels: Sequence[str],
                  title: str | None = None) -> np.ndarray:
    """A labelled grid of same-size RGB uint8 tiles: ``rows`` [r][c] -> RGB uint8, on white."""
    from PIL import Image, ImageDraw

    th, tw = rows[0][0].shape[:2]
    size = max(12, min(18, th // 10))
    font = _font(size)
    gap, left = 4, max(60, int(0.62 * size * max(len(s) for s in row_labels)) + 8)
    top = (size + 8) * (2 if title else 1)
    ncol = max(len(r) for r in rows)
    sheet = Image.new("RGB", (left + ncol * (tw + gap), top + len(rows) * (th + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        title_font, title = caption_font_and_text(printable_line(title), size)
        draw.text((4, 2), title, fill=(0, 0, 0), font=title_font)
    for c, label in enumerate(col_labels):
        draw.text((left + c * (tw + gap), top - size - 6), label, fill=(0, 0, 0), font=font)
    for r, (tiles, label) in enumerate(zip(rows, row_labels)):
        y = top + r * (th + gap)
        draw.text((4, y + th // 2 - size // 2), label, fill=(0, 0, 0), font=font)
        for c, tile in enumerate(tiles):
            sheet.paste(Image.fromarray(tile), (left + c * (tw + gap), y))
    return np.asarray(sheet)
