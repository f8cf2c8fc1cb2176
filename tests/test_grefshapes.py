"""grefshapes: generalized expressions (one object, several, none) parsed, resolved and generated over
refshapes scenes, written in the gRefCOCO layout and read back by the generalized source."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from refseg.data import grefshapes as G
from refseg.data.refshapes import ExpressionError, ObjectSpec, build_scene, sample_scene
from refseg.data.sources import GReferSource, open_source
from refseg.errors import RefShapesError

S = 200
TINY = dict(num_train_images=12, num_val_images=6, num_test_images=4, image_size=96, seed=3)


def _spec(shape, color, x, y, size="medium", scale=28.0):
    return ObjectSpec(shape, color, size, (float(x), float(y)), float(scale), 0.0)


@pytest.fixture(scope="module")
def scene():
    # 0 red circle (left), 1 red circle (right), 2 blue square (middle), 3 green star (bottom middle),
    # 4 purple triangle (top left)
    return build_scene(S, [_spec("circle", "red", 30, 100), _spec("circle", "red", 170, 100),
                           _spec("square", "blue", 100, 100), _spec("star", "green", 100, 170),
                           _spec("triangle", "purple", 30, 30, size="small", scale=18)])


@pytest.mark.parametrize("text,number,kind", [
    ("all the red shapes", "plural", "attribute"), ("Both circles.", "two", "attribute"),
    ("the two red circles", "two", "attribute"), ("the shapes left of the blue square", "plural", "relation"),
    ("both discs that are to the right of the purple triangle", "two", "relation"),
    ("the purple star", "one", "attribute"), ("the leftmost of the circles", "one", "position"),
    ("the larger of the two circles", "one", "superlative"), ("red ones", "plural", "attribute")])
def test_parse_number(text, number, kind):
    gq = G.parse_gexpression(text)
    assert gq.number == number and gq.query.type == kind


@pytest.mark.parametrize("text", ["both red circle", "all the leftmost circles", "all the star", "both",
                                  "the purple starfish"])
def test_parse_refuses(text):
    with pytest.raises(ExpressionError):
        G.parse_gexpression(text)


@pytest.mark.parametrize("text,targets,ok", [
    ("all the red shapes", (0, 1), True), ("both circles", (0, 1), True), ("the two red circles", (0, 1), True),
    ("all the red shapes", (0,), False),
    ("the shapes left of the blue square", (0, 4), True),  # the red circle and the purple triangle
    ("the red circle", (0,), False),  # singular, two red circles: ambiguous
    ("the purple star", (), True),  # no target: a near miss (purple and star both exist)
    ("the large purple triangle", (), True),  # the purple triangle is small
    ("the green star above the blue square", (), True),  # it is below
    ("the green star below the blue square", (3,), True),
    ("both shapes left of the blue square", (0, 4), True), ("both shapes right of the blue square", (1,), False),
    ("the shapes right of the purple star", (), False),  # no such anchor: not a valid expression
])
def test_check_against_a_hand_built_scene(scene, text, targets, ok):
    assert G.check_gexpression(scene, text, targets) is ok


def test_generated_expressions_kinds_and_near_misses():
    counts, kinds_of_none = Counter(), Counter()
    for i in range(120):
        rng = np.random.default_rng([5, i])
        sc = sample_scene(rng, 192)
        colors, shapes = {o.color for o in sc.objects}, {o.shape for o in sc.objects}
        for w, gq in G.none_queries(sc):
            assert G.resolve_g(sc, gq).matches == [] and w > 0
            d = gq.query.target
            assert d.color in colors or d.shape in shapes  # a near miss, not an unrelated description
        for r in G.generate_grefs(sc, rng):
            kind = "none" if not r.targets else "one" if len(r.targets) == 1 else "several"
            counts[kind] += len(r.sentences)
            for text, t in r.sentences:
                assert G.check_gexpression(sc, text, r.targets)
                if kind == "none":
                    kinds_of_none[t] += 1
    total = sum(counts.values())
    shares = {k: v / total for k, v in counts.items()}
    assert 0.15 < shares["none"] < 0.35 and 0.15 < shares["several"] < 0.35 and 0.4 < shares["one"] < 0.6, shares
    assert kinds_of_none["attribute"] > kinds_of_none["relation"] > 0


def _digest(path: Path) -> dict[str, str]:
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name != "meta.json":
            out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("gs")
    cfg = SimpleNamespace(root=str(root), refshapes=SimpleNamespace(**TINY))
    return root, cfg, G.ensure_grefshapes(cfg, progress=False)


def test_written_layout_reads_back_and_verifies(written):
    root, cfg, path = written
    refs = json.loads((path / G.REFS_FILE).read_text())
    assert all(isinstance(r["ann_id"], list) and isinstance(r["category_id"], list) for r in refs)
    assert any(r["ann_id"] == [-1] and r["category_id"] == [] for r in refs)
    src = open_source(SimpleNamespace(name="grefshapes", root=str(root), split_by="refshapes"))  # the default
    assert isinstance(src, GReferSource) and src.splits() == ["train", "val", "test"]
    meta = json.loads((path / "meta.json").read_text())
    for split in src.splits():
        samples = src.samples(split)
        c = meta["stats"]["splits"][split]
        assert len(samples) == c["sentences"]
        assert sum(s.num_targets == 0 for s in samples) == c["no_target"] > 0
        assert sum(s.num_targets >= 2 for s in samples) == c["multi_target"] > 0
        for s in samples[:20]:
            m = src.load_mask(s)
            assert m.any() == (s.num_targets > 0)
    counts = G.verify_grefshapes(path)
    assert sum(counts.values()) == sum(c["sentences"] for c in meta["stats"]["splits"].values())


def test_verify_catches_a_wrong_target(written, tmp_path):
    import shutil

    _, _, path = written
    bad = tmp_path / "grefshapes"
    shutil.copytree(path, bad)
    refs = json.loads((bad / G.REFS_FILE).read_text())
    r = next(r for r in refs if len(r["ann_id"]) >= 2)
    r["ann_id"] = r["ann_id"][:1]  # a several-object expression now claims one object
    (bad / G.REFS_FILE).write_text(json.dumps(refs))
    with pytest.raises(RefShapesError, match=f"ref_id {r['ref_id']}"):
        G.verify_grefshapes(bad)


def test_ensure_is_deterministic_and_regenerates_on_change(written, tmp_path):
    root, cfg, path = written
    before = _digest(path)
    mtime = (path / G.REFS_FILE).stat().st_mtime_ns
    assert G.ensure_grefshapes(cfg, progress=False) == path and (path / G.REFS_FILE).stat().st_mtime_ns == mtime
    other = G.write_grefshapes(tmp_path, progress=False, **TINY)
    assert _digest(other) == before  # a pure function of the parameters
    cfg2 = SimpleNamespace(root=str(tmp_path), refshapes=SimpleNamespace(**{**TINY, "seed": 4}))
    assert _digest(G.ensure_grefshapes(cfg2, progress=False)) != before


def test_preview_draws_the_union_of_the_objects(written, tmp_path):
    import cv2

    _, _, path = written
    out = G.write_preview(path, tmp_path / "p.png", count=4, split="val")
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] == 4 * (96 * 3 + 6)
    assert ((img[..., 0] == 255) & (img[..., 1] == 0) & (img[..., 2] == 255)).any()  # magenta outlines
    with pytest.raises(RefShapesError, match="no refs in split 'nope'"):
        G.write_preview(path, tmp_path / "q.png", split="nope")
