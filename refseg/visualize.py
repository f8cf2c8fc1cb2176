"""Drawing mask overlays on images (demo, evaluation gallery); image files are read and written by
``refseg.data.io``."""
from __future__ import annotations

import cv2
import numpy as np

TINT = (255, 64, 32)  # RGB of the predicted-mask tint
GT_COLOUR = (40, 220, 60)


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def overlay(image: np.ndarray, mask: np.ndarray, text: str | None = None,
            gt: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """Tint ``mask`` on ``image``, outline it (and ``gt`` in green), caption with ``text``.

    image RGB uint8 (H, W, 3), mask bool (H, W) -> RGB uint8 (H, W, 3), same size.
    """
    from PIL import Image, ImageDraw

    m = mask.astype(bool)
    out = image.copy()
    tint = np.array(TINT, np.float32) * alpha
    # Blend in bands of rows: float scratch memory stays small on 6000x4000 photos.
    for r0 in range(0, m.shape[0], 256):
        band, mb = out[r0:r0 + 256], m[r0:r0 + 256]
        band[mb] = (band[mb].astype(np.float32) * (1 - alpha) + tint + 0.5).astype(np.uint8)
    h, w = m.shape
    thick = max(1, round(min(h, w) / 250))
    if gt is not None:
        cs, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, cs, -1, GT_COLOUR, thick)
    cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, cs, -1, TINT, thick)
    if text:
        size = max(10, min(h, w) // 22)
        font = _font(size)
        caption = " ".join(text.split())
        max_chars = max(8, int(w / (0.55 * size)))
        if len(caption) > max_chars:
            caption = caption[: max_chars - 1] + "…"
        pad = max(2, size // 4)
        box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), caption, font=font)
        bw, bh = min(w, box[2] + 2 * pad), min(h, box[3] + 2 * pad)
        # Draw the caption on its own small black box, then paste it: no full-size PIL copy.
        label = Image.new("RGB", (bw, bh), (0, 0, 0))
        ImageDraw.Draw(label).text((pad, pad), caption, fill=(255, 255, 255), font=font)
        out[:bh, :bw] = np.asarray(label)
    return out
