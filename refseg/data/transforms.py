"""Image / mask / text preprocessing shared by training, evaluation and the Predictor.

One function each, so a model sees exactly the same input at train, eval and demo time. Loader
workers stop at uint8 (``image_to_uint8``, ``polygon_mask``): the float work then happens on the
device (``normalize_pixels``), and a 480-px sample crosses from a worker in 0.9 MB instead of 4.6 MB.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


RESIZE_METHODS = ("opencv", "pil")  # model.image_resize


def image_to_uint8(image: np.ndarray, size: int, method: str = "opencv") -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> contiguous uint8 (3, size, size), square bilinear resize (LAVT).

    ``method``: ``opencv`` (cv2 INTER_LINEAR) or ``pil`` (PIL bilinear, which widens its filter when
    shrinking: LAVT's torchvision ``resize`` on PIL images).
    The planes are split by OpenCV straight into the output (about 0.03 ms at 480 px); stacking
    channel-first views of the (size, size, 3) resize instead costs a strided copy of ~1 ms in collate.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    if method == "pil":
        resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    elif method == "opencv":
        resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    else:
        raise ValueError(f"image resize method: expected one of {RESIZE_METHODS}, got {method!r}")
    out = np.empty((3, size, size), np.uint8)
    cv2.split(np.ascontiguousarray(resized), [out[0], out[1], out[2]])
    return torch.from_numpy(out)


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 ``(x / 255 - mean) / std`` (ImageNet), on ``pixels``' device.

    Bit-identical to the float32 numpy formula the loader used to apply: the same three correctly
    rounded float32 operations in the same order. The constants are tensors, not Python numbers,
    because CUDA divides by a Python scalar as a multiplication by its reciprocal (1-ulp differences).
    """
    if pixels.dtype != torch.uint8 or pixels.ndim < 3 or pixels.shape[-3] != 3:
        raise ValueError(f"expected uint8 pixels (..., 3, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
    dev = pixels.device
    scale = torch.tensor(255.0, dtype=torch.float32, device=dev)
    mean = torch.from_numpy(IMAGENET_MEAN).to(dev).view(3, 1, 1)
    std = torch.from_numpy(IMAGENET_STD).to(dev).view(3, 1, 1)
    return (pixels.float() / scale - mean) / std


def polygon_mask(segm, height: int, width: int, size: int) -> np.ndarray | None:
    """COCO polygons of an (height, width) image rasterised straight at (size, size): uint8 0/1.

    The union of all parts, by pycocotools' own rasteriser with the vertices scaled to the target
    grid, so no original-size mask is built and resized. On RefCOCO-like polygons at 480 px this
    agrees with nearest-resizing the original-size mask to 99.4% IoU on average (pixels along the
    outline differ) and is closer to the polygon's true coverage (99.8% vs 99.4% IoU against a
    4x-supersampled raster). Returns None for RLE segmentations (those cannot be scaled: decode them
    at the original size and ``resize_mask``). Raises ValueError on malformed polygons.
    """
    from pycocotools import mask as mask_utils

    if isinstance(segm, dict) or not isinstance(segm, (list, tuple, np.ndarray)) or len(segm) == 0:
        return None
    polys = list(segm)
    if isinstance(polys[0], dict):
        return None
    if not isinstance(polys[0], (list, tuple, np.ndarray)):
        polys = [polys]  # one flat polygon
    sx, sy = size / float(width), size / float(height)
    parts = []
    for p in polys:
        xy = np.asarray(p, dtype=np.float64).ravel()
        if xy.size % 2:
            raise ValueError(f"polygon with an odd number of coordinates ({xy.size})")
        if xy.size >= 6:  # fewer than 3 points has no area
            parts.append((xy.reshape(-1, 2) * (sx, sy)).ravel().tolist())
    if not parts:
        raise ValueError("empty polygon (no part with at least 3 points)")
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, size, size), intersect=False))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int], method: str = "opencv") -> np.ndarray:
    """Bool/uint8 mask (H, W) -> bool mask (size, size) or (h, w) with nearest-neighbour resampling.

    ``method``: ``opencv`` (pixel-centre indices, ``resize_label_map``) or ``pil`` (PIL nearest, LAVT's;
    it rounds some exact half-pixel positions the other way).
    """
    if method == "pil":
        h, w = (size, size) if isinstance(size, int) else size
        return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST)).astype(bool)
    return resize_label_map(mask.astype(np.uint8), size).astype(bool)


def resize_label_map(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Integer label map (H, W) -> (size, size) or (h, w), nearest neighbour, same dtype.

    Output pixel i reads source pixel floor((i + 0.5) * H / h): pixel centres aligned, as the image's
    INTER_LINEAR resize is. OpenCV's INTER_NEAREST reads floor(i * H / h), which shifts the map up to
    half a pixel to the top-left (on refshapes at 128 px a perfect label map upsampled back scores
    92.4 mIoU against 95.2 aligned); its INTER_NEAREST_EXACT aligns centres but is off by one at
    some sizes in OpenCV 4.x (sizes that are multiples of 64), so the indices are computed exactly here.
    """
    h, w = (size, size) if isinstance(size, int) else size
    H, W = labels.shape[:2]
    rows = (2 * np.arange(h) + 1) * H // (2 * h)
    cols = (2 * np.arange(w) + 1) * W // (2 * w)
    return np.ascontiguousarray(labels[rows[:, None], cols[None, :]])


def clean_text(text: str) -> str:
    """Collapse newlines, tabs and repeated spaces; expressions are single lines."""
    return " ".join(str(text).split())


def encode_text(tokenizer, texts: str | list[str], max_tokens: int,
                truncation: str = "sep") -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise to fixed length: returns input_ids and attention_mask, each (B, max_tokens) long.

    ``truncation``: ``sep`` (a long expression keeps its closing [SEP]) or ``cut`` (LAVT: the whole
    encoding [CLS] ... [SEP] cut at ``max_tokens``, padded with the pad id).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = [clean_text(t) for t in texts]
    if truncation == "sep":
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]
    if truncation != "cut":
        raise ValueError(f"truncation: expected sep or cut, got {truncation!r}")
    encoded = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    ids = torch.full((len(texts), max_tokens), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((len(texts), max_tokens), dtype=torch.long)
    for i, seq in enumerate(encoded):
        seq = seq[:max_tokens]
        ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, :len(seq)] = 1
    return ids, mask
