"""Generalized expressions over refshapes scenes: a refshapes ``Query`` plus a grammatical number.

``number``: ``one`` (a singular noun phrase: names one object, or none), ``two`` ("both circles",
"the two red shapes": exactly two) or ``plural`` ("all the red shapes", "the shapes left of the blue
square": two or more). The text is parsed back with refshapes' closed-vocabulary parser (after the
quantifier "all" / "both" is taken off) and resolved with refshapes' three-valued predicates: an
expression is kept only when no object is ambiguous, the objects that clearly match are exactly the
intended ones (possibly none), and their count agrees with the number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..refshapes.grammar import (REL_RE, SHAPE_PLURAL_WORDS, RELATION_PHRASES, ExpressionError, Query, noun_phrase, pick_option,
                                 normalize_sentence, parse_expression, render_query)
from ..refshapes.resolver import REL_MARGIN, Resolution, direction_state, resolve
from ..refshapes.scene import Scene

NUMBERS = ("one", "two", "plural")
PLURAL_WORDS = set(SHAPE_PLURAL_WORDS) | {"objects", "shapes", "things", "items", "ones"}


@dataclass(frozen=True)
class GQuery:
    """The meaning of a generalized expression: a refshapes query and its grammatical number."""

    query: Query
    number: str = "one"


def parse_gexpression(text: str) -> GQuery:
    """Parse a grefshapes sentence; ExpressionError when the grammar does not cover it."""
    words = normalize_sentence(text).split()
    quant = None
    if words and words[0] in ("all", "both"):
        quant = words.pop(0)
        if words and words[0] == "of":
            words.pop(0)
    words = ["is" if w == "are" else w for w in words]  # "the circles that are left of ..."
    if not words:
        raise ExpressionError(f"'{text}' describes nothing")
    sent = " ".join(words)
    q = parse_expression(sent)
    head = words
    if q.type == "relation":
        head = sent[: REL_RE.search(sent).start()].split()
    if q.type in ("position", "superlative"):  # singular: "the leftmost of the circles"
        if quant:
            raise ExpressionError(f"'{quant}' with a position or size superlative in '{text}'")
        return GQuery(q, "one")
    plural = any(w in PLURAL_WORDS for w in head)
    if quant == "both" or "two" in head:
        if not plural:
            raise ExpressionError(f"'both' / 'two' with a singular noun in '{text}'")
        return GQuery(q, "two")
    if quant == "all" and not plural:
        raise ExpressionError(f"'all' with a singular noun in '{text}'")
    return GQuery(q, "plural" if plural else "one")


def resolve_g(scene: Scene, gq: GQuery) -> Resolution:
    """Objects that clearly satisfy ``gq``; ``ambiguous`` when an object is neither clearly in nor out,
    a precondition fails (an anchor that is not exactly one object) or the count disagrees with the
    number."""
    q = gq.query
    objs, S = scene.objects, scene.image_size
    if q.type in ("position", "superlative"):
        r = resolve(scene, q)
    elif q.type == "attribute":
        r = Resolution(list(scene.candidates(q.target)), False)
    elif q.type == "relation":
        anchors = scene.candidates(q.anchor) if q.anchor is not None else []
        if len(anchors) != 1:
            return Resolution([], True)
        a = anchors[0]
        cands = [i for i in scene.candidates(q.target) if i != a]
        if q.relation == "closest":
            if gq.number != "one":
                return Resolution([], True)
            r = resolve(scene, q) if len(cands) >= 2 else Resolution(cands, False)
        else:
            states = []
            for i in cands:
                key = ("dir", i, a, q.relation)
                if key not in scene.cache:
                    scene.cache[key] = direction_state(objs[i], objs[a], q.relation, REL_MARGIN * S)
                states.append(scene.cache[key])
            r = Resolution([i for i, s in zip(cands, states) if s == 1], any(s == 0 for s in states))
    else:
        raise ValueError(f"unknown query type '{q.type}'")
    n = len(r.matches)
    agrees = {"one": n <= 1, "two": n == 2, "plural": n >= 2}[gq.number]
    return Resolution(sorted(r.matches), r.ambiguous or not agrees)


def check_gexpression(scene: Scene, text: str, targets: Sequence[int]) -> bool:
    """True when ``text`` parses and names exactly the objects ``targets`` (possibly none) unambiguously."""
    try:
        gq = parse_gexpression(text)
    except ExpressionError:
        return False
    r = resolve_g(scene, gq)
    return not r.ambiguous and r.matches == sorted(targets)


def render_gquery(gq: GQuery, rng: np.random.Generator) -> str:
    """One phrasing of ``gq`` (raw text, before ``grammar.finish_text``)."""
    q = gq.query
    if gq.number == "one":
        return render_query(q, rng)
    np_ = noun_phrase(rng, q.target, plural=True)
    if gq.number == "two":
        head = pick_option(rng, [f"both {np_}", f"both the {np_}", f"the two {np_}"])
    else:
        head = pick_option(rng, [f"all the {np_}", f"the {np_}", f"all {np_}"])
    if q.type == "attribute":
        return head
    if q.type == "relation":
        rel = pick_option(rng, RELATION_PHRASES[q.relation])
        glue = pick_option(rng, ["", "", "that are ", "which are "])
        return f"{head} {glue}{rel} the {noun_phrase(rng, q.anchor)}"
    raise ValueError(f"no plural phrasing for a {q.type} query")
