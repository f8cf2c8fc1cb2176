"""Resolving a query against a scene with three-valued predicates (clearly true / clearly false /
ambiguous): a sentence is kept only when exactly one object clearly matches and none is ambiguous."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .grammar import ExpressionError, Query, parse_expression
from .scene import Scene, SceneObject

POS_MARGIN = 0.08  # extreme position: lead over the runner-up, as a fraction of the image size
REL_MARGIN = 0.08  # directional relation: offset from the anchor, fraction of the image size
REL_DOMINANCE = 0.5  # ...and the offset along the direction must be >= this x the perpendicular one
AREA_RATIO = 1.5  # superlative: the winner's area vs the runner-up's (visible and full area)
NEAR_RATIO = 1.5  # "closest to": runner-up distance / winner distance


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


def direction_state(o: SceneObject, a: SceneObject, rel: str, margin: float) -> int:
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
                scene.cache[key] = direction_state(objs[i], objs[a], q.relation, REL_MARGIN * S)
            states.append(scene.cache[key])
        return Resolution([i for i, s in zip(cands, states) if s == 1], any(s == 0 for s in states))
    raise ValueError(f"unknown query type '{q.type}'")


def check_expression(scene: Scene, text: str, target: int) -> bool:
    """True when ``text`` parses and names exactly object ``target`` of ``scene`` unambiguously."""
    try:
        q = parse_expression(text)
    except ExpressionError:
        return False
    return resolve(scene, q).unique(target)
