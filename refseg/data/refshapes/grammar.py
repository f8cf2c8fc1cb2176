"""Expressions as structured queries (``Desc``, ``Query``) and their text: the closed vocabulary, the
parser (text -> Query; an unknown word is an error) and the phrasings (Query -> text)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .scene import COLORS, SceneObject

EXPR_TYPES = ("attribute", "position", "superlative", "relation")


class ExpressionError(ValueError):
    """A sentence that the refshapes grammar cannot parse (unknown word, conflicting words)."""


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
REL_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _REL_LOOKUP), key=len, reverse=True)) + r")\b")
FILLERS = {"the", "a", "an", "that", "which", "is", "on", "at", "in", "of", "to", "far", "furthest",
           "farthest", "most", "two", "sized", "colored", "coloured", "one", "ones", "located", "placed"}
_NOUNS = set(GENERIC_NOUNS) | {n + "s" for n in GENERIC_NOUNS}
SHAPE_PLURAL_WORDS = {PLURALS.get(w, w + "s"): s for w, s in SHAPE_WORDS.items()}


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
        elif w in SHAPE_PLURAL_WORDS:
            put(desc, "shape", SHAPE_PLURAL_WORDS[w], w)
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
    rels = list(REL_RE.finditer(sent))
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


# --- rendering queries as text ---------------------------------------------------------------


def pick_option(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _noun(rng, shape: Optional[str], plural=False, has_modifier=False) -> str:
    if shape is not None:
        w = pick_option(rng, SHAPE_SYNONYMS.get(shape, [shape]))
        return PLURALS.get(w, w + "s") if plural else w
    if plural:
        return pick_option(rng, ["objects", "shapes", "things"])
    return pick_option(rng, ["object", "shape", "thing", "one"] if has_modifier else ["object", "shape", "thing"])


def noun_phrase(rng, d: Desc, plural=False, pre_modifier=False) -> str:
    """Noun phrase without article: '[size] [colour] noun'."""
    words = []
    if d.size:
        words.append(pick_option(rng, {"small": ["small", "little"], "medium": ["medium", "medium sized"],
                                 "large": ["large", "big"]}[d.size]))
    if d.color:
        words.append(d.color)
    words.append(_noun(rng, d.shape, plural, has_modifier=bool(words) or pre_modifier))
    return " ".join(words)


def _the(rng) -> str:
    return "the " if rng.random() < 0.85 else ""


def render_query(q: Query, rng: np.random.Generator) -> str:
    """One phrasing of ``q`` (raw text; capitalisation/period added by :func:`finish_text`)."""
    d = q.target
    if q.type == "attribute":
        forms = [lambda: _the(rng) + noun_phrase(rng, d)]
        if d.color and d.shape and not d.size:
            forms += [lambda: f"{_the(rng)}{_noun(rng, d.shape)} that is {d.color}",
                      lambda: f"{_the(rng)}{d.color} colored {_noun(rng, d.shape)}",
                      lambda: f"{_the(rng)}{_noun(rng, d.shape)} in {d.color}"]
        return pick_option(rng, forms)()
    if q.type == "position":
        dirn = q.direction
        if q.comparative:
            adj = {"left": "left", "right": "right", "top": "upper", "bottom": "lower"}[dirn]
            return f"{_the(rng)}{adj} {noun_phrase(rng, d, pre_modifier=True)}"
        most = {"left": ["leftmost"], "right": ["rightmost"], "top": ["topmost", "highest", "uppermost", "top"],
                "bottom": ["lowest", "bottom", "bottommost"]}[dirn]
        post = {"left": ["on the left", "on the far left", "furthest to the left"],
                "right": ["on the right", "on the far right", "furthest to the right"],
                "top": ["at the top"], "bottom": ["at the bottom"]}[dirn]
        forms = [lambda: f"{_the(rng)}{pick_option(rng, most)} {noun_phrase(rng, d, pre_modifier=True)}",
                 lambda: f"{_the(rng)}{noun_phrase(rng, d)} {pick_option(rng, post)}",
                 lambda: f"the {pick_option(rng, most)} of the {noun_phrase(rng, d, plural=True)}"]
        return pick_option(rng, forms)()
    if q.type == "superlative":
        if q.comparative:
            adj = pick_option(rng, ["larger", "bigger"] if q.extreme == "max" else ["smaller"])
            forms = [lambda: f"{_the(rng)}{adj} {noun_phrase(rng, d, pre_modifier=True)}",
                     lambda: f"the {adj} of the two {noun_phrase(rng, d, plural=True)}"]
        else:
            adj = pick_option(rng, ["largest", "biggest"] if q.extreme == "max" else ["smallest", "tiniest"])
            forms = [lambda: f"{_the(rng)}{adj} {noun_phrase(rng, d, pre_modifier=True)}",
                     lambda: f"the {adj} of the {noun_phrase(rng, d, plural=True)}"]
        return pick_option(rng, forms)()
    if q.type == "relation":
        rel = pick_option(rng, RELATION_PHRASES[q.relation])
        anchor = "the " + noun_phrase(rng, q.anchor)
        head = _the(rng) + noun_phrase(rng, d)
        glue = pick_option(rng, ["", "", "that is ", "which is "])
        return f"{head} {glue}{rel} {anchor}"
    raise ValueError(f"unknown query type '{q.type}'")


def finish_text(rng, text: str) -> str:
    text = " ".join(text.split())
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.15:
        text += "."
    return text
