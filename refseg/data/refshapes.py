"""refshapes: a synthetic referring-segmentation dataset whose targets can only be found by reading.

Each image holds 3-6 coloured shapes (circle, square, triangle, star, hexagon, diamond, cross) in three
size classes on a textured background (noise, stripes, gradients, checkers). Objects may overlap; an
object's mask is its *visible* region and every object stays at least ``MIN_VISIBLE`` visible;
objects of one colour never touch (their shared edge would be invisible).
Scenes are sampled so that most targets share their colour or their shape with another object, and
each referring expression names exactly one object. Expressions come in four types, stored per
sentence as ``"type"``:

- ``attribute``   "the green triangle", "the large blue circle" (only when the description is unique),
- ``position``    "the circle on the left", "the topmost object" (the target is extreme by a pixel margin),
- ``superlative`` "the largest star", "the smaller red shape" (by an area ratio),
- ``relation``    "the blue square below the red circle" (a uniquely described anchor; only the target
  among the objects of its description satisfies the relation clearly).

Every sentence is checked by :func:`check_expression`, which parses the *text* back (a closed
vocabulary: an unknown word is an error) and resolves it against the scene with three-valued
predicates (clearly true / clearly false / ambiguous). A sentence is kept only when exactly one object
clearly matches and no object is ambiguous.

On disk (the refer layout, read by ``refseg.data.refer.ReferSource(root, "refshapes", "refshapes")``)::

    <root>/refshapes/images/000001.jpg ...   JPEG q95 4:4:4 (see IMAGE_PARAMS); ids 1..N: train, val, test
    <root>/refshapes/instances.json         COCO: images, annotations (compressed RLE), categories
    <root>/refshapes/refs(refshapes).json   refer refs with sentences [{sent_id, sent, raw, tokens, type}]
    <root>/refshapes/meta.json              generation parameters, VERSION and statistics

CLI: ``python -m refseg.data.refshapes --root data --train 4000 --val 300 --test 300 --preview out.png``.
"""
from __future__ import annotations

import colorsys
import functools
import json
import math
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from ..cli import ArgumentParser
from ..errors import UserError

VERSION = 1
DATASET_NAME = "refshapes"
SPLIT_BY = "refshapes"
REFS_FILE = f"refs({SPLIT_BY}).json"
PARAM_KEYS = ("num_train_images", "num_val_images", "num_test_images", "image_size", "seed")
SPLITS = ("train", "val", "test")
EXPR_TYPES = ("attribute", "position", "superlative", "relation")

# JPEG q95 without chroma subsampling: measured at 192 px (noisy textures), PNG level 1 encodes in
# 4.3 ms and decodes in 1.3 ms (74 KiB); this JPEG encodes in 0.4 ms and decodes in 0.55 ms (28 KiB),
# mean abs error 2.9 grey levels (mostly the added sensor noise). Masks are stored exactly as RLE.
IMAGE_EXT = ".jpg"
IMAGE_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(SHAPES)}
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
POS_MARGIN = 0.08  # extreme position: lead over the runner-up, as a fraction of the image size
REL_MARGIN = 0.08  # directional relation: offset from the anchor, fraction of the image size
REL_DOMINANCE = 0.5  # ...and the offset along the direction must be >= this x the perpendicular one
AREA_RATIO = 1.5  # superlative: the winner's area vs the runner-up's (visible and full area)
NEAR_RATIO = 1.5  # "closest to": runner-up distance / winner distance

# Share of sentences of each type the sampler aims for is set by these weights, which compensate
# for how often each type is available for a target (measured; see tests/test_refshapes.py).
TYPE_WEIGHTS = {"attribute": 0.8, "position": 0.8, "superlative": 2.5, "relation": 1.05}


class RefShapesError(UserError, ValueError):
    """Bad generation parameters or an unusable refshapes folder (one-line message)."""


class ExpressionError(ValueError):
    """A sentence that the refshapes grammar cannot parse (unknown word, conflicting words)."""


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


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

    def candidates(self, d: "Desc") -> list[int]:
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


def _centroid(mask: np.ndarray) -> tuple[float, float]:
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
            centroid=_centroid(vis)))
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


# ---------------------------------------------------------------------------------------------
# Expressions: structured queries, their semantics, and the text grammar
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Desc:
    """An object description: any of colour, shape, size class (None = unconstrained)."""

    color: Optional[str] = None
    shape: Optional[str] = None
    size: Optional[str] = None

    def matches(self, o: SceneObject) -> bool:
        return ((self.color is None or o.color == self.color) and (self.shape is None or o.shape == self.shape)
                and (self.size is None or o.size == self.size))

    @property
    def empty(self) -> bool:
        return self.color is None and self.shape is None and self.size is None


@dataclass(frozen=True)
class Query:
    """The meaning of one expression.

    type: attribute | position | superlative | relation. ``direction``: left/right/top/bottom
    (position); ``extreme``: max/min (superlative); ``relation``: left/right/above/below/closest with
    ``anchor``; ``comparative``: the two-object forms ("the larger", "the upper") that need exactly
    two candidates.
    """

    type: str
    target: Desc
    direction: Optional[str] = None
    extreme: Optional[str] = None
    relation: Optional[str] = None
    anchor: Optional[Desc] = None
    comparative: bool = False


@dataclass
class Resolution:
    matches: list[int]
    ambiguous: bool

    def unique(self, target: int) -> bool:
        return self.matches == [target] and not self.ambiguous


def _points(o: SceneObject) -> tuple[tuple[float, float], tuple[float, float]]:
    # Both the visible centroid and the shape centre must agree, so occlusion cannot flip an answer.
    return (o.centroid, o.center)


def _extreme(values: list[tuple[float, float]], margin: float) -> Optional[int]:
    """Index whose value is smallest by ``margin`` under both measures, else None."""
    best = None
    for k in range(2):
        col = [v[k] for v in values]
        order = sorted(range(len(col)), key=col.__getitem__)
        if len(order) > 1 and col[order[1]] - col[order[0]] < margin:
            return None
        if best is not None and best != order[0]:
            return None
        best = order[0]
    return best


def _direction_state(o: SceneObject, a: SceneObject, rel: str, margin: float) -> int:
    """+1 clearly holds, -1 clearly fails, 0 ambiguous: ``o`` is <rel> of anchor ``a``."""
    states = []
    for (ox, oy), (ax, ay) in zip(_points(o), _points(a)):
        dx, dy = ox - ax, oy - ay
        along, perp = {"left": (-dx, dy), "right": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[rel]
        if along >= margin and along >= REL_DOMINANCE * abs(perp):
            states.append(1)
        elif along <= 0.25 * margin:
            states.append(-1)
        else:
            states.append(0)
    return states[0] if states[0] == states[1] else 0


def resolve(scene: Scene, q: Query) -> Resolution:
    """Objects that clearly satisfy ``q``; ``ambiguous`` when some object neither clearly satisfies
    nor clearly fails it (or a comparative/anchor precondition does not hold)."""
    objs = scene.objects
    S = scene.image_size
    cands = scene.candidates(q.target)
    if q.type == "attribute":
        return Resolution(list(cands), False)
    if q.type == "relation":
        anchors = scene.candidates(q.anchor) if q.anchor is not None else []
        if len(anchors) != 1:
            return Resolution([], True)  # "the star" must name exactly one object
        a = anchors[0]
        cands = [i for i in cands if i != a]
    if q.comparative and len(cands) != 2:
        return Resolution([], True)
    if len(cands) <= 1:
        return Resolution(cands, False)
    if q.type == "position":
        sign, axis = {"left": (1, 0), "right": (-1, 0), "top": (1, 1), "bottom": (-1, 1)}[q.direction]
        vals = [tuple(sign * p[axis] for p in _points(objs[i])) for i in cands]
        k = _extreme(vals, POS_MARGIN * S)
        return Resolution([], True) if k is None else Resolution([cands[k]], False)
    if q.type == "superlative":
        # compare log-areas so a ratio margin becomes an additive one
        sign = -1 if q.extreme == "max" else 1
        vals = [(sign * math.log(max(objs[i].area, 1)), sign * math.log(max(objs[i].full_area, 1))) for i in cands]
        k = _extreme(vals, math.log(AREA_RATIO))
        return Resolution([], True) if k is None else Resolution([cands[k]], False)
    if q.type == "relation":
        if q.relation == "closest":
            pa = _points(objs[a])
            vals = [tuple(math.log(max(math.dist(p, c), 1e-3)) for p, c in zip(_points(objs[i]), pa)) for i in cands]
            k = _extreme(vals, math.log(NEAR_RATIO))
            return Resolution([], True) if k is None else Resolution([cands[k]], False)
        states = []
        for i in cands:
            key = ("dir", i, a, q.relation)
            if key not in scene.cache:
                scene.cache[key] = _direction_state(objs[i], objs[a], q.relation, REL_MARGIN * S)
            states.append(scene.cache[key])
        return Resolution([i for i, s in zip(cands, states) if s == 1], any(s == 0 for s in states))
    raise ValueError(f"unknown query type '{q.type}'")


# --- vocabulary --------------------------------------------------------------------------------

SHAPE_WORDS = {"circle": "circle", "disk": "circle", "disc": "circle", "square": "square",
               "triangle": "triangle", "star": "star", "hexagon": "hexagon", "diamond": "diamond",
               "rhombus": "diamond", "cross": "cross"}
# repeated entries weight the common name
SHAPE_SYNONYMS = {"circle": ["circle", "circle", "circle", "disk", "disc"],
                  "diamond": ["diamond", "diamond", "rhombus"]}
PLURALS = {"cross": "crosses", "rhombus": "rhombi"}
COLOR_WORDS = {c: c for c in COLORS} | {"violet": "purple"}
SIZE_WORDS = {"small": "small", "little": "small", "medium": "medium", "large": "large", "big": "large"}
GENERIC_NOUNS = ("object", "shape", "thing", "item")
EXTREME_WORDS = {"largest": ("max", False), "biggest": ("max", False), "larger": ("max", True),
                 "bigger": ("max", True), "smallest": ("min", False), "smaller": ("min", True),
                 "tiniest": ("min", False)}
DIRECTION_WORDS = {"left": ("left", False), "leftmost": ("left", False), "right": ("right", False),
                   "rightmost": ("right", False), "top": ("top", False), "topmost": ("top", False),
                   "highest": ("top", False), "uppermost": ("top", False), "upper": ("top", True),
                   "bottom": ("bottom", False), "bottommost": ("bottom", False), "lowest": ("bottom", False),
                   "lower": ("bottom", True)}
RELATION_PHRASES = {  # longest first within a relation so the regex takes the full phrase
    "left": ["to the left of", "left of"],
    "right": ["to the right of", "right of"],
    "above": ["above", "higher than"],
    "below": ["below", "under", "beneath", "underneath", "lower than"],
    "closest": ["closest to", "nearest to", "nearest", "next to"],
}
_REL_LOOKUP = {p: r for r, ps in RELATION_PHRASES.items() for p in ps}
_REL_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _REL_LOOKUP), key=len, reverse=True)) + r")\b")
FILLERS = {"the", "a", "an", "that", "which", "is", "on", "at", "in", "of", "to", "far", "furthest",
           "farthest", "most", "two", "sized", "colored", "coloured", "one", "ones", "located", "placed"}
_NOUNS = set(GENERIC_NOUNS) | {n + "s" for n in GENERIC_NOUNS}
_SHAPE_PLURAL_WORDS = {PLURALS.get(w, w + "s"): s for w, s in SHAPE_WORDS.items()}


def normalize_sentence(raw: str) -> str:
    """Lower case, punctuation dropped, single spaces (refer's ``sent``)."""
    return " ".join(re.sub(r"[^a-z ]+", " ", raw.lower().replace("-", " ")).split())


def _parse_np(words: list[str], allow_modifiers: bool, text: str):
    desc = {"color": None, "shape": None, "size": None}
    mods = {"direction": None, "extreme": None, "comparative": False}

    def put(d, key, value, word):
        if d[key] is not None and d[key] != value:
            raise ExpressionError(f"conflicting words ('{word}') in '{text}'")
        d[key] = value

    for w in words:
        if w in COLOR_WORDS:
            put(desc, "color", COLOR_WORDS[w], w)
        elif w in SHAPE_WORDS:
            put(desc, "shape", SHAPE_WORDS[w], w)
        elif w in _SHAPE_PLURAL_WORDS:
            put(desc, "shape", _SHAPE_PLURAL_WORDS[w], w)
        elif w in SIZE_WORDS:
            put(desc, "size", SIZE_WORDS[w], w)
        elif allow_modifiers and w in EXTREME_WORDS:
            ext, comp = EXTREME_WORDS[w]
            put(mods, "extreme", ext, w)
            mods["comparative"] |= comp
        elif allow_modifiers and w in DIRECTION_WORDS:
            d, comp = DIRECTION_WORDS[w]
            put(mods, "direction", d, w)
            mods["comparative"] |= comp
        elif w in _NOUNS or w in FILLERS:
            continue
        else:
            raise ExpressionError(f"unknown word '{w}' in '{text}'")
    if mods["direction"] and mods["extreme"]:
        raise ExpressionError(f"both a position and a size superlative in '{text}'")
    return Desc(**desc), mods


def parse_expression(text: str) -> Query:
    """Parse a refshapes sentence (raw or normalised) into a :class:`Query`; ExpressionError if the
    grammar does not cover it."""
    sent = normalize_sentence(text)
    if not sent:
        raise ExpressionError("empty expression")
    rels = list(_REL_RE.finditer(sent))
    if len(rels) > 1:
        raise ExpressionError(f"more than one relation in '{text}'")
    if rels:
        m = rels[0]
        target, tmods = _parse_np(sent[: m.start()].split(), False, text)
        anchor, _ = _parse_np(sent[m.end():].split(), False, text)
        if anchor.empty:
            raise ExpressionError(f"the relation in '{text}' has no described anchor")
        return Query("relation", target, relation=_REL_LOOKUP[m.group(1)], anchor=anchor)
    target, mods = _parse_np(sent.split(), True, text)
    if mods["direction"]:
        return Query("position", target, direction=mods["direction"], comparative=mods["comparative"])
    if mods["extreme"]:
        return Query("superlative", target, extreme=mods["extreme"], comparative=mods["comparative"])
    if target.empty:
        raise ExpressionError(f"'{text}' describes nothing")
    return Query("attribute", target)


def check_expression(scene: Scene, text: str, target: int) -> bool:
    """True when ``text`` parses and names exactly object ``target`` of ``scene`` unambiguously."""
    try:
        q = parse_expression(text)
    except ExpressionError:
        return False
    return resolve(scene, q).unique(target)


# --- rendering queries as text ---------------------------------------------------------------


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _noun(rng, shape: Optional[str], plural=False, has_modifier=False) -> str:
    if shape is not None:
        w = _pick(rng, SHAPE_SYNONYMS.get(shape, [shape]))
        return PLURALS.get(w, w + "s") if plural else w
    if plural:
        return _pick(rng, ["objects", "shapes", "things"])
    return _pick(rng, ["object", "shape", "thing", "one"] if has_modifier else ["object", "shape", "thing"])


def _np(rng, d: Desc, plural=False, pre_modifier=False) -> str:
    """Noun phrase without article: '[size] [colour] noun'."""
    words = []
    if d.size:
        words.append(_pick(rng, {"small": ["small", "little"], "medium": ["medium", "medium sized"],
                                 "large": ["large", "big"]}[d.size]))
    if d.color:
        words.append(d.color)
    words.append(_noun(rng, d.shape, plural, has_modifier=bool(words) or pre_modifier))
    return " ".join(words)


def _the(rng) -> str:
    return "the " if rng.random() < 0.85 else ""


def render_query(q: Query, rng: np.random.Generator) -> str:
    """One phrasing of ``q`` (raw text; capitalisation/period added by :func:`_finish`)."""
    d = q.target
    if q.type == "attribute":
        forms = [lambda: _the(rng) + _np(rng, d)]
        if d.color and d.shape and not d.size:
            forms += [lambda: f"{_the(rng)}{_noun(rng, d.shape)} that is {d.color}",
                      lambda: f"{_the(rng)}{d.color} colored {_noun(rng, d.shape)}",
                      lambda: f"{_the(rng)}{_noun(rng, d.shape)} in {d.color}"]
        return _pick(rng, forms)()
    if q.type == "position":
        dirn = q.direction
        if q.comparative:
            adj = {"left": "left", "right": "right", "top": "upper", "bottom": "lower"}[dirn]
            return f"{_the(rng)}{adj} {_np(rng, d, pre_modifier=True)}"
        most = {"left": ["leftmost"], "right": ["rightmost"], "top": ["topmost", "highest", "uppermost", "top"],
                "bottom": ["lowest", "bottom", "bottommost"]}[dirn]
        post = {"left": ["on the left", "on the far left", "furthest to the left"],
                "right": ["on the right", "on the far right", "furthest to the right"],
                "top": ["at the top"], "bottom": ["at the bottom"]}[dirn]
        forms = [lambda: f"{_the(rng)}{_pick(rng, most)} {_np(rng, d, pre_modifier=True)}",
                 lambda: f"{_the(rng)}{_np(rng, d)} {_pick(rng, post)}",
                 lambda: f"the {_pick(rng, most)} of the {_np(rng, d, plural=True)}"]
        return _pick(rng, forms)()
    if q.type == "superlative":
        if q.comparative:
            adj = _pick(rng, ["larger", "bigger"] if q.extreme == "max" else ["smaller"])
            forms = [lambda: f"{_the(rng)}{adj} {_np(rng, d, pre_modifier=True)}",
                     lambda: f"the {adj} of the two {_np(rng, d, plural=True)}"]
        else:
            adj = _pick(rng, ["largest", "biggest"] if q.extreme == "max" else ["smallest", "tiniest"])
            forms = [lambda: f"{_the(rng)}{adj} {_np(rng, d, pre_modifier=True)}",
                     lambda: f"the {adj} of the {_np(rng, d, plural=True)}"]
        return _pick(rng, forms)()
    if q.type == "relation":
        rel = _pick(rng, RELATION_PHRASES[q.relation])
        anchor = "the " + _np(rng, q.anchor)
        head = _the(rng) + _np(rng, d)
        glue = _pick(rng, ["", "", "that is ", "which is "])
        return f"{head} {glue}{rel} {anchor}"
    raise ValueError(f"unknown query type '{q.type}'")


def _finish(rng, text: str) -> str:
    text = " ".join(text.split())
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.15:
        text += "."
    return text


# --- sampling referring expressions -----------------------------------------------------------


def _descs(o: SceneObject, with_size: bool) -> list[Desc]:
    sizes = (None, o.size) if with_size else (None,)
    return [Desc(c, s, z) for c in (None, o.color) for s in (None, o.shape) for z in sizes]


def candidate_queries(scene: Scene, t: int) -> dict[str, list[Query]]:
    """Queries per type that *could* name object ``t`` (not yet resolved), after the generator's
    structural rules: attribute descriptions use colour and/or shape (size only beside them);
    position/superlative/relation need >= 2 objects of the target's description (otherwise those
    words would be redundant); anchors are other objects with a unique colour/shape description."""
    objs = scene.objects
    o = objs[t]
    out: dict[str, list[Query]] = {k: [] for k in EXPR_TYPES}
    out["attribute"] = [Query("attribute", d) for d in _descs(o, True) if d.color or d.shape]
    anchors = []
    for a, oa in enumerate(objs):
        if a != t:
            uniq = [d for d in _descs(oa, False) if not d.empty and len(scene.candidates(d)) == 1]
            if uniq:
                anchors.append((a, uniq))
    for d in _descs(o, False):
        cands = scene.candidates(d)
        if len(cands) < 2:
            continue
        out["position"] += [Query("position", d, direction=k) for k in ("left", "right", "top", "bottom")]
        out["superlative"] += [Query("superlative", d, extreme=k) for k in ("max", "min")]
        for a, uniq in anchors:
            if len(cands) - (a in cands) >= 2:
                out["relation"] += [Query("relation", d, relation=rel, anchor=ad) for rel in RELATION_PHRASES
                                    for ad in uniq]
    return out


def valid_queries(scene: Scene, t: int) -> dict[str, list[Query]]:
    """All generator-admissible queries per type that name object ``t`` uniquely."""
    return {k: [q for q in v if resolve(scene, q).unique(t)] for k, v in candidate_queries(scene, t).items()}


class _QuerySource:
    """Valid queries of one target drawn lazily in random order: only what is used gets resolved."""

    def __init__(self, scene: Scene, t: int, rng: np.random.Generator):
        self.scene, self.t = scene, t
        self.pools = candidate_queries(scene, t)
        self.order = {}
        for k, v in self.pools.items():
            idx = rng.permutation(len(v)).tolist()
            if k == "attribute" and rng.random() < 0.7:  # mostly no size word unless it is needed
                idx.sort(key=lambda i: v[i].target.size is not None, reverse=True)
            self.order[k] = idx  # popped from the end
        self.dead: set[str] = set()

    def kinds(self) -> list[str]:
        return [k for k in EXPR_TYPES if k not in self.dead and self.order[k]]

    def take(self, kind: str) -> Optional[Query]:
        while self.order[kind]:
            q = self.pools[kind][self.order[kind].pop()]
            if resolve(self.scene, q).unique(self.t):
                return q
        self.dead.add(kind)
        return None


def _shares_attribute(scene: Scene, t: int) -> bool:
    o = scene.objects[t]
    return any(x.color == o.color or x.shape == o.shape for i, x in enumerate(scene.objects) if i != t)


@dataclass
class GeneratedRef:
    target: int
    sentences: list[tuple[str, str]]  # (raw text, type)


def generate_refs(scene: Scene, rng: np.random.Generator) -> list[GeneratedRef]:
    """1-3 refs per scene, 1-3 sentences each, every sentence verified by :func:`check_expression`."""
    n_obj = len(scene.objects)
    # Prefer targets with a same-colour or same-shape distractor: a single word must not suffice.
    w = np.array([4.0 if _shares_attribute(scene, t) else 1.0 for t in range(n_obj)])
    order = [int(t) for t in rng.choice(n_obj, n_obj, replace=False, p=w / w.sum())]
    n_refs = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    refs = []
    for t in order:
        if len(refs) == n_refs:
            break
        source = _QuerySource(scene, t, rng)
        n_sent = int(rng.choice([1, 2, 3], p=[0.35, 0.35, 0.3]))
        sents: list[tuple[str, str]] = []
        used_types: set[str] = set()
        for _ in range(3 * n_sent):  # a few spare tries for duplicates and exhausted types
            if len(sents) == n_sent:
                break
            q = None
            while q is None and source.kinds():
                kinds = source.kinds()
                p = np.array([TYPE_WEIGHTS[k] * (0.4 if k in used_types else 1.0) for k in kinds])
                kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
                q = source.take(kind)
            if q is None:
                break
            two = len(scene.candidates(q.target)) == 2
            if q.type in ("position", "superlative") and two and rng.random() < 0.35:  # "the upper/larger X"
                q = Query(q.type, q.target, q.direction, q.extreme, comparative=True)
            text = _finish(rng, render_query(q, rng))
            if not check_expression(scene, text, t):  # pragma: no cover - a grammar/semantics bug
                raise AssertionError(f"generated an ambiguous or unparseable expression: {text!r}")
            if any(normalize_sentence(text) == normalize_sentence(s) for s, _ in sents):
                continue
            sents.append((text, q.type))
            used_types.add(q.type)
        if sents:
            refs.append(GeneratedRef(t, sents))
    refs.sort(key=lambda r: r.target)
    return refs


def image_rng(seed: int, image_id: int) -> np.random.Generator:
    """The generator of one image: depends only on (seed, image id), never on worker scheduling."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(image_id)]))


def generate_example(seed: int, image_id: int, image_size: int):
    """(scene, RGB uint8 image, refs) for one image id; resamples until the scene has a ref."""
    rng = image_rng(seed, image_id)
    while True:
        scene = sample_scene(rng, image_size)
        refs = generate_refs(scene, rng)
        if refs:
            return scene, render_image(scene, rng), refs


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _encode_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _make_image(task) -> dict:
    """Worker: generate, write the PNG, return the COCO/ref records without global ids."""
    image_id, split, seed, image_size, image_dir = task
    scene, image, refs = generate_example(seed, image_id, image_size)
    file_name = f"{image_id:06d}{IMAGE_EXT}"
    ok, buf = cv2.imencode(IMAGE_EXT, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), IMAGE_PARAMS)
    if not ok:  # pragma: no cover
        raise RuntimeError(f"could not encode {file_name}")
    Path(image_dir, file_name).write_bytes(buf.tobytes())
    anns = []
    for o in scene.objects:
        bbox = list(cv2.boundingRect(o.mask.view(np.uint8)))  # x, y, w, h of the visible region
        anns.append({
            "category_id": CATEGORY_IDS[o.shape], "bbox": [float(v) for v in bbox], "area": float(o.area),
            "segmentation": _encode_rle(o.mask), "iscrowd": 0,
            "attributes": {"color": o.color, "size": o.size, "center": [round(o.center[0], 3), round(o.center[1], 3)],
                           "full_area": o.full_area},
        })
    shares = [_shares_attribute(scene, r.target) for r in refs]
    return {"image": {"id": image_id, "file_name": file_name, "height": image_size, "width": image_size},
            "split": split, "anns": anns, "refs": [(r.target, r.sentences) for r in refs], "shares": shares}


def _validate_params(num_train: int, num_val: int, num_test: int, image_size: int, seed: int) -> None:
    for name, v in (("num_train_images", num_train), ("num_val_images", num_val), ("num_test_images", num_test),
                    ("image_size", image_size), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise RefShapesError(f"{name} must be an integer, got {v!r}")
    for name, v in (("num_train_images", num_train), ("num_val_images", num_val), ("num_test_images", num_test)):
        if v < 0:
            raise RefShapesError(f"{name} must be >= 0, got {v}")
    if num_train + num_val + num_test < 1:
        raise RefShapesError("at least one image is needed")
    if not 48 <= image_size <= 4096:
        raise RefShapesError(f"image_size must be between 48 and 4096, got {image_size}")
    if seed < 0:
        raise RefShapesError(f"seed must be >= 0, got {seed}")


def _num_workers(n: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8, n // 250))


def _worker_init() -> None:
    cv2.setNumThreads(1)


def write_refshapes(root, num_train_images: int = 4000, num_val_images: int = 300, num_test_images: int = 300,
                    image_size: int = 192, seed: int = 0, progress: bool = True) -> Path:
    """Generate the dataset into ``<root>/refshapes`` (replacing what is there) and return that path.

    Written into a temporary sibling folder and renamed into place, so readers never see a partial
    dataset. Image ids run 1..N over train, val, test; everything depends only on ``seed`` (each image
    has its own generator, so the worker count does not matter). From 500 images on, it uses a pool of
    spawned processes: a calling script needs the usual ``if __name__ == "__main__":`` guard.
    Concurrent callers should go through :func:`ensure_refshapes` (it holds a lock).
    """
    _validate_params(num_train_images, num_val_images, num_test_images, image_size, seed)
    from tqdm import tqdm

    t0 = time.time()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / DATASET_NAME
    tmp = root / f".{DATASET_NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    image_dir = tmp / "images"
    image_dir.mkdir(parents=True)
    try:
        tasks = []
        image_id = 0
        for split, n in zip(SPLITS, (num_train_images, num_val_images, num_test_images)):
            for _ in range(n):
                image_id += 1
                tasks.append((image_id, split, int(seed), int(image_size), str(image_dir)))
        workers = _num_workers(len(tasks))
        bar = tqdm(total=len(tasks), desc="refshapes", unit="img", disable=not progress, dynamic_ncols=True)
        if workers > 1:
            import multiprocessing as mp

            # spawn: safe when the caller already runs torch/CUDA threads (fork would copy them)
            with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
                results = []
                for r in pool.imap(_make_image, tasks, chunksize=16):
                    results.append(r)
                    bar.update()
        else:
            results = []
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)  # small images: OpenCV's thread pool costs more than it saves
            try:
                for task in tasks:
                    results.append(_make_image(task))
                    bar.update()
            finally:
                cv2.setNumThreads(threads)
        bar.close()

        images, annotations, refs = [], [], []
        ann_id = ref_id = sent_id = 0
        type_counts = {k: 0 for k in EXPR_TYPES}
        split_counts = {s: {"images": 0, "refs": 0, "sentences": 0} for s in SPLITS}
        shares = []
        for r in results:
            img = r["image"]
            images.append(img)
            split_counts[r["split"]]["images"] += 1
            first_ann = ann_id + 1
            for a in r["anns"]:
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": img["id"], **a})
            stem = Path(img["file_name"]).stem
            for (target, sentences), share in zip(r["refs"], r["shares"]):
                ref_id += 1
                sents = []
                for raw, kind in sentences:
                    sent = normalize_sentence(raw)
                    sents.append({"sent_id": sent_id, "sent": sent, "raw": raw, "tokens": sent.split(), "type": kind})
                    sent_id += 1
                    type_counts[kind] += 1
                a = annotations[first_ann - 1 + target]
                refs.append({
                    "ref_id": ref_id, "ann_id": a["id"], "image_id": img["id"], "split": r["split"],
                    "category_id": a["category_id"], "file_name": f"{stem}_{ref_id}{IMAGE_EXT}",
                    "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
                })
                shares.append(share)
                split_counts[r["split"]]["refs"] += 1
                split_counts[r["split"]]["sentences"] += len(sents)
        instances = {
            "info": {"description": "refshapes: synthetic referring segmentation", "version": VERSION},
            "images": images, "annotations": annotations,
            "categories": [{"id": CATEGORY_IDS[s], "name": s, "supercategory": "shape"} for s in SHAPES],
        }
        (tmp / "instances.json").write_text(json.dumps(instances, separators=(",", ":")))
        (tmp / REFS_FILE).write_text(json.dumps(refs, separators=(",", ":")))
        total_sents = max(sum(type_counts.values()), 1)
        meta = {
            "version": VERSION,
            "num_train_images": int(num_train_images), "num_val_images": int(num_val_images),
            "num_test_images": int(num_test_images), "image_size": int(image_size), "seed": int(seed),
            "stats": {
                "splits": split_counts,
                "types": type_counts,
                "type_share": {k: round(v / total_sents, 4) for k, v in type_counts.items()},
                "distractor_share": round(float(np.mean(shares)) if shares else 0.0, 4),
                "workers": workers,
                "seconds": round(time.time() - t0, 2),
            },
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        old = None
        if final.exists():
            old = root / f".{DATASET_NAME}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def scene_from_annotations(anns: Sequence[dict], image_size: int) -> Scene:
    """Rebuild a Scene (what the checker needs) from one image's written annotations, in order."""
    from pycocotools import mask as mask_utils

    names = {v: k for k, v in CATEGORY_IDS.items()}
    objs = []
    for a in anns:
        at = a["attributes"]
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        objs.append(SceneObject(
            shape=names[a["category_id"]], color=at["color"], size=at["size"], center=tuple(at["center"]),
            scale=math.sqrt(at["full_area"]), rotation=0.0, rgb=COLORS[at["color"]], full_mask=None, mask=m,
            full_area=int(at["full_area"]), area=int(np.count_nonzero(m)), centroid=_centroid(m)))
    return Scene(image_size, objs)


def verify_refshapes(path) -> int:
    """Re-check every written sentence against the scene rebuilt from ``instances.json``; returns the
    number of sentences checked, raises RefShapesError naming the first bad one."""
    path = Path(path)
    inst = json.loads((path / "instances.json").read_text())
    refs = json.loads((path / REFS_FILE).read_text())
    by_image: dict[int, list[dict]] = {}
    for a in inst["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    sizes = {im["id"]: im["height"] for im in inst["images"]}
    scenes: dict[int, tuple[Scene, dict[int, int]]] = {}
    n = 0
    for r in refs:
        if r["image_id"] not in scenes:
            anns = by_image[r["image_id"]]
            scenes[r["image_id"]] = (scene_from_annotations(anns, sizes[r["image_id"]]),
                                     {a["id"]: k for k, a in enumerate(anns)})
        scene, index = scenes[r["image_id"]]
        for s in r["sentences"]:
            if not check_expression(scene, s["raw"], index[r["ann_id"]]):
                raise RefShapesError(f"ref_id {r['ref_id']}: '{s['raw']}' does not name its target "
                                     "uniquely")
            if parse_expression(s["raw"]).type != s["type"]:
                raise RefShapesError(f"ref_id {r['ref_id']}: '{s['raw']}' is not of type {s['type']}")
            n += 1
    return n


def read_meta(path) -> Optional[dict]:
    """meta.json of a refshapes folder, or None when missing/unreadable."""
    try:
        return json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _params_of(data_cfg) -> dict:
    rs = getattr(data_cfg, "refshapes", data_cfg)
    return {k: getattr(rs, k) for k in PARAM_KEYS}


def _is_current(path: Path, params: dict) -> bool:
    meta = read_meta(path)
    if not meta or meta.get("version") != VERSION:
        return False
    if any(meta.get(k) != v for k, v in params.items()):
        return False
    return (path / "instances.json").is_file() and (path / REFS_FILE).is_file() and (path / "images").is_dir()


def ensure_refshapes(data_cfg, progress: bool = True, force: bool = False) -> Path:
    """Return ``<data_cfg.root>/refshapes``, generating it when missing, when its meta.json differs
    from ``data_cfg.refshapes`` (or the generator VERSION), or when ``force``.

    ``data_cfg`` is ``cfg.data`` (anything with ``root`` and ``refshapes.<PARAM_KEYS>``). Safe under
    concurrent callers (DDP ranks): an exclusive ``fcntl.flock`` on ``<root>/.refshapes.lock``
    serialises them and the check is repeated once the lock is held, so only the first generates.
    """
    import fcntl

    params = _params_of(data_cfg)
    _validate_params(*(params[k] for k in PARAM_KEYS))
    root = Path(getattr(data_cfg, "root", "data"))
    path = root / DATASET_NAME
    if not force and _is_current(path, params):
        return path
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{DATASET_NAME}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if force or not _is_current(path, params):
                # leftovers of a writer that was killed (we hold the lock: no writer is running)
                for stale in root.glob(f".{DATASET_NAME}.tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                for stale in root.glob(f".{DATASET_NAME}.old-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                write_refshapes(root, progress=progress, **params)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return path


# ---------------------------------------------------------------------------------------------
# Preview and CLI
# ---------------------------------------------------------------------------------------------


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for w in text.split():
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])


def write_preview(path, out, count: int = 8, split: Optional[str] = None, columns: int = 4) -> Path:
    """A PNG grid of ``count`` refs (one per image): the image enlarged, the target's outline in
    magenta, and the sentences with their types underneath."""
    from pycocotools import mask as mask_utils

    path = Path(path)
    inst = json.loads((path / "instances.json").read_text())
    refs = json.loads((path / REFS_FILE).read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    imgs = {i["id"]: i for i in inst["images"]}
    if split is None:
        split = "val" if any(r["split"] == "val" for r in refs) else refs[0]["split"]
    chosen, seen = [], set()
    for r in refs:
        if r["split"] == split and r["image_id"] not in seen:
            chosen.append(r)
            seen.add(r["image_id"])
        if len(chosen) >= count:
            break
    if not chosen:
        have = sorted({r["split"] for r in refs})
        raise RefShapesError(f"no refs in split '{split}' to preview (splits: {', '.join(have)})")
    S = imgs[chosen[0]["image_id"]]["height"]
    f = max(1, round(288 / S))
    cell_w = S * f
    chars = max(20, cell_w // 8)
    cells = []
    for r in chosen:
        img = cv2.imread(str(path / "images" / imgs[r["image_id"]]["file_name"]), cv2.IMREAD_COLOR)
        big = cv2.resize(img, (cell_w, cell_w), interpolation=cv2.INTER_NEAREST)
        m = mask_utils.decode(anns[r["ann_id"]]["segmentation"])
        m = cv2.resize(m, (cell_w, cell_w), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(big, contours, -1, (0, 0, 0), 4)
        cv2.drawContours(big, contours, -1, (255, 0, 255), 2)
        lines = []
        for s in r["sentences"]:
            lines += _wrap(f"[{s['type'][:3]}] {s['raw']}", chars)
        text = np.full((16 * 7 + 6, cell_w, 3), 255, np.uint8)
        for k, line in enumerate(lines[:7]):
            cv2.putText(text, line, (4, 14 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cell = np.concatenate([big, text], 0)
        cells.append(cv2.copyMakeBorder(cell, 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=(128, 128, 128)))
    while len(cells) % columns:
        cells.append(np.full_like(cells[0], 255))
    rows = [np.concatenate(cells[i:i + columns], 1) for i in range(0, len(cells), columns)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), np.concatenate(rows, 0)):
        raise RefShapesError(f"could not write the preview to {out}")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = ArgumentParser(prog="python -m refseg.data.refshapes",
                description="Generate the synthetic refshapes referring-segmentation dataset "
                            "(<root>/refshapes in the refer layout). Regenerates only when the parameters changed.")
    p.add_argument("--root", default="data", help="data root (default: data)")
    p.add_argument("--train", type=int, default=4000, help="train images (default: 4000)")
    p.add_argument("--val", type=int, default=300, help="val images (default: 300)")
    p.add_argument("--test", type=int, default=300, help="test images (default: 300)")
    p.add_argument("--image-size", type=int, default=192, help="square image size in pixels (default: 192)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--force", action="store_true", help="regenerate even when meta.json matches")
    p.add_argument("--preview", metavar="PNG", help="write a grid of examples with target outlines")
    p.add_argument("--preview-count", type=int, default=8, help="refs in the preview (default: 8)")
    p.add_argument("--preview-split", default=None, help="split to preview (default: val)")
    p.add_argument("--verify", action="store_true",
                   help="re-check every sentence against the scenes rebuilt from instances.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    from types import SimpleNamespace

    params = dict(num_train_images=args.train, num_val_images=args.val, num_test_images=args.test,
                  image_size=args.image_size, seed=args.seed)
    _validate_params(*params.values())
    if args.preview_count < 1:
        raise RefShapesError("--preview-count must be >= 1")
    path = ensure_refshapes(SimpleNamespace(root=args.root, refshapes=SimpleNamespace(**params)),
                            progress=not args.no_progress, force=args.force)
    meta = read_meta(path) or {}
    st = meta.get("stats", {})
    print(f"refshapes: {path}")
    for s, c in st.get("splits", {}).items():
        print(f"  {s:5s} images {c['images']:6d}  refs {c['refs']:6d}  sentences {c['sentences']:6d}")
    if st:
        print("  types: " + ", ".join(f"{k} {v:.1%}" for k, v in st["type_share"].items())
              + f"; targets with a same colour/shape distractor: {st['distractor_share']:.1%}"
              + f"; generated in {st['seconds']} s")
    if args.verify:
        print(f"verified: {verify_refshapes(path)} sentences name their target uniquely")
    if args.preview:
        print(f"preview: {write_preview(path, args.preview, args.preview_count, args.preview_split)}")
    return 0


if __name__ == "__main__":
    from ..cli import run

    run(main, prog="python -m refseg.data.refshapes")
