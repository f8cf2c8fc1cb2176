"""Reading user images robustly and drawing mask overlays (demo, evaluation gallery)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import ImageReadError, UserError

TINT = (255, 64, 32)  # RGB of the predicted-mask tint
GT_COLOUR = (40, 220, 60)


def read_image(path: str | Path) -> np.ndarray:
    """Any image file -> RGB uint8 (H, W, 3) in its displayed orientation.

    Handles grayscale, palette, RGBA (composited on white), 16-bit, CMYK and EXIF rotation.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image not found: {p}")
    if p.is_dir():
        raise ImageReadError(f"expected an image file, got a directory: {p}")
    if p.stat().st_size == 0:
        raise ImageReadError(f"image file is empty: {p}")
    Image.MAX_IMAGE_PIXELS = 300_000_000  # large photos are fine; decompression bombs are not
    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            return _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageReadError(f"not an image file (or an unsupported format): {p}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise ImageReadError(f"cannot decode image {p}: {e}") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"image too large: {p}: {e}") from None


def _to_rgb(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size else 1.0
        a = (a / (65535.0 if hi > 255 else 255.0) * 255.0).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = (a - a.min()) / max(1e-12, a.max() - a.min()) * 255.0
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        from PIL import Image

        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    rgb = im if im.mode == "RGB" else im.convert("RGB")  # no extra copy of a large RGB photo
    return np.ascontiguousarray(np.asarray(rgb))


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


def write_image(path: str | Path, rgb: np.ndarray) -> Path:
    """Write RGB uint8 (or a bool mask as 0/255) to ``path`` (format from the suffix)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = rgb.astype(np.uint8) * 255 if rgb.dtype == bool else rgb
    bgr = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(p), bgr):
        raise UserError(f"cannot write {p} (unknown image extension or unwritable directory)")
    return p
