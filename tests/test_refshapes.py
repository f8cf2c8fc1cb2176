"""refshapes: determinism, the uniqueness checker, visible masks, type balance, layout, ensure, CLI."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from refseg.data import refshapes as R
from refseg.data.refshapes import ObjectSpec, writer
from refseg.data.refshapes.expressions import shares_attribute
from refseg.data.sources import ReferSource

REPO = Path(__file__).resolve().parents[1]
TINY = dict(num_train_images=10, num_val_images=4, num_test_images=4, image_size=96, seed=3)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("rs")
    path = R.write_refshapes(root, progress=False, **TINY)
    return root, path


@pytest.fixture(scope="module")
def generated():
    """300 in-memory examples at the default size: (scene, image, refs)."""
    return [R.generate_example(0, i, 192) for i in range(1, 301)]


def _spec(shape, color, x, y, size="medium", scale=28.0, rotation=0.0):
    return ObjectSpec(shape, color, size, (float(x), float(y)), float(scale), rotation)


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(tmp_path, written):
    _, first = written
    second = R.write_refshapes(tmp_path / "again", progress=False, **TINY)
    for name in (R.REFS_FILE, "instances.json"):  # instances.json holds the RLE masks
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    files = sorted(p.name for p in (first / "images").iterdir())
    assert files == sorted(p.name for p in (second / "images").iterdir()) and len(files) == 18
    assert all((first / "images" / f).read_bytes() == (second / "images" / f).read_bytes() for f in files)
    other = R.write_refshapes(tmp_path / "other", progress=False, **{**TINY, "seed": 4})
    assert (other / R.REFS_FILE).read_bytes() != (first / R.REFS_FILE).read_bytes()


def test_worker_pool_matches_single_process(tmp_path, monkeypatch):
    params = dict(num_train_images=6, num_val_images=2, num_test_images=2, image_size=64, seed=9)
    one = R.write_refshapes(tmp_path / "one", progress=False, **params)
    monkeypatch.setattr(writer, "writer_workers", lambda n: 2)
    two = R.write_refshapes(tmp_path / "two", progress=False, **params)
    assert json.loads((two / "meta.json").read_text())["stats"]["workers"] == 2
    for name in (R.REFS_FILE, "instances.json", "images/000007.jpg"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


# --- the uniqueness checker --------------------------------------------------------------------


def test_checker_accepts_every_generated_sentence(generated):
    n = 0
    for scene, _, refs in generated:
        for ref in refs:
            for text, kind in ref.sentences:
                assert R.check_expression(scene, text, ref.target), text
                assert R.parse_expression(text).type == kind
                others = [i for i in range(len(scene.objects)) if i != ref.target]
                assert not any(R.check_expression(scene, text, i) for i in others)
                n += 1
    assert n > 1000


def _true_of_the_scene(scene, q, t: int) -> str:
    """Why query ``q`` does not single out object ``t`` by the plain meaning of its words, or "" when it
    does: an oracle that shares nothing with the resolver (no margins, no cached state). Colour, shape
    and size compare the objects' attributes; places and sizes come from the visible masks themselves
    (centroid = mean pixel coordinate, area = pixel count): the target must be strictly the most
    <direction> / largest / smallest / closest of the objects the description matches, and for a
    relation strictly further to that side of the unique anchor than every other candidate."""
    objs = scene.objects

    def matches(d, o):
        return all(getattr(d, k) is None or getattr(d, k) == getattr(o, k) for k in ("color", "shape", "size"))

    def centroid(i):
        ys, xs = np.nonzero(objs[i].mask)
        return xs.mean(), ys.mean()

    cands = [i for i, o in enumerate(objs) if matches(q.target, o)]
    if t not in cands:
        return f"the description {q.target} does not fit the target"
    if q.type == "attribute":
        return "" if cands == [t] else f"{len(cands)} objects fit {q.target}"
    if q.type == "relation":
        anchors = [i for i, o in enumerate(objs) if matches(q.anchor, o)]
        if len(anchors) != 1 or anchors[0] == t:
            return f"the anchor {q.anchor} names {len(anchors)} objects"
        a = anchors[0]
        cands = [i for i in cands if i != a]
        ax, ay = centroid(a)
        if q.relation == "closest":
            score = {i: -np.hypot(centroid(i)[0] - ax, centroid(i)[1] - ay) for i in cands}
        else:
            sx, sy = {"left": (-1, 0), "right": (1, 0), "above": (0, -1), "below": (0, 1)}[q.relation]
            score = {i: sx * (centroid(i)[0] - ax) + sy * (centroid(i)[1] - ay) for i in cands}
            if score[t] <= 0:
                return f"the target is not {q.relation} the anchor"
    elif q.type == "position":
        sx, sy = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}[q.direction]
        score = {i: sx * centroid(i)[0] + sy * centroid(i)[1] for i in cands}
    else:  # superlative
        sign = 1 if q.extreme == "max" else -1
        score = {i: sign * int(objs[i].mask.sum()) for i in cands}
    if q.comparative and len(cands) != 2:
        return f"a comparative with {len(cands)} candidates"
    if any(score[i] >= score[t] for i in cands if i != t):
        return "another candidate fits at least as well"
    return ""


def test_generated_sentences_are_true_of_the_scene(generated):
    """Every generated sentence names its target by the oracle above, which is independent of the
    resolver that the generator checks itself with: a resolver that got a direction, a size or a
    relation wrong would generate sentences that are consistently wrong, and fail here."""
    n = Counter()
    for scene, _, refs in generated:
        for ref in refs:
            for text, kind in ref.sentences:
                q = R.parse_expression(text)
                why = _true_of_the_scene(scene, q, ref.target)
                assert not why, f"{text!r} (object {ref.target}): {why}"
                n[kind] += 1
    assert all(n[k] > 100 for k in R.EXPR_TYPES), n


def test_checker_accepts_written_refs_rebuilt_from_disk(written):
    _, path = written
    refs = json.loads((path / R.REFS_FILE).read_text())
    assert R.verify_refshapes(path) == sum(len(r["sentences"]) for r in refs)


def test_checker_rejects_ambiguous_expressions():
    S = 192
    scene = R.build_scene(S, [
        _spec("triangle", "green", 30, 100),
        _spec("triangle", "green", 160, 100),
        _spec("circle", "red", 95, 40),
        _spec("star", "blue", 95, 160, size="large", scale=44),
    ])
    # two green triangles: attribute alone is ambiguous, position / relation resolve it
    assert not R.check_expression(scene, "the green triangle", 0)
    assert not R.check_expression(scene, "the green triangle", 1)
    assert R.resolve(scene, R.parse_expression("the green triangle")).matches == [0, 1]
    assert R.check_expression(scene, "the green triangle on the left", 0)
    assert R.check_expression(scene, "the rightmost triangle", 1)
    assert R.check_expression(scene, "the triangle left of the red circle", 0)
    assert R.check_expression(scene, "the triangle to the right of the red circle", 1)
    assert R.check_expression(scene, "the large star", 3) and R.check_expression(scene, "the biggest object", 3)
    # both triangles are below the circle: the relation does not single one out
    assert not R.check_expression(scene, "the triangle below the red circle", 0)
    # the anchor must be unique: there are two triangles
    assert not R.check_expression(scene, "the circle above the triangle", 2)
    # wrong target, unknown word, contradicting words
    assert not R.check_expression(scene, "the green triangle on the left", 1)
    assert not R.check_expression(scene, "the green pyramid", 0)
    assert not R.check_expression(scene, "the red green triangle", 0)
    with pytest.raises(R.ExpressionError, match="unknown word 'pyramid'"):
        R.parse_expression("the green pyramid")

    # no clear margin: the two circles are 6 px apart horizontally and of similar size
    close = R.build_scene(S, [_spec("circle", "red", 60, 50, scale=30), _spec("circle", "blue", 66, 150, scale=33),
                              _spec("square", "white", 150, 100)])
    assert not R.check_expression(close, "the leftmost circle", 0)
    assert not R.check_expression(close, "the largest circle", 1)
    assert R.check_expression(close, "the upper circle", 0)  # comparative: exactly two circles
    assert R.check_expression(close, "the red circle", 0)
    # a comparative needs exactly two candidates
    three = R.build_scene(S, [_spec("circle", "red", 30, 50, scale=20), _spec("circle", "blue", 100, 150, scale=40),
                              _spec("circle", "white", 160, 60, scale=25)])
    assert R.check_expression(three, "the largest circle", 1)
    assert not R.check_expression(three, "the larger circle", 1)
    # a candidate in the grey zone of a relation (diagonal) makes it ambiguous
    diag = R.build_scene(S, [_spec("star", "yellow", 100, 100), _spec("square", "red", 40, 100),
                             _spec("square", "blue", 70, 20)])
    assert R.resolve(diag, R.parse_expression("the square left of the yellow star")).ambiguous
    assert not R.check_expression(diag, "the square left of the yellow star", 1)


def test_rendered_queries_parse_back_to_the_same_query(generated):
    rng = np.random.default_rng(0)
    seen = Counter()
    for scene, _, _ in generated[:60]:
        for t in range(len(scene.objects)):
            for kind, queries in R.valid_queries(scene, t).items():
                for q in queries[:4]:
                    for _ in range(3):
                        text = R.render_query(q, rng)
                        assert R.parse_expression(text) == q, text
                        seen[kind] += 1
    assert all(seen[k] > 50 for k in R.EXPR_TYPES), seen


# --- masks -------------------------------------------------------------------------------------


def test_masks_are_the_visible_region():
    S = 96
    scene = R.build_scene(S, [_spec("square", "red", 40, 40, scale=36), _spec("circle", "blue", 58, 58, scale=30)])
    below, above = scene.objects
    assert (below.mask == (below.full_mask & ~above.full_mask)).all()
    assert (above.mask == above.full_mask).all()
    assert 0 < below.area < below.full_area and (below.mask & above.mask).sum() == 0
    img = R.render_image(scene, np.random.default_rng(0))
    # pixels of the overlap show the occluder (blue), not the occluded square (red)
    overlap = below.full_mask & above.full_mask
    assert overlap.sum() > 50
    mean = img[overlap].mean(0)
    assert mean[2] > mean[0] + 80


def test_sampled_scenes_respect_visibility(generated):
    for scene, _, _ in generated[:100]:
        objs = scene.objects
        assert 3 <= len(objs) <= 6
        union_full = np.logical_or.reduce([o.full_mask for o in objs])
        union_vis = np.logical_or.reduce([o.mask for o in objs])
        assert (union_full == union_vis).all()
        assert sum(o.area for o in objs) == union_vis.sum()  # visible masks are disjoint
        assert all(o.visible_fraction >= R.MIN_VISIBLE for o in objs)
        for i, a in enumerate(objs):  # same-coloured objects neither overlap nor touch
            grown = cv2.dilate(a.full_mask.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            assert not any((grown & b.full_mask).any() for b in objs[i + 1:] if b.color == a.color)


def test_written_masks_match_the_generator(written):
    _, path = written
    inst = json.loads((path / "instances.json").read_text())
    anns = [a for a in inst["annotations"] if a["image_id"] == 2]
    scene, image, _ = R.generate_example(TINY["seed"], 2, TINY["image_size"])
    assert len(anns) == len(scene.objects)
    for a, o in zip(anns, scene.objects):
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        assert (m == o.mask).all()
        assert a["area"] == o.area and a["bbox"] == [float(v) for v in mask_utils.toBbox(a["segmentation"])]


# --- dataset statistics ------------------------------------------------------------------------


def test_type_balance_and_distractor_share(generated):
    types, shares, n_refs = Counter(), [], 0
    for scene, _, refs in generated:
        assert 1 <= len(refs) <= 3
        for ref in refs:
            assert 1 <= len(ref.sentences) <= 3
            types.update(k for _, k in ref.sentences)
            shares.append(shares_attribute(scene, ref.target))
            n_refs += 1
    total = sum(types.values())
    share = {k: types[k] / total for k in R.EXPR_TYPES}
    assert all(0.18 <= v <= 0.32 for v in share.values()), share
    assert np.mean(shares) >= 0.7, np.mean(shares)
    assert n_refs >= 450


# --- layout ------------------------------------------------------------------------------------


def test_written_layout_follows_refer_rules(written):
    root, path = written
    assert path == root / "refshapes" and not [p for p in root.iterdir() if p.name.startswith(".refshapes.tmp")]
    inst = json.loads((path / "instances.json").read_text())
    refs = json.loads((path / R.REFS_FILE).read_text())
    meta = json.loads((path / "meta.json").read_text())
    assert meta["version"] == R.VERSION and all(meta[k] == TINY[k] for k in R.PARAM_KEYS)
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    assert len(images) == 18 and len(anns) == len(inst["annotations"])
    assert [c["name"] for c in inst["categories"]] == list(R.SHAPES)
    for im in images.values():
        assert (path / "images" / im["file_name"]).is_file()
        assert im["height"] == im["width"] == TINY["image_size"]
    for a in anns.values():
        assert a["image_id"] in images and a["iscrowd"] == 0
        assert isinstance(a["segmentation"]["counts"], str) and a["area"] > 0
    assert Counter(r["split"] for r in refs).keys() == {"train", "val", "test"}
    split_of_image = {}
    sent_ids = []
    for r in refs:
        a = anns[r["ann_id"]]
        assert a["image_id"] == r["image_id"] and a["category_id"] == r["category_id"]
        assert split_of_image.setdefault(r["image_id"], r["split"]) == r["split"]
        assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
        for s in r["sentences"]:
            assert s["tokens"] == s["sent"].split() and s["sent"] == R.normalize_sentence(s["raw"])
            assert s["type"] in R.EXPR_TYPES
        sent_ids += r["sent_ids"]
    assert len(set(sent_ids)) == len(sent_ids) and len({r["ref_id"] for r in refs}) == len(refs)
    # image ids 1..10 train, 11..14 val, 15..18 test
    assert {r["split"] for r in refs if r["image_id"] <= 10} == {"train"}
    assert meta["stats"]["splits"]["val"]["sentences"] == sum(len(r["sentences"]) for r in refs if r["split"] == "val")


def test_refer_source_reads_refshapes(written):
    root, path = written
    src = ReferSource(root, "refshapes", "refshapes")
    assert set(src.splits()) == {"train", "val", "test"}
    refs = json.loads((path / R.REFS_FILE).read_text())
    inst = json.loads((path / "instances.json").read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    for split in ("train", "val", "test"):
        samples = src.samples(split)
        assert len(samples) == sum(len(r["sentences"]) for r in refs if r["split"] == split)
    s = src.samples("val")[0]
    assert s.expr_type in R.EXPR_TYPES
    img = src.load_image(s)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    m = src.load_mask(s)
    assert (m == mask_utils.decode(anns[s.ann_id]["segmentation"]).astype(bool)).all()


# --- ensure_refshapes --------------------------------------------------------------------------


def _cfg(root, **kw):
    return SimpleNamespace(root=str(root), refshapes=SimpleNamespace(**{**TINY, "num_train_images": 4, **kw}))


def test_ensure_regenerates_only_when_meta_differs(tmp_path, monkeypatch):
    calls = []
    real = R.write_refshapes

    def counting(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(writer, "write_refshapes", counting)
    path = R.ensure_refshapes(_cfg(tmp_path), progress=False)
    assert path == tmp_path / "refshapes" and len(calls) == 1
    assert R.ensure_refshapes(_cfg(tmp_path), progress=False) == path and len(calls) == 1
    R.ensure_refshapes(_cfg(tmp_path, seed=5), progress=False)
    assert len(calls) == 2 and json.loads((path / "meta.json").read_text())["seed"] == 5
    (path / "meta.json").unlink()  # an interrupted / foreign folder is regenerated
    R.ensure_refshapes(_cfg(tmp_path, seed=5), progress=False)
    assert len(calls) == 3
    with pytest.raises(R.RefShapesError, match="image_size"):
        R.ensure_refshapes(_cfg(tmp_path, image_size=8), progress=False)


def test_ensure_recovers_a_swap_that_was_killed(tmp_path, monkeypatch):
    """A writer killed between atomic_directory's two renames leaves the previous complete version
    aside and a partial one: ensure puts the complete one back instead of regenerating."""
    path = R.ensure_refshapes(_cfg(tmp_path), progress=False)
    before = (path / R.REFS_FILE).read_bytes()
    path.rename(tmp_path / ".refshapes.old-1234abcd")
    (tmp_path / ".refshapes.tmp-5678abcd" / "images").mkdir(parents=True)
    calls = []
    monkeypatch.setattr(writer, "write_refshapes", lambda *a, **kw: calls.append(kw))
    assert R.ensure_refshapes(_cfg(tmp_path), progress=False) == path and not calls
    assert (path / R.REFS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".refshapes.")) == [".refshapes.lock"]


def test_ensure_is_safe_under_concurrent_callers(tmp_path, monkeypatch):
    calls = []
    real = R.write_refshapes

    def slow(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(writer, "write_refshapes", slow)
    results, errors = [], []

    def worker():
        try:
            results.append(R.ensure_refshapes(_cfg(tmp_path), progress=False))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4 and len(calls) == 1  # flock + re-check: one generation
    assert R.verify_refshapes(results[0]) > 0


# --- CLI ---------------------------------------------------------------------------------------


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "refseg.data.refshapes", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["--train", "-1"], ["--image-size", "abc"], ["--image-size", "16"],
                                  ["--train", "0", "--val", "0", "--test", "0"], ["--bogus"]])
def test_cli_bad_args_exit_2_with_one_line(tmp_path, args):
    r = _cli("--root", tmp_path, *args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "refshapes").exists()


def test_cli_generates_and_previews(tmp_path):
    assert _cli("--help").returncode == 0
    out = tmp_path / "preview.png"
    r = _cli("--root", tmp_path, "--train", 3, "--val", 3, "--test", 0, "--image-size", 64, "--seed", 1,
             "--no-progress", "--verify", "--preview", out)
    assert r.returncode == 0, r.stderr
    assert "verified:" in r.stdout and out.is_file() and out.stat().st_size > 1000
    meta = json.loads((tmp_path / "refshapes" / "meta.json").read_text())
    assert (meta["num_train_images"], meta["num_val_images"], meta["num_test_images"]) == (3, 3, 0)
