"""grefshapes: the generalized variant of refshapes, where an expression names one object, several
objects or none, written in the gRefCOCO layout (the classic refshapes is unchanged).

The scenes, images and single-object expressions come from ``refseg.data.refshapes``; this package
adds expressions that name several objects ("all the red shapes", "both circles", "the shapes left of
the blue square") and none (near misses: "the purple star" where there are purple shapes and stars
but no purple star, "the large red circle" where the red circle is small, "the red circle above the
blue square" where it is below). Every sentence is parsed back from its text and resolved against the
scene with refshapes' three-valued predicates (``language.check_gexpression``): it is kept only when
the objects that clearly match are exactly its ref's (possibly none) and no object is ambiguous.
About half of the sentences name one object, a quarter several and a quarter none.

On disk (gRefCOCO layout, read by ``refseg.data.sources.GReferSource(root, "grefshapes", "grefshapes")``)::

    <root>/grefshapes/images/000001.jpg ...      as refshapes' images
    <root>/grefshapes/instances.json             COCO: images, annotations (compressed RLE), categories
    <root>/grefshapes/grefs(grefshapes).json     refs: ann_id / category_id lists, [-1] / [] = no target
    <root>/grefshapes/meta.json                  parameters, VERSION and statistics

``ensure_grefshapes(cfg.data)`` writes it on first use (``data.name: grefshapes``), with the sizes and
seed of ``data.refshapes``; ``python -m refseg.data.grefshapes --verify --preview out.png`` writes,
prints the shares, re-checks every sentence and draws examples.
"""
from __future__ import annotations

from .expressions import GeneratedGRef, generate_grefs, none_queries, several_queries
from .language import GQuery, check_gexpression, parse_gexpression, render_gquery, resolve_g
from .writer import (DATASET_NAME, REFS_FILE, SPLIT_BY, VERSION, ensure_grefshapes, generate_example, verify_grefshapes,
                     write_grefshapes, write_preview)

__all__ = ["DATASET_NAME", "GQuery", "GeneratedGRef", "REFS_FILE", "SPLIT_BY", "VERSION", "check_gexpression",
           "ensure_grefshapes", "generate_example", "generate_grefs", "none_queries", "parse_gexpression",
           "render_gquery", "resolve_g", "several_queries", "verify_grefshapes", "write_grefshapes", "write_preview"]
