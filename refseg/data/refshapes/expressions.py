"""Sampling referring expressions for a scene: 1-3 refs, 1-3 sentences each, every one checked by
``check_expression``; targets with a same-colour or same-shape distractor are preferred."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .grammar import EXPR_TYPES, RELATION_PHRASES, Desc, Query, finish_text, normalize_sentence, render_query
from .resolver import check_expression, resolve
from .scene import Scene, SceneObject

# Share of sentences of each type the sampler aims for is set by these weights, which compensate
# for how often each type is available for a target (measured; see tests/test_refshapes.py).
TYPE_WEIGHTS = {"attribute": 0.8, "position": 0.8, "superlative": 2.5, "relation": 1.05}


def descriptions(o: SceneObject, with_size: bool) -> list[Desc]:
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
    out["attribute"] = [Query("attribute", d) for d in descriptions(o, True) if d.color or d.shape]
    anchors = []
    for a, oa in enumerate(objs):
        if a != t:
            uniq = [d for d in descriptions(oa, False) if not d.empty and len(scene.candidates(d)) == 1]
            if uniq:
                anchors.append((a, uniq))
    for d in descriptions(o, False):
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


class QuerySource:
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


def shares_attribute(scene: Scene, t: int) -> bool:
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
    w = np.array([4.0 if shares_attribute(scene, t) else 1.0 for t in range(n_obj)])
    order = [int(t) for t in rng.choice(n_obj, n_obj, replace=False, p=w / w.sum())]
    n_refs = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    refs = []
    for t in order:
        if len(refs) == n_refs:
            break
        source = QuerySource(scene, t, rng)
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
            text = finish_text(rng, render_query(q, rng))
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
