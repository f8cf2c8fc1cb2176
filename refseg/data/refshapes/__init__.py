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

On disk (the refer layout, read by ``refseg.data.sources.ReferSource(root, "refshapes", "refshapes")``)::

    <root>/refshapes/images/000001.jpg ...   JPEG q95 4:4:4 (see IMAGE_PARAMS); ids 1..N: train, val, test
    <root>/refshapes/instances.json         COCO: images, annotations (compressed RLE), categories
    <root>/refshapes/refs(refshapes).json   refer refs with sentences [{sent_id, sent, raw, tokens, type}]
    <root>/refshapes/meta.json              generation parameters, VERSION and statistics

The data's path through the modules::

    scene.sample_scene ─> render.render_image ─────────────────────────────> image (JPEG)
         │
         └──> expressions.generate_refs ─ grammar (Query <-> text) ─ resolver (uniqueness) ─> refs
                                                                                     │
    writer.write_refshapes / ensure_refshapes: one generator per image id, refer layout, atomic swap
    verify.verify_refshapes / write_preview: read back, re-check every sentence, draw examples
    cli.main: ``python -m refseg.data.refshapes --root data --train 4000 --val 300 --test 300 --preview out.png``
"""
from __future__ import annotations

from .expressions import GeneratedRef, candidate_queries, generate_refs, valid_queries
from .grammar import EXPR_TYPES, Desc, ExpressionError, Query, normalize_sentence, parse_expression, render_query
from .render import render_image
from .resolver import Resolution, check_expression, resolve
from .scene import COLORS, MIN_VISIBLE, SHAPES, SIZES, ObjectSpec, Scene, SceneObject, build_scene, sample_scene
from .verify import scene_from_annotations, verify_refshapes, write_preview
from .writer import (DATASET_NAME, PARAM_KEYS, REFS_FILE, SPLIT_BY, SPLITS, VERSION, RefShapesError, ensure_refshapes,
                     generate_example, image_rng, read_meta, write_refshapes)

__all__ = [
    "COLORS", "DATASET_NAME", "EXPR_TYPES", "MIN_VISIBLE", "PARAM_KEYS", "REFS_FILE", "SHAPES", "SIZES", "SPLITS",
    "SPLIT_BY", "VERSION", "Desc", "ExpressionError", "GeneratedRef", "ObjectSpec", "Query", "RefShapesError",
    "Resolution", "Scene", "SceneObject", "build_scene", "candidate_queries", "check_expression",
    "ensure_refshapes", "generate_example", "generate_refs", "image_rng", "normalize_sentence",
    "parse_expression", "read_meta", "render_image", "render_query", "resolve", "sample_scene",
    "scene_from_annotations", "valid_queries", "verify_refshapes", "write_preview", "write_refshapes",
]
