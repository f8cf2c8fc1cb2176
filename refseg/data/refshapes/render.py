"""Rendering a scene: a textured background (gradient, stripes, smooth noise or checkers), flat-coloured
shapes with a mild shading ramp, optional blur and sensor-like noise -> RGB uint8 (S, S, 3)."""
from __future__ import annotations

import colorsys
import functools
import math

import cv2
import numpy as np

from .scene import Scene

@functools.lru_cache(maxsize=4)
def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (yy, xx), each float32 (S, S); cached (read-only use)."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@functools.lru_cache(maxsize=1)
def _noise_bank(n: int) -> np.ndarray:
    """Fixed standard-normal noise (n, n, 3) float32, identical in every process."""
    noise = np.random.default_rng(12345).standard_normal((n, n, 3), dtype=np.float32)
    noise.flags.writeable = False
    return noise


def _muted_rgb(rng: np.random.Generator) -> np.ndarray:
    h = rng.uniform(0, 1)
    s = rng.uniform(0.05, 0.45)
    v = rng.uniform(0.22, 0.68)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    """Textured background (S, S, 3) float32 in [0, 255]: gradient, stripes, noise or checkers."""
    kind = int(rng.integers(4))
    yy, xx = _grid(S)
    yy, xx = yy / S, xx / S
    c1, c2 = _muted_rgb(rng), _muted_rgb(rng)
    if kind == 0:  # linear gradient
        t = rng.uniform(0, 2 * math.pi)
        w = xx * math.cos(t) + yy * math.sin(t)
        w = (w - w.min()) / max(float(w.max() - w.min()), 1e-6)
    elif kind == 1:  # stripes, hard or soft
        t = rng.uniform(0, math.pi)
        period = rng.uniform(0.04, 0.18)
        w = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(t) + yy * math.sin(t)) / period)
        if rng.random() < 0.5:
            w = (w > 0.5).astype(np.float32)
    elif kind == 2:  # smooth colour noise
        g = int(rng.integers(4, 20))
        low = rng.uniform(0, 1, (g, g, 3)).astype(np.float32)
        noise = cv2.resize(low, (S, S), interpolation=cv2.INTER_LINEAR)
        return _lerp(c1, c2, noise)
    else:  # checkerboard, possibly rotated
        t = rng.uniform(0, math.pi / 2)
        cell = rng.uniform(0.05, 0.15)
        u = xx * math.cos(t) + yy * math.sin(t)
        v = -xx * math.sin(t) + yy * math.cos(t)
        w = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    return _lerp(c1, c2, w)


def _lerp(c1: np.ndarray, c2: np.ndarray, w: np.ndarray) -> np.ndarray:
    """c1 + (c2 - c1) * w per channel -> (S, S, 3) float32; ``w`` is (S, S) or (S, S, 3)."""
    out = np.empty(w.shape[:2] + (3,), np.float32)
    for k in range(3):  # per channel: numpy broadcasting over a trailing axis of 3 is ~30x slower
        wk = w if w.ndim == 2 else w[..., k]
        np.multiply(wk, c2[k] - c1[k], out=out[..., k])
        out[..., k] += c1[k]
    return out


def render_image(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Draw the scene: RGB uint8 (S, S, 3). Objects are flat-coloured with a mild shading ramp."""
    S = scene.image_size
    img = _background(rng, S)
    yy, xx = _grid(S)
    for o in scene.objects:
        x, y, w, h = cv2.boundingRect(o.full_mask.view(np.uint8))
        if w == 0:
            continue
        m = o.full_mask[y:y + h, x:x + w]
        t = rng.uniform(0, 2 * math.pi)
        g = rng.uniform(-0.12, 0.12)
        ramp = 1 + g * ((xx[y:y + h, x:x + w] - o.center[0]) * math.cos(t)
                        + (yy[y:y + h, x:x + w] - o.center[1]) * math.sin(t)) / o.scale
        crop = img[y:y + h, x:x + w]
        for k in range(3):
            crop[..., k] = np.where(m, o.rgb[k] * ramp, crop[..., k])  # clipped once at the end
    if rng.random() < 0.5:
        cv2.GaussianBlur(img, (3, 3), 0.6, dst=img)
    # sensor-like noise: a random crop of a fixed noise bank (fresh normals cost more than the rest);
    # in-place ops: fresh (S, S, 3) temporaries cost page faults
    bank = _noise_bank(max(768, S))
    oy, ox = rng.integers(0, bank.shape[0] - S + 1, 2)
    cv2.scaleAdd(bank[oy:oy + S, ox:ox + S], float(rng.uniform(2, 7)), img, dst=img)
    return np.clip(np.rint(img, out=img), 0, 255, out=img).astype(np.uint8)
