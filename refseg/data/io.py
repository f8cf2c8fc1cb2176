"""Image and mask files: reading (dataset images and user photos), decoding COCO segmentations,
writing results. Images come out as RGB uint8 (H, W, 3); masks as bool (H, W).

Which error a failed read raises follows who supplied the file: dataset images (``orientation=
"stored"``, ``decode_image_bytes``, masks) raise ``DataError`` naming the item; a user's photo
(``orientation="exif"``) raises ``ImageReadError``. Both are ``UserError``s (one line, exit 2).
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Literal

import cv2
import numpy as np

from ..errors import DataError, ImageReadError, UserError

Orientation = Literal["stored", "exif"]

_IMREAD_STORED = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # COCO masks are in the stored frame


def read_image(path: str | Path | BinaryIO, orientation: Orientation = "exif", where: str = "",
               max_pixels: int | None = None, name: str | None = None) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3).

    ``path`` may also be an open binary file (``"exif"`` only: an upload read where it is, in memory or
    spooled, with no copy to disk); ``name`` then stands for it in error messages.

    ``orientation``:

    - ``"stored"``: the pixels as stored, EXIF orientation ignored, like PIL / the COCO tools: the frame
      dataset masks are annotated in. Decoded with OpenCV (the fast path data loaders need);
      raises ``DataError("<path>: image file missing|unreadable ... (<where>)")``.
    - ``"exif"``: as displayed, EXIF rotation applied: for user photos. Decoded with PIL, which also
      handles grayscale, palette, RGBA (composited on white), 16-bit, float and CMYK images; raises
      ``ImageReadError`` for a missing, empty, unreadable or too large file. With ``max_pixels``, a
      larger image is refused from its header, before any pixel is decoded (servers, bounded memory).
    """
    if orientation == "stored":
        return _read_stored(str(path), where)
    if orientation == "exif":
        if hasattr(path, "read"):
            return _read_displayed(path, max_pixels, name or "upload")  # (a temporary file's .name is its fd)
        return _read_displayed(Path(path), max_pixels, name or str(path))
    raise ValueError(f"orientation must be 'stored' or 'exif', got {orientation!r}")


def _read_stored(path: str, where: str) -> np.ndarray:
    img = cv2.imread(path, _IMREAD_STORED)
    if img is None:
        what = "missing" if not Path(path).exists() else "unreadable (not an image, or corrupt)"
        raise DataError(f"{path}: image file {what}" + (f" ({where})" if where else ""))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_displayed(source: Path | BinaryIO, max_pixels: int | None, p: str) -> np.ndarray:
    """``source`` a path or an open binary file; ``p`` names it in messages."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, Path):
        if not source.exists():
            raise ImageReadError(f"image not found: {p}")
        if source.is_dir():
            raise ImageReadError(f"expected an image file, got a directory: {p}")
        empty = source.stat().st_size == 0
    else:
        source.seek(0)
        empty = not source.read(1)
        source.seek(0)
    if empty:
        raise ImageReadError(f"image file is empty: {p}")
    # The size limit is ours, checked from the header: PIL's global Image.MAX_IMAGE_PIXELS is left as the
    # process has it (its warning between 1x and 2x is silenced here; above 2x PIL refuses to open the
    # file at all, which is reported in our words, with ``max_pixels`` as the limit when it is lower).
    pil_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    limit = max_pixels if max_pixels is not None else pil_limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if limit is not None and im.width * im.height > limit:
                    raise ImageReadError(f"image too large: {im.width}x{im.height} is "
                                         f"{im.width * im.height / 1e6:.1f} megapixels, the limit is {limit / 1e6:g}")
                im = ImageOps.exif_transpose(im)
                im.load()
                return _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageReadError(f"not an image file (or an unsupported format): {p}") from None
    except Image.DecompressionBombError as e:  # beyond PIL's own limit: it gave no width and height
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
        shown = min(x for x in (limit, pil_limit) if x is not None)
        raise ImageReadError(f"image too large: {p} is {size}, the limit is {shown / 1e6:g}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise ImageReadError(f"cannot decode image {p}: {e}") from None


def _to_rgb(im) -> np.ndarray:
    """A loaded PIL image of any mode -> RGB uint8 (H, W, 3)."""
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


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes (JPEG/PNG/...) of a dataset -> RGB uint8 (H, W, 3), stored orientation."""
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_STORED) if data else None
    if img is None:
        raise DataError(f"{where}: embedded image cannot be decoded")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image_size(image: bytes | str | Path | BinaryIO) -> tuple[int, int]:
    """(height, width) of encoded image bytes, an image file or an open one (read from where it
    is), from the header (no pixel decode).

    Raises FileNotFoundError for a missing file and ValueError / PIL's errors for unreadable data.
    """
    from PIL import Image

    if not isinstance(image, (bytes, bytearray)):
        with Image.open(image) as im:
            w, h = im.size
        return int(h), int(w)
    for chunk in (image[:262144], image):
        try:
            with Image.open(io.BytesIO(chunk)) as im:
                w, h = im.size
            return int(h), int(w)
        except Exception:  # noqa: BLE001 - truncated header: retry with the whole file
            continue
    raise ValueError("unrecognised image header")


def decode_mask_image(data: bytes, where: str) -> np.ndarray:
    """An encoded mask image (PNG, any depth or channels) -> bool (H, W): nonzero pixels."""
    m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if m is None:
        raise DataError(f"{where}: mask image cannot be decoded")
    return m.any(axis=2) if m.ndim == 3 else m > 0


def decode_segmentation(segm: Any, height: int, width: int, where: str) -> np.ndarray:
    """COCO segmentation -> bool mask (height, width): the union of all parts.

    ``segm``: polygons ``[[x1, y1, x2, y2, ...], ...]`` (a flat single polygon is accepted too),
    an RLE dict with uncompressed ``counts`` (a list, crowd annotations) or compressed ``counts``
    (str/bytes), or a list of RLE dicts. Raises DataError (naming ``where``) on empty or malformed
    input and on an empty result.
    """
    from pycocotools import mask as mask_utils

    h, w = int(height), int(width)
    try:
        if isinstance(segm, dict):
            rle = _rle(segm, h, w, where)
        elif isinstance(segm, (list, tuple)) and segm and all(isinstance(p, dict) for p in segm):
            rle = mask_utils.merge([_rle(p, h, w, where) for p in segm], intersect=False)
        elif isinstance(segm, (list, tuple, np.ndarray)):
            polys = list(segm)
            if polys and not isinstance(polys[0], (list, tuple, np.ndarray)):
                polys = [polys]  # one flat polygon (lmms-lab exports)
            parts = []
            for p in polys:
                p = [float(v) for v in p]
                if len(p) % 2:
                    raise DataError(f"{where}: polygon with an odd number of coordinates ({len(p)})")
                if len(p) >= 6:  # fewer than 3 points has no area; len 4 would be read as a box
                    parts.append(p)
            if not parts:
                raise DataError(f"{where}: empty polygon (no part with at least 3 points)")
            rle = mask_utils.merge(mask_utils.frPyObjects(parts, h, w), intersect=False)
        else:
            raise DataError(f"{where}: unsupported segmentation of type {type(segm).__name__}")
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy= DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
    except DataError:
        raise
    except Exception as e:  # pycocotools raises bare Exceptions / TypeErrors on bad input
        raise DataError(f"{where}: cannot decode the segmentation ({type(e).__name__}: {e})") from None
    if m.ndim == 3:
        m = m.any(axis=2)
    m = m.astype(bool)
    return check_mask(m, h, w, where)


def check_mask(mask: np.ndarray, height: int, width: int, where: str) -> np.ndarray:
    """``mask`` (bool (H, W)) unchanged if it has the image's size and is not empty, else DataError."""
    if mask.shape != (height, width):
        raise DataError(f"{where}: mask is {mask.shape[0]}x{mask.shape[1]} but the image is {height}x{width}")
    if not mask.any():
        raise DataError(f"{where}: the object mask is empty")
    return mask


def _rle(segm: dict, h: int, w: int, where: str) -> dict:
    from pycocotools import mask as mask_utils

    if "counts" not in segm or "size" not in segm:
        raise DataError(f"{where}: RLE segmentation without 'counts'/'size'")
    size = [int(v) for v in segm["size"]]
    if size != [h, w]:
        raise DataError(f"{where}: RLE size {size[0]}x{size[1]} does not match the image {h}x{w}")
    counts = segm["counts"]
    if isinstance(counts, (list, tuple, np.ndarray)):  # uncompressed (iscrowd=1 in COCO)
        return mask_utils.frPyObjects({"counts": [int(c) for c in counts], "size": size}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise DataError(f"{where}: RLE counts of type {type(counts).__name__}")
    return {"counts": counts, "size": size}


def write_image(path: str | Path, rgb: np.ndarray) -> Path:
    """Write RGB uint8 (H, W, 3) (or a bool (H, W) mask as 0/255) to ``path`` (format from the suffix)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = rgb.astype(np.uint8) * 255 if rgb.dtype == bool else rgb
    bgr = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(p), bgr):
        raise UserError(f"cannot write {p} (unknown image extension or unwritable directory)")
    return p
