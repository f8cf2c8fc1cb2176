"""Scenes: 3-6 coloured shapes (circle, square, triangle, star, hexagon, diamond, cross) in three size
classes, placed so that every object stays at least ``MIN_VISIBLE`` visible and objects of one colour
never touch (their shared edge would be invisible). An object's ``mask`` is its visible region, bool
(S, S); ``full_mask`` the whole shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")
# Saturated, clearly named colours (RGB); backgrounds are muted so these stay nameable.
COLORS = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 220),
    "yellow": (240, 215, 35),
    "purple": (135, 50, 185),
    "orange": (245, 135, 25),
    "white": (240, 240, 240),
}
# sqrt(full area) as a fraction of the image size; gaps between classes keep them apart (area
# ratio >= 1.5 between neighbouring classes).
SIZE_CLASSES = {"small": (0.085, 0.105), "medium": (0.135, 0.16), "large": (0.20, 0.235)}
SIZES = tuple(SIZE_CLASSES)

MIN_VISIBLE = 0.65  # share of an object's own area that must stay visible after occlusion


@dataclass
class ObjectSpec:
    """What to draw: ``center`` (x, y) in pixels, ``scale`` = sqrt of the full area in pixels."""

    shape: str
    color: str
    size: str
    center: tuple[float, float]
    scale: float
    rotation: float = 0.0  # degrees
    rgb: Optional[tuple[int, int, int]] = None  # default: COLORS[color]


@dataclass
class SceneObject:
    """One drawn object. Masks are bool (S, S); ``mask`` is the visible region after occlusion."""

    shape: str
    color: str
    size: str
    center: tuple[float, float]  # centre of the full shape (x, y)
    scale: float
    rotation: float
    rgb: tuple[int, int, int]
    full_mask: Optional[np.ndarray]
    mask: Optional[np.ndarray]
    full_area: int
    area: int  # visible pixels
    centroid: tuple[float, float]  # centroid of the visible region (x, y)

    @property
    def visible_fraction(self) -> float:
        return self.area / max(self.full_area, 1)


@dataclass
class Scene:
    """Objects in painter's order (index 0 at the bottom)."""

    image_size: int
    objects: list[SceneObject] = field(default_factory=list)
    # memo of candidate lists and pairwise relation states; objects must not change once resolved
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def candidates(self, d) -> list[int]:
        """Indices of the objects that description ``d`` (a ``grammar.Desc``) matches."""
        key = ("cands", d)
        if key not in self.cache:
            self.cache[key] = [i for i, o in enumerate(self.objects) if d.matches(o)]
        return self.cache[key]


def shape_polygon(shape: str, center: Sequence[float], scale: float, rotation: float = 0.0) -> np.ndarray:
    """Vertices (K, 2) float (x, y) of a shape whose area is ``scale**2``, centred at ``center``."""
    s = float(scale)
    if shape == "circle":
        r = s / math.sqrt(math.pi)
        a = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        pts = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    elif shape == "square":
        h = s / 2
        pts = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    elif shape == "triangle":  # equilateral, apex up (image y grows downwards)
        side = s * math.sqrt(4 / math.sqrt(3))
        r = side / math.sqrt(3)
        a = np.deg2rad([-90, 30, 150])
        pts = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    elif shape == "star":  # 5 points, inner/outer radius 0.45: area = 5 R r sin(36 deg)
        r_out = s / math.sqrt(5 * 0.45 * math.sin(math.pi / 5))
        a = np.deg2rad(-90 + 36 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, r_out, 0.45 * r_out)
        pts = np.stack([rad * np.cos(a), rad * np.sin(a)], 1)
    elif shape == "hexagon":
        r = s / math.sqrt(3 * math.sqrt(3) / 2)
        a = np.deg2rad(60 * np.arange(6))
        pts = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    elif shape == "diamond":  # rhombus, taller than wide, so it never reads as a rotated square
        d1 = s * math.sqrt(2 / 1.45)
        d2 = 1.45 * d1
        pts = np.array([[0, -d2 / 2], [d1 / 2, 0], [0, d2 / 2], [-d1 / 2, 0]])
    elif shape == "cross":  # plus sign made of 5 unit squares
        w = s / math.sqrt(5)
        u, v = w / 2, 1.5 * w
        pts = np.array([[-u, -v], [u, -v], [u, -u], [v, -u], [v, u], [u, u], [u, v], [-u, v], [-u, u],
                        [-v, u], [-v, -u], [-u, -u]])
    else:
        raise ValueError(f"unknown shape '{shape}' (expected one of {', '.join(SHAPES)})")
    t = math.radians(rotation)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return pts @ rot.T + np.asarray(center, dtype=np.float64)


def _raster(poly: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    # 4 fractional bits: sub-pixel vertices, no anti-aliasing, so the mask is exactly what is drawn.
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def mask_centroid(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) mean of the True pixels; NaN for an empty mask."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    m = cv2.moments(mask[y:y + h, x:x + w].view(np.uint8), binaryImage=True)
    if m["m00"] == 0:
        return (float("nan"), float("nan"))
    return (x + m["m10"] / m["m00"], y + m["m01"] / m["m00"])


def build_scene(image_size: int, specs: Sequence[ObjectSpec]) -> Scene:
    """Rasterise specs (painter's order) into a Scene with full and visible masks."""
    fulls = [_raster(shape_polygon(s.shape, s.center, s.scale, s.rotation), image_size) for s in specs]
    covered = np.zeros((image_size, image_size), bool)
    visible = [None] * len(specs)
    for i in range(len(specs) - 1, -1, -1):  # top-down: what is above hides what is below
        visible[i] = fulls[i] & ~covered
        covered |= fulls[i]
    objs = []
    for s, full, vis in zip(specs, fulls, visible):
        objs.append(SceneObject(
            shape=s.shape, color=s.color, size=s.size, center=(float(s.center[0]), float(s.center[1])),
            scale=float(s.scale), rotation=float(s.rotation), rgb=tuple(s.rgb or COLORS[s.color]),
            full_mask=full, mask=vis, full_area=int(np.count_nonzero(full)), area=int(np.count_nonzero(vis)),
            centroid=mask_centroid(vis)))
    return Scene(image_size, objs)


def _poly_extent(poly: np.ndarray, center) -> float:
    return float(np.max(np.linalg.norm(poly - np.asarray(center), axis=1)))


def sample_scene(rng: np.random.Generator, image_size: int) -> Scene:
    """Sample 3-6 objects from a small per-scene palette of colours and shapes (so targets have
    distractors), placed so that every object stays >= MIN_VISIBLE visible."""
    S = image_size
    for _ in range(100):
        n = int(rng.integers(3, 7))
        kc = int(rng.integers(2, min(n, 4) + 1))
        ks = int(rng.integers(2, min(n, 4) + 1))
        # few colours and shapes per scene: most objects share one of them with another object
        colors = [str(c) for c in rng.choice(list(COLORS), kc, replace=False)]
        shapes = [str(c) for c in rng.choice(SHAPES, ks, replace=False)]
        col = colors + [str(c) for c in rng.choice(colors, n - kc)]
        shp = shapes + [str(c) for c in rng.choice(shapes, n - ks)]
        col = [col[i] for i in rng.permutation(n)]
        shp = [shp[i] for i in rng.permutation(n)]
        specs: list[ObjectSpec] = []
        fulls: list[Optional[np.ndarray]] = []  # rasterised lazily: only overlaps need masks
        discs: list[tuple[float, float, float]] = []  # (x, y, circumradius)

        def mask_of(j: int) -> np.ndarray:
            if fulls[j] is None:
                sj = specs[j]
                fulls[j] = _raster(shape_polygon(sj.shape, sj.center, sj.scale, sj.rotation), S)
            return fulls[j]

        for c, sh in zip(col, shp):
            size = SIZES[int(rng.integers(len(SIZES)))]
            lo, hi = SIZE_CLASSES[size]
            scale = float(rng.uniform(lo, hi)) * S
            rot = 0.0 if sh == "circle" else float(rng.uniform(-12, 12))
            jitter = rng.integers(-14, 15, 3)
            rgb = tuple(int(v) for v in np.clip(np.array(COLORS[c]) + jitter, 0, 255))
            base = shape_polygon(sh, (0.0, 0.0), scale, rot)
            radius = _poly_extent(base, (0, 0))
            ext = radius + 2
            if 2 * ext >= S:
                continue
            for _try in range(30):
                cx, cy = rng.uniform(ext, S - ext, 2)
                hit = [j for j, (x, y, r) in enumerate(discs) if math.hypot(x - cx, y - cy) < r + radius + 1]
                # same-coloured objects never touch: their shared edge would be invisible
                ok = not any(specs[j].color == c for j in hit)
                full = None
                if hit and ok:  # the new object is on top: an earlier object it overlaps loses what it covers
                    full = _raster(base + (cx, cy), S)
                    for j in hit:
                        covered = full.copy()
                        for k in range(j + 1, len(specs)):
                            xj, yj, rj = discs[j]
                            xk, yk, rk = discs[k]
                            if math.hypot(xj - xk, yj - yk) < rj + rk + 1:
                                covered |= mask_of(k)
                        fj = mask_of(j)
                        if np.count_nonzero(fj & ~covered) < MIN_VISIBLE * np.count_nonzero(fj):
                            ok = False
                            break
                if ok:
                    specs.append(ObjectSpec(sh, c, size, (float(cx), float(cy)), scale, rot, rgb))
                    fulls.append(full)
                    discs.append((float(cx), float(cy), radius))
                    break
        if len(specs) >= 3:
            return build_scene(S, specs)
    raise RuntimeError("could not place objects")  # pragma: no cover - needs absurd sizes
