"""Sampling generalized referring expressions for a refshapes scene: refs that name one object (the
refshapes sampler's queries), several ("all the red shapes", "both circles", "the shapes left of the
blue square") or none (near misses: "the purple star" where there are purple shapes and stars but no
purple star, "the large red circle" where the red circle is small, "the red circle above the blue
square" where it is below). Every sentence is checked by ``check_gexpression`` against the scene.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Optional

import numpy as np

from ..refshapes.expressions import TYPE_WEIGHTS, descriptions, QuerySource, shares_attribute
from ..refshapes.grammar import Desc, Query, finish_text, normalize_sentence, render_query
from ..refshapes.resolver import check_expression
from ..refshapes.scene import COLORS, SHAPES, SIZES, Scene
from .language import GQuery, check_gexpression, render_gquery, resolve_g

# Share of refs of each kind the sampler draws (one / several / none); a kind a scene cannot give is
# redrawn. Tuned so that about half of the sentences name one object and a quarter each several and
# none (measured: ``python -m refseg.data.grefshapes`` prints the shares).
KIND_WEIGHTS = {"one": 0.47, "several": 0.22, "none": 0.31}
NONE_RELATION_SHARE = 0.4  # of the no-target sentences' weight: relations that fail (the rest: attributes)
SEVERAL_ATTRIBUTE_WEIGHT = 3.0  # target sets that an attribute names ("all the red shapes") vs relations only
DIRECTIONS = ("left", "right", "above", "below")


@dataclass
class GeneratedGRef:
    targets: tuple[int, ...]  # object indices (empty: no target)
    sentences: list[tuple[str, str]]  # (raw text, query type)


def _all_descs(scene: Scene) -> list[Desc]:
    """Colour and/or shape descriptions (optionally with a size) of the objects in the scene."""
    out = set()
    for o in scene.objects:
        out.update(d for d in descriptions(o, True) if d.color or d.shape)
    return sorted(out, key=lambda d: (str(d.color), str(d.shape), str(d.size)))


def _unique_anchors(scene: Scene) -> list[tuple[int, Desc]]:
    out = []
    for a, oa in enumerate(scene.objects):
        out += [(a, d) for d in descriptions(oa, False) if not d.empty and len(scene.candidates(d)) == 1]
    return out


def several_queries(scene: Scene) -> dict[tuple[int, ...], list[GQuery]]:
    """Valid plural queries by the set of objects they name (two or more)."""
    out: dict[tuple[int, ...], list[GQuery]] = {}

    def add(gq: GQuery) -> None:
        r = resolve_g(scene, gq)
        if not r.ambiguous and len(r.matches) >= 2:
            out.setdefault(tuple(r.matches), []).append(gq)

    for d in _all_descs(scene):
        n = len(scene.candidates(d))
        if n >= 2 and (d.size is None or n < len(scene.objects)):
            add(GQuery(Query("attribute", d), "plural"))
            if n == 2:
                add(GQuery(Query("attribute", d), "two"))
    targets = [Desc()] + [d for d in _all_descs(scene) if d.size is None]
    for d, (a, ad), rel in product(targets, _unique_anchors(scene), DIRECTIONS):
        cands = [i for i in scene.candidates(d) if i != a]
        if len(cands) >= 2:
            q = Query("relation", d, relation=rel, anchor=ad)
            add(GQuery(q, "plural"))
            add(GQuery(q, "two"))
    return out


def none_queries(scene: Scene) -> list[tuple[float, GQuery]]:
    """(weight, query) of no-target near misses: what they describe shares a colour or a shape (or both,
    or all but the size) with objects in the scene, or the relation fails for the objects described."""
    colors = {o.color for o in scene.objects}
    shapes = {o.shape for o in scene.objects}
    out: list[tuple[float, GQuery]] = []
    for c, s in product(COLORS, SHAPES):
        near = (c in colors) + (s in shapes)
        if near and not scene.candidates(Desc(c, s)):
            out.append((1.0 if near == 2 else 0.25, GQuery(Query("attribute", Desc(c, s)))))
    for o in scene.objects:  # the right colour and shape, the wrong size
        for z in SIZES:
            d = Desc(o.color, o.shape, z)
            if z != o.size and not scene.candidates(d):
                out.append((0.3, GQuery(Query("attribute", d))))
    for (a, ad), rel in product(_unique_anchors(scene), DIRECTIONS):
        for o in scene.objects:
            for d in (Desc(o.color, o.shape), Desc(None, o.shape), Desc(o.color, None)):
                if not [i for i in scene.candidates(d) if i != a]:
                    continue
                gq = GQuery(Query("relation", d, relation=rel, anchor=ad))
                r = resolve_g(scene, gq)
                if not r.ambiguous and not r.matches:
                    out.append((0.5, gq))
    # one entry per distinct query; relations (many more of them) get NONE_RELATION_SHARE of the weight
    seen, unique = set(), []
    for w, gq in out:
        if gq not in seen:
            seen.add(gq)
            unique.append((w, gq))
    mass = {k: sum(w for w, gq in unique if (gq.query.type == "relation") == k) for k in (False, True)}
    share = {False: 1.0 - NONE_RELATION_SHARE, True: NONE_RELATION_SHARE} if all(mass.values()) else \
        {False: 1.0, True: 1.0}
    return [(w * share[gq.query.type == "relation"] / mass[gq.query.type == "relation"], gq) for w, gq in unique]


def _sentences(rng: np.random.Generator, scene: Scene, queries: list[GQuery], targets: tuple[int, ...],
               n_sent: int) -> list[tuple[str, str]]:
    sents: list[tuple[str, str]] = []
    for _ in range(3 * n_sent):
        if len(sents) == n_sent:
            break
        gq = queries[int(rng.integers(len(queries)))]
        text = finish_text(rng, render_gquery(gq, rng))
        if not check_gexpression(scene, text, targets):  # pragma: no cover - a grammar/semantics bug
            raise AssertionError(f"generated an expression that does not name {targets}: {text!r}")
        if any(normalize_sentence(text) == normalize_sentence(s) for s, _ in sents):
            continue
        sents.append((text, gq.query.type))
    return sents


def _one_target(rng: np.random.Generator, scene: Scene, t: int, n_sent: int) -> list[tuple[str, str]]:
    """Sentences for object ``t`` from refshapes' sampler, kept when they name it under both readings."""
    source = QuerySource(scene, t, rng)
    sents: list[tuple[str, str]] = []
    used: set[str] = set()
    for _ in range(3 * n_sent):
        if len(sents) == n_sent:
            break
        q: Optional[Query] = None
        while q is None and source.kinds():
            kinds = source.kinds()
            p = np.array([TYPE_WEIGHTS[k] * (0.4 if k in used else 1.0) for k in kinds])
            q = source.take(kinds[int(rng.choice(len(kinds), p=p / p.sum()))])
        if q is None:
            break
        two = len(scene.candidates(q.target)) == 2
        if q.type in ("position", "superlative") and two and rng.random() < 0.35:
            q = Query(q.type, q.target, q.direction, q.extreme, comparative=True)
        text = finish_text(rng, render_query(q, rng))
        if not (check_expression(scene, text, t) and check_gexpression(scene, text, (t,))):
            continue
        if any(normalize_sentence(text) == normalize_sentence(s) for s, _ in sents):
            continue
        sents.append((text, q.type))
        used.add(q.type)
    return sents


def generate_grefs(scene: Scene, rng: np.random.Generator) -> list[GeneratedGRef]:
    """2-3 refs per scene (distinct target sets, at most one no-target ref), 1-2 sentences each."""
    n_refs = int(rng.choice([2, 3], p=[0.5, 0.5]))
    kinds, weights = list(KIND_WEIGHTS), np.array(list(KIND_WEIGHTS.values()))
    several = None  # computed on first use
    nones = None
    refs: list[GeneratedGRef] = []
    used: set[tuple[int, ...]] = set()
    for _ in range(3 * n_refs):
        if len(refs) == n_refs:
            break
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        n_sent = int(rng.choice([1, 2], p=[0.5, 0.5]))
        if kind == "one":
            free = [t for t in range(len(scene.objects)) if (t,) not in used]
            if not free:
                continue
            w = np.array([4.0 if shares_attribute(scene, t) else 1.0 for t in free])
            t = free[int(rng.choice(len(free), p=w / w.sum()))]
            targets, sents = (t,), _one_target(rng, scene, t, n_sent)
        elif kind == "several":
            several = several_queries(scene) if several is None else several
            sets = [s for s in several if s not in used]
            if not sets:
                continue
            w = np.array([SEVERAL_ATTRIBUTE_WEIGHT if any(g.query.type == "attribute" for g in several[s]) else 1.0
                          for s in sets])
            targets = sets[int(rng.choice(len(sets), p=w / w.sum()))]
            sents = _sentences(rng, scene, several[targets], targets, n_sent)
        else:
            if () in used:
                continue
            nones = none_queries(scene) if nones is None else nones
            if not nones:
                continue
            w = np.array([x[0] for x in nones])
            picks = [nones[int(i)][1] for i in rng.choice(len(nones), min(n_sent, len(nones)), replace=False,
                                                           p=w / w.sum())]
            targets, sents = (), _sentences(rng, scene, picks, (), len(picks))
        if sents:
            refs.append(GeneratedGRef(targets, sents))
            used.add(targets)
    return refs
