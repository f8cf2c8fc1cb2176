#!/usr/bin/env python
"""RefCOCO at its real size without RefCOCO: a synthetic rehearsal set in the refer layout.

Writes (once; cached and resumable) a dataset with RefCOCO (unc)'s sizes, scaled by ``--scale``:
19,994 JPEGs of COCO sizes (longest side 640, mixed aspect ratios), 50,000 refs over 196,771
annotations with multi-part polygons, 142,210 expressions in the unc splits (train 16,994 images /
42,404 refs / 120,624 expressions; val 1,500 / 3,811 / 10,834; testA 750 / 1,975 / 5,657; testB 750 /
1,810 / 5,095; the paper's headline 142,209 is one less than these split counts add up to).

Content is meaningless but costs are not: backgrounds are crops and tiles of the real COCO photos in
``../shared/realref`` (so the JPEGs compress and decode like photos), and every annotation is drawn on
top as a photo-textured, colour-tinted polygon (shapes from refshapes' ``shape_polygon``, made
irregular), so masks and pixels agree. Layout (read by ``ReferSource(<root>, "refcoco", "unc")``)::

    <root>/refcoco/refs(unc).p       plain pickle (protocol 2) of the refer toolkit's ref dicts
    <root>/refcoco/instances.json    COCO: info, images, licenses, annotations (polygons), categories
    <root>/images/train2014/COCO_train2014_<12-digit id>.jpg
    <root>/meta.json                 parameters and statistics; written last (marks the set complete)

Then it measures, each in a fresh process where memory matters, and prints a table (``--out``: JSON):
annotation load time and resident memory (``open_source``); ``python -m refseg.data.check``; loader
throughput at 480 px for 0, 1 and 2 workers with the per-sample cost split (uint8 items; the float32
path they replaced was removed, its figures are in RESULTS.md), and the bytes a sample costs crossing
from a worker; evaluation
throughput and resident-memory growth of a small model over part of val and all of val; one training
step of configs/refcoco.yaml at batch 2 on the CPU (random weights: XCiT-S12/16 and BERT-base from a
local directory), its peak memory, and a checkpoint save / load. ``--two-process-eval`` also checks
that ``accelerate launch --num_processes 2 evaluate.py`` gives the one-process numbers.

    python benchmarks/refcoco_scale.py --scale 0.1 --out rehearsal.json   # quick (2,000 images)
    python benchmarks/refcoco_scale.py --scale 1.0                        # full size (19,994 images, 3 GB)
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from refseg.data.refshapes import COLORS, SHAPES  # noqa: E402
from refseg.data.refshapes.scene import shape_polygon  # noqa: E402
from refseg.errors import UserError  # noqa: E402

VERSION = 1
DATASET = "refcoco"
SPLIT_BY = "unc"
# RefCOCO (unc): images, refs, expressions per split.
SPLITS = {"train": (16994, 42404, 120624), "val": (1500, 3811, 10834),
          "testA": (750, 1975, 5657), "testB": (750, 1810, 5095)}
NUM_ANNOTATIONS = 196771  # annotations of RefCOCO's instances.json (all objects of the 19,994 images)
# realref (15 COCO photos, refer layout): --photos, else $REFSEG_REALREF, else ../shared/realref
REALREF = Path(os.environ.get("REFSEG_REALREF") or REPO.parent / "shared" / "realref")
# COCO's JPEGs (Flickr) are 4:4:4, most at quality ~96, some ~90, ~160 KB on average at 640x480; these
# tiles at 93 (4:4:4) average ~160 KB per 640x480 and decode at the realref photos' rate for their size.
DEFAULT_QUALITY = 93
MULTI_PART = 0.15  # share of annotations whose segmentation has 2-3 polygons (occluded objects)
# Expression words (RefCOCO's are short: ~3.6 words on average).
_LOCATIONS = ("left", "right", "middle", "center", "top", "bottom", "front", "back", "far left",
              "far right", "second from left", "closest", "top left", "bottom right")
_ATTRIBUTES = ("big", "small", "tall", "white", "black", "red", "blue", "green", "striped", "dark",
               "light", "empty", "old", "young", "partial", "blurry")


class RehearsalError(UserError, ValueError):
    """Bad parameters, or a folder that holds another dataset."""


# ---------------------------------------------------------------------------------------------
# The plan: every id, size, polygon and sentence, from (seed, scale) alone
# ---------------------------------------------------------------------------------------------


def scaled_counts(scale: float) -> dict[str, tuple[int, int, int]]:
    """{split: (images, refs, expressions)} at ``scale`` (each at least 1, refs >= images,
    expressions >= refs)."""
    if not (0 < scale <= 1):
        raise RehearsalError(f"--scale must be in (0, 1], got {scale}")
    out = {}
    for split, (n_img, n_ref, n_sent) in SPLITS.items():
        i = max(1, round(n_img * scale))
        r = max(i, round(n_ref * scale))
        out[split] = (i, r, max(r, round(n_sent * scale)))
    return out


def _spread(rng: np.random.Generator, total: int, n: int) -> np.ndarray:
    """``n`` positive integers summing to ``total`` (one each, the rest drawn multinomially)."""
    return 1 + rng.multinomial(total - n, np.full(n, 1.0 / n))


def _coco_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) with the longest side 640, distributed roughly as COCO's."""
    u = rng.random()
    short = (480 if u < 0.55 else 427 if u < 0.80 else 426 if u < 0.85 else 360 if u < 0.90
             else int(rng.integers(300, 640)))
    return (640, short) if rng.random() < 0.75 else (short, 640)


def _irregular(rng: np.random.Generator, shape: str, center, scale: float, rotation: float) -> np.ndarray:
    """A refshapes polygon resampled to 12-32 vertices with radial noise: COCO-like outlines."""
    poly = shape_polygon(shape, center, scale, rotation)
    closed = np.vstack([poly, poly[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    t = np.concatenate([[0.0], np.cumsum(seg)])
    k = int(rng.integers(12, 33))
    s = np.sort(rng.uniform(0, t[-1], k))
    pts = np.stack([np.interp(s, t, closed[:, 0]), np.interp(s, t, closed[:, 1])], 1)
    c = np.asarray(center, np.float64)
    return c + (pts - c) * rng.uniform(0.85, 1.12, (k, 1))


def plan_image(seed: int, index: int, image_id: int, n_anns: int, n_refs: int, person: Optional[bool]) -> dict:
    """One image: size and annotations (the first ``n_refs`` are the referred objects, drawn larger).

    ``category`` is an index into COCO's 80 categories (0: person).
    ``person``: testA refers to people only, testB to other objects (None: either). Every
    segmentation is a list of polygons clipped to the image; polygons are float32 (K, 2) arrays.
    """
    rng = np.random.default_rng([seed, index])
    w, h = _coco_size(rng)
    anns = []
    for a in range(n_anns):
        referred = a < n_refs
        if referred and person is not None:
            cat = 0 if person else int(rng.integers(1, 80))
        else:
            cat = 0 if rng.random() < 0.3 else int(rng.integers(1, 80))
        side = min(w, h)
        scale = side * (rng.uniform(0.2, 0.55) if referred else rng.uniform(0.05, 0.3))
        center = (rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)
        parts = [_irregular(rng, SHAPES[int(rng.integers(len(SHAPES)))], center, scale, rng.uniform(0, 360))]
        if rng.random() < MULTI_PART:  # pieces of the same object next to the main one
            for _ in range(int(rng.integers(1, 3))):
                off = rng.uniform(-0.6, 0.6, 2) * scale
                parts.append(_irregular(rng, SHAPES[int(rng.integers(len(SHAPES)))],
                                        (center[0] + off[0], center[1] + off[1]), scale * rng.uniform(0.25, 0.5),
                                        rng.uniform(0, 360)))
        parts = [np.clip(p, 0, [w, h]).astype(np.float32) for p in parts]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        anns.append({"category": cat, "parts": parts, "color": color})
    # paint referred objects last (on top), the rest in random order, as in a photo's foreground
    order = list(rng.permutation(np.arange(n_refs, n_anns))) + list(range(n_refs))
    return {"id": image_id, "width": w, "height": h, "anns": anns, "order": [int(i) for i in order],
            "file_name": f"COCO_train2014_{image_id:012d}.jpg"}


def _sentence(rng: np.random.Generator, category: str) -> str:
    u = rng.random()
    loc, att = _LOCATIONS[int(rng.integers(len(_LOCATIONS)))], _ATTRIBUTES[int(rng.integers(len(_ATTRIBUTES)))]
    if u < 0.3:
        return f"{category} on {loc}"
    if u < 0.5:
        return f"{loc} {category}"
    if u < 0.7:
        return f"{att} {category} {loc}"
    if u < 0.85:
        return loc
    return f"the {att} {category} next to the {_ATTRIBUTES[int(rng.integers(len(_ATTRIBUTES)))]} one"


def build_plan(scale: float, seed: int) -> dict:
    """Images (with annotations), refs and their splits. Depends only on (scale, seed)."""
    counts = scaled_counts(scale)
    rng = np.random.default_rng([seed, 0xC0C0])
    n_images = sum(c[0] for c in counts.values())
    n_refs = sum(c[1] for c in counts.values())
    n_anns = max(round(NUM_ANNOTATIONS * scale), n_refs)
    image_ids = np.sort(rng.choice(np.arange(1, 581930), n_images, replace=False))
    image_ids = rng.permutation(image_ids)  # COCO ids, in no particular order across splits
    splits = [s for s, c in counts.items() for _ in range(c[0])]
    refs_per_image: list[int] = []
    sents_per_ref: list[np.ndarray] = []
    for s, (n_i, n_r, n_s) in counts.items():
        refs_per_image += _spread(rng, n_r, n_i).tolist()
        sents_per_ref.append(_spread(rng, n_s, n_r))
    refs_per_image_arr = np.asarray(refs_per_image)
    extra = _spread(rng, n_anns - int(refs_per_image_arr.sum()) + n_images, n_images) - 1
    anns_per_image = refs_per_image_arr + extra
    order = rng.permutation(n_images)  # refs file: splits interleaved, as in refs(unc).p
    return {"scale": scale, "seed": seed, "counts": counts, "image_ids": image_ids.tolist(), "splits": splits,
            "refs_per_image": refs_per_image, "anns_per_image": anns_per_image.tolist(),
            "sents_per_ref": np.concatenate(sents_per_ref).tolist(), "order": order.tolist()}


def plan_images(plan: dict) -> Iterator[dict]:
    """The per-image plans, in plan order (index i of the plan's lists)."""
    for i, image_id in enumerate(plan["image_ids"]):
        split = plan["splits"][i]
        person = True if split == "testA" else False if split == "testB" else None
        yield plan_image(plan["seed"], i, image_id, plan["anns_per_image"][i], plan["refs_per_image"][i], person)


# ---------------------------------------------------------------------------------------------
# Rendering (workers)
# ---------------------------------------------------------------------------------------------

_PHOTOS: list[np.ndarray] = []


def load_photos(realref: Path = REALREF) -> list[np.ndarray]:
    """The realref photos, BGR uint8."""
    folder = Path(realref) / "images" / "train2014"
    files = sorted(folder.glob("*.jpg"))
    photos = [cv2.imread(str(f), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) for f in files]
    photos = [p for p in photos if p is not None]
    if not photos:
        raise RehearsalError(f"{folder}: no photos to build backgrounds from (pass --photos <realref folder> "
                             "or set REFSEG_REALREF)")
    return photos


def _worker_init(realref: str) -> None:
    cv2.setNumThreads(1)
    _PHOTOS[:] = load_photos(Path(realref))


def _crop(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A (h, w) BGR crop of a random photo, downscaled by up to 1.4 (never enlarged more than the
    photo's size forces), maybe mirrored."""
    photo = _PHOTOS[int(rng.integers(len(_PHOTOS)))]
    H, W = photo.shape[:2]
    zoom = rng.uniform(0.9, 1.4)
    cw, ch = min(W, max(8, round(w * zoom))), min(H, max(8, round(h * zoom)))
    x, y = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
    out = cv2.resize(photo[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    return out[:, ::-1] if rng.random() < 0.5 else out


def render(img: dict, seed: int, index: int) -> np.ndarray:
    """BGR uint8 (H, W, 3): 1-4 photo tiles, then every annotation as a tinted photo texture."""
    rng = np.random.default_rng([seed, index, 1])
    w, h = img["width"], img["height"]
    canvas = np.empty((h, w, 3), np.uint8)
    u = rng.random()
    xs = [0, int(rng.integers(w // 4, 3 * w // 4)), w] if u >= 0.5 else [0, w]
    ys = [0, int(rng.integers(h // 4, 3 * h // 4)), h] if u >= 0.8 or u < 0.2 else [0, h]
    for y0, y1 in zip(ys, ys[1:]):
        for x0, x1 in zip(xs, xs[1:]):
            canvas[y0:y1, x0:x1] = _crop(rng, x1 - x0, y1 - y0)
    for k in img["order"]:
        a = img["anns"][k]
        pts = np.concatenate(a["parts"])
        x0, y0 = np.floor(pts.min(0)).astype(int)
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
        x1, y1 = min(x1, w), min(y1, h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        local = [np.round((p - [x0, y0]) * 16).astype(np.int32) for p in a["parts"]]
        cv2.fillPoly(mask, local, 255, lineType=cv2.LINE_8, shift=4)
        rgb = COLORS[a["color"]]
        tint = np.array(rgb[::-1], np.float32)
        tex = _crop(rng, x1 - x0, y1 - y0)
        patch = cv2.addWeighted(tex, 0.65, np.broadcast_to(tint, tex.shape).astype(np.uint8), 0.35, 0)
        region = canvas[y0:y1, x0:x1]
        np.copyto(region, patch, where=mask[..., None].astype(bool))
        cv2.polylines(region, local, True, (20, 20, 20), 1, lineType=cv2.LINE_AA, shift=4)
    return canvas


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _render_task(task) -> tuple[int, int]:
    """Worker: render and write one image; returns (plan index, bytes written)."""
    img, seed, index, image_dir, quality = task
    ok, buf = cv2.imencode(".jpg", render(img, seed, index), [cv2.IMWRITE_JPEG_QUALITY, quality,
                           cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    if not ok:  # pragma: no cover
        raise RuntimeError(f"could not encode {img['file_name']}")
    _write_atomic(Path(image_dir) / img["file_name"], buf.tobytes())
    return index, len(buf)


# ---------------------------------------------------------------------------------------------
# Annotation files
# ---------------------------------------------------------------------------------------------


def _area_bbox(parts: list[np.ndarray], h: int, w: int) -> tuple[float, list[float]]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.merge(mask_utils.frPyObjects([p.ravel().astype(np.float64).tolist() for p in parts], h, w))
    return float(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]


def write_annotations(plan: dict, images: list[dict], folder: Path, realref: Path = REALREF,
                      progress: bool = True) -> dict:
    """``refs(unc).p`` and ``instances.json`` as the refer toolkit's; returns split statistics.

    instances.json is streamed annotation by annotation (the polygons as Python lists at once would
    take several GB); both files are written to a temporary name and renamed into place.
    """
    from tqdm import tqdm

    categories = _coco_categories(realref)
    rng = np.random.default_rng([plan["seed"], 0x5E47])
    folder.mkdir(parents=True, exist_ok=True)
    tmp_json = folder / f".instances.json.tmp-{os.getpid()}"
    refs: list[dict] = []
    ann_ids: dict[int, list[int]] = {}
    next_ann = 1000000 + int(rng.integers(0, 1000000))  # COCO-like annotation ids
    with open(tmp_json, "w", encoding="utf-8") as f:
        f.write('{"info": ' + json.dumps({"description": "refcoco_scale: synthetic rehearsal of RefCOCO (unc)",
                                          "version": VERSION, "scale": plan["scale"], "seed": plan["seed"]}))
        f.write(', "images": [')
        f.write(", ".join(json.dumps({"license": 1, "file_name": im["file_name"], "coco_url": "", "height": im["height"],
                                      "width": im["width"], "date_captured": "2013-11-14 16:28:13",
                                      "flickr_url": "", "id": im["id"]}) for im in images))
        f.write('], "licenses": [{"url": "", "id": 1, "name": "synthetic"}], "annotations": [')
        first = True
        for im in tqdm(images, desc="annotations", unit="img", disable=not progress, dynamic_ncols=True):
            ids = []
            for a in im["anns"]:
                area, bbox = _area_bbox(a["parts"], im["height"], im["width"])
                ids.append(next_ann)
                seg = [[round(float(v), 2) for v in p.ravel()] for p in a["parts"]]
                f.write(("" if first else ", ") + json.dumps(
                    {"segmentation": seg, "area": area, "iscrowd": 0, "image_id": im["id"], "bbox": bbox,
                     "category_id": categories[a["category"]]["id"], "id": next_ann}))
                first = False
                next_ann += 1 + int(rng.integers(0, 3))
            ann_ids[im["id"]] = ids
        f.write('], "categories": ' + json.dumps(categories) + "}")
    # refs: one per referred annotation, images in the plan's interleaved order
    ref_id = sent_id = 0
    first_ref = np.concatenate([[0], np.cumsum(plan["refs_per_image"])])
    stats = {s: {"images": 0, "refs": 0, "expressions": 0} for s in SPLITS}
    for i in plan["order"]:
        im, split = images[i], plan["splits"][i]
        stats[split]["images"] += 1
        for k in range(plan["refs_per_image"][i]):
            a = im["anns"][k]
            sents = []
            for _ in range(plan["sents_per_ref"][first_ref[i] + k]):
                raw = _sentence(rng, categories[a["category"]]["name"])
                raw = raw.capitalize() if rng.random() < 0.2 else raw
                sent = raw.lower()
                sents.append({"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent})
                sent_id += 1
            refs.append({"sent_ids": [s["sent_id"] for s in sents], "file_name":
                         f"{Path(im['file_name']).stem}_{ann_ids[im['id']][k]}.jpg", "ann_id": ann_ids[im["id"]][k],
                         "ref_id": ref_id, "image_id": im["id"], "split": split, "sentences": sents,
                         "category_id": categories[a["category"]]["id"]})
            ref_id += 1
            stats[split]["refs"] += 1
            stats[split]["expressions"] += len(sents)
    tmp_refs = folder / f".refs({SPLIT_BY}).p.tmp-{os.getpid()}"
    with open(tmp_refs, "wb") as f:
        pickle.dump(refs, f, protocol=2)  # as the toolkit's Python 2 files
    os.replace(tmp_json, folder / "instances.json")
    os.replace(tmp_refs, folder / f"refs({SPLIT_BY}).p")
    stats["annotations"] = sum(len(v) for v in ann_ids.values())
    return stats


def _coco_categories(realref: Path) -> list[dict]:
    """COCO's 80 categories (ids 1..90 with gaps, person first), from realref's instances.json."""
    data = json.loads((Path(realref) / "realref" / "instances.json").read_text(encoding="utf-8"))
    return [{"supercategory": c.get("supercategory", ""), "id": int(c["id"]), "name": c["name"]}
            for c in sorted(data["categories"], key=lambda c: int(c["id"]))]


# ---------------------------------------------------------------------------------------------
# The whole set
# ---------------------------------------------------------------------------------------------


def default_root(scale: float) -> Path:
    return REPO / "data" / f"refcoco_scale-{scale:g}"


def _params(scale: float, seed: int, quality: int) -> dict:
    return {"version": VERSION, "scale": float(scale), "seed": int(seed), "jpeg_quality": int(quality)}


def ensure_dataset(root: Path, scale: float, seed: int = 0, quality: int = DEFAULT_QUALITY,
                   workers: Optional[int] = None, progress: bool = True, realref: Path = REALREF) -> dict:
    """Write the set under ``root`` unless ``root/meta.json`` says it is complete; returns meta.

    Resumable: images are written one by one (temporary name, then rename), so a rerun after an
    interruption renders only the missing ones; the annotation files and then meta.json come last.
    """
    import fcntl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second writer waits, then finds the set complete
        return _ensure_dataset(root, scale, seed, quality, workers, progress, Path(realref))


def _ensure_dataset(root: Path, scale: float, seed: int, quality: int, workers: Optional[int], progress: bool,
                    realref: Path) -> dict:
    from tqdm import tqdm

    params = _params(scale, seed, quality)
    meta_path = root / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params:
            meta["cached"] = True
            return meta
        raise RehearsalError(f"{root}: holds a rehearsal set with other parameters ({meta.get('params')}); "
                             "remove it or pass another --root")
    if not 1 <= quality <= 100:
        raise RehearsalError(f"--quality must be in 1..100, got {quality}")
    t0 = time.perf_counter()
    plan = build_plan(scale, seed)
    images = list(tqdm(plan_images(plan), total=len(plan["image_ids"]), desc="plan", unit="img",
                       disable=not progress, dynamic_ncols=True))
    t_plan = time.perf_counter() - t0
    image_dir = root / "images" / "train2014"
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob(".*.tmp-*"):  # a kill mid-write leaves these; never read
        stale.unlink(missing_ok=True)
    todo = [(img, seed, i, str(image_dir), quality) for i, img in enumerate(images)
            if not (image_dir / img["file_name"]).is_file()]
    workers = workers or _cpus()
    t1 = time.perf_counter()
    bar = tqdm(total=len(images), initial=len(images) - len(todo), desc="images", unit="img",
               disable=not progress, dynamic_ncols=True)
    if workers > 1 and len(todo) > 50:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers, initializer=_worker_init,
                                          initargs=(str(realref),)) as pool:
            for _ in pool.imap_unordered(_render_task, todo, chunksize=8):
                bar.update()
    else:
        threads = cv2.getNumThreads()
        _worker_init(str(realref))
        try:
            for task in todo:
                _render_task(task)
                bar.update()
        finally:
            cv2.setNumThreads(threads)
    bar.close()
    t_images = time.perf_counter() - t1
    t2 = time.perf_counter()
    stats = write_annotations(plan, images, root / DATASET, realref, progress)
    t_ann = time.perf_counter() - t2
    sizes = [(image_dir / im["file_name"]).stat().st_size for im in images]
    pixels = [im["width"] * im["height"] for im in images]
    meta = {"params": params, "splits": {s: stats[s] for s in SPLITS}, "annotations": stats["annotations"],
            "images": len(images), "refs": sum(stats[s]["refs"] for s in SPLITS),
            "expressions": sum(stats[s]["expressions"] for s in SPLITS),
            "polygons": sum(len(a["parts"]) for im in images for a in im["anns"]),
            "multi_part_annotations": sum(len(a["parts"]) > 1 for im in images for a in im["anns"]),
            "jpeg_mean_kb": float(np.mean(sizes)) / 1e3,
            "jpeg_mean_kb_per_640x480": float(np.sum(sizes) / np.sum(pixels) * 640 * 480) / 1e3,
            "total_gb": float(np.sum(sizes)) / 1e9,
            "generation_s": {"plan": t_plan, "images": t_images, "images_rendered": len(todo),
                             "annotations": t_ann, "workers": workers},
            "cached": False}
    _write_atomic(meta_path, json.dumps(meta, indent=1).encode())
    return meta


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def decode_rates(groups: dict[str, list[Path]], rounds: int = 7, seconds: float = 0.4) -> dict[str, float]:
    """``cv2.imread`` files per second on one thread (a loader worker's decode-only floor) for each
    group of files: rounds alternate between the groups and the median round counts, so a machine
    shared with other jobs slows every group alike."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    rates: dict[str, list[float]] = {k: [] for k in groups}
    try:
        for files in groups.values():  # warm the page cache and the decoder
            for f in files:
                if cv2.imread(str(f), flags) is None:
                    raise RehearsalError(f"{f}: unreadable image")
        for _ in range(rounds):
            for name, files in groups.items():
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    cv2.imread(str(files[n % len(files)]), flags)
                    n += 1
                rates[name].append(n / (time.perf_counter() - t0))
    finally:
        cv2.setNumThreads(threads)
    return {k: float(np.median(v)) for k, v in rates.items()}


def jpeg_figures(root: Path, realref: Path = REALREF, sample: int = 300) -> dict:
    """Mean size and decode rate of the set's JPEGs next to the realref photos'."""
    rng = np.random.default_rng(0)
    files = sorted((root / "images" / "train2014").glob("*.jpg"))
    pick = [files[i] for i in sorted(rng.choice(len(files), min(sample, len(files)), replace=False))]
    real = sorted((Path(realref) / "images" / "train2014").glob("*.jpg"))
    rates = decode_rates({"rehearsal": pick, "realref": real})
    return {"image_dir": str(root / "images" / "train2014"),
            "jpeg_mean_kb": float(np.mean([f.stat().st_size for f in files])) / 1e3,
            "realref_jpeg_mean_kb": float(np.mean([f.stat().st_size for f in real])) / 1e3,
            "decode_only_samples_per_s": rates["rehearsal"],
            "realref_decode_samples_per_s": rates["realref"]}


def _per_sample_ms(fn, items, repeats: int = 3) -> float:
    """Median over ``repeats`` passes of the mean ms per call of ``fn(item)``."""
    for it in items[:5]:
        fn(it)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        runs.append((time.perf_counter() - t0) / len(items) * 1e3)
    return float(np.median(runs))


def _item_bytes(batch: dict) -> int:
    """Bytes per sample of the tensors a worker sends (images, masks, text)."""
    keys = ("pixel_values", "labels", "input_ids", "attention_mask")
    return int(sum(batch[k][0].numel() * batch[k].element_size() for k in keys if k in batch))


def loader_figures(root: Path, image_size: int = 480, n: int = 240, workers=(0, 1, 2), batch_size: int = 8,
                   text: str = "bundled-minilm") -> dict:
    """Per-sample cost split and throughput of training items (uint8, normalised on the device) at ``image_size``."""
    import torch
    from torch.utils.data import DataLoader

    from refseg.data.dataset import RefSegDataset, collate, worker_init
    from refseg.data.sources.refer import ReferSource
    from refseg.data.transforms import encode_text, image_to_uint8, polygon_mask
    from refseg.models.text import load_tokenizer

    threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        src = ReferSource(root, DATASET, SPLIT_BY)
        tok = load_tokenizer(text)
        S = image_size
        out: dict[str, Any] = {"image_size": S, "batch_size": batch_size}
        train = src.samples("train")
        samples = train[:: max(1, len(train) // n)][:n]
        pairs = [(s, src.load_image(s)) for s in samples]
        decode = _per_sample_ms(lambda p: src.load_image(p[0]), pairs)
        tokenise = _per_sample_ms(lambda p: encode_text(tok, p[0].sentence, 20), pairs)
        out["uint8_ms"] = {
            "decode": decode,
            "resize": _per_sample_ms(lambda p: image_to_uint8(p[1], S), pairs),
            "mask": _per_sample_ms(lambda p: polygon_mask(src.segmentation(p[0]), p[0].height, p[0].width, S), pairs),
            "tokenise": tokenise}
        key = "uint8"
        ds = RefSegDataset(src, "train", tok, S, 20, train=True)
        idx = [(0, i) for i in range(min(n, len(ds)))]
        items = [ds[i] for i in idx]
        batches = [items[k:k + batch_size] for k in range(0, len(items), batch_size)]
        out[f"{key}_ms"]["item (all of the above)"] = _per_sample_ms(lambda i: ds[i], idx, repeats=1)
        out[f"{key}_ms"]["collate"] = _per_sample_ms(collate, batches) / batch_size
        out[f"{key}_bytes_per_sample"] = _item_bytes(collate(batches[0]))
        rates = {}
        for nw in workers:
            loader = DataLoader(ds, batch_sampler=[idx[k:k + batch_size] for k in range(0, len(idx), batch_size)],
                                num_workers=nw, collate_fn=collate, worker_init_fn=worker_init if nw else None,
                                prefetch_factor=4 if nw else None)
            it = iter(loader)
            next(it)  # workers started and warm
            seen, t0 = 0, time.perf_counter()
            for batch in it:
                seen += batch["pixel_values"].shape[0]
            rates[str(nw)] = seen / (time.perf_counter() - t0)
            del it, loader
        out[f"{key}_samples_per_s"] = rates
        return out
    finally:
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])


# ---------------------------------------------------------------------------------------------
# Measurements in a fresh process each (resident memory of one thing at a time)
# ---------------------------------------------------------------------------------------------

# The "small model" that evaluation is measured with: RefCOCO's input size, a tiny network.
EVAL_MODEL = ["model.image_size=480", "model.vision.name=xcit_nano_12_p8", "model.vision.embed_dim=32",
              "model.vision.depth=4", "model.vision.num_heads=2", "model.crossvit.embed_dim=32",
              "model.crossvit.num_heads=2", "model.decoder.hidden_dim=32", "model.text.name=bundled-minilm",
              "model.vision.pretrained=null"]


def _status_mb(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RehearsalError(f"/proc/self/status has no {key}")


def _reset_peak_rss() -> None:
    """Restart VmHWM (the peak resident set) from the current resident set (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _data_config(root: Path):
    from refseg.config import load_config

    return load_config(None, [f"data.name={DATASET}", f"data.root={root}", f"data.split_by={SPLIT_BY}"]).data


def measure_annotations(root: Path) -> dict:
    from refseg.data.sources import open_source

    rss0 = _status_mb("VmRSS")
    _reset_peak_rss()
    t0 = time.perf_counter()
    src = open_source(_data_config(root))
    n = sum(len(src.samples(s)) for s in src.splits())
    dt = time.perf_counter() - t0
    return {"annotation_load_s": dt, "annotation_rss_mb": _status_mb("VmRSS") - rss0,
            "annotation_peak_rss_mb": _status_mb("VmHWM") - rss0, "annotation_expressions": n}


def measure_eval(root: Path, sizes: list[int], overrides: list[str], batch_size: int = 16) -> dict:
    """Evaluate a small random model on the first ``n`` val expressions for each ``n`` of ``sizes``,
    one after the other in this process (no loader workers: every byte is counted here).

    Each evaluation's peak resident memory is taken relative to the same resident baseline, after a
    warm-up evaluation (allocator pools, lazily built kernels): what one batch needs is in every
    figure, what stays behind per expression would make the larger set's figure grow.
    """
    import torch

    from refseg.config import load_config
    from refseg.data.dataset import RefSegDataset
    from refseg.data.sources import open_source
    from refseg.engine.evaluate import evaluate
    from refseg.models import build_model
    from refseg.models.text import load_tokenizer

    cfg = load_config(None, [*EVAL_MODEL, *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, load_pretrained=False).eval()
    tok = load_tokenizer(cfg.model.text.name)
    ds = RefSegDataset(open_source(_data_config(root)), "val", tok, cfg.model.image_size, cfg.model.text.max_tokens,
                       train=False)
    evaluate(model, torch.utils.data.Subset(ds, range(min(4 * batch_size, len(ds)))), batch_size=batch_size,
             progress=False)
    rss0 = _status_mb("VmRSS")
    out = []
    for n in sizes:
        _reset_peak_rss()
        t0 = time.perf_counter()
        res = evaluate(model, torch.utils.data.Subset(ds, range(min(n, len(ds)))), batch_size=batch_size,
                       progress=False)
        dt = time.perf_counter() - t0
        out.append({"expressions": res["num_samples"], "eval_s": dt, "eval_samples_per_s": res["num_samples"] / dt,
                    "eval_rss_growth_mb": _status_mb("VmHWM") - rss0,
                    "eval_rss_retained_mb": _status_mb("VmRSS") - rss0, "mIoU": res["mIoU"]})
    return {"runs": out, "threads": torch.get_num_threads(), "batch_size": batch_size}


def measure_train(root: Path, config: str, overrides: list[str], steps: int, work: Path) -> dict:
    """One training step of ``config`` at batch 2 on the CPU, then a checkpoint save and load."""
    import shutil

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import offline_model

    from refseg.config import load_config
    from refseg.data.dataset import RefSegDataset, collate
    from refseg.data.sources import open_source
    from refseg.engine.trainer import Trainer
    from refseg.models import RefSegModel
    from refseg.models.text import load_tokenizer

    cfg = load_config(config, ["train.batch_size=2", f"data.root={root}", f"data.name={DATASET}",
                               f"data.split_by={SPLIT_BY}", *overrides])
    notes = offline_model(cfg)
    trainer = Trainer(cfg, output_dir=work / "run", progress=False, cpu=True).setup(data=False)
    tok = load_tokenizer(cfg.model.text.name)
    ds = RefSegDataset(open_source(cfg.data), cfg.data.train_split, tok, cfg.model.image_size,
                       cfg.model.text.max_tokens, train=True)
    batch = collate([ds[(0, i)] for i in range(cfg.train.batch_size)])
    times = []
    for i in range(1 + steps):  # the first step pays one-off initialisation
        t0 = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - t0)
    ckpt = work / "checkpoint"
    t0 = time.perf_counter()
    trainer.unwrapped.save_pretrained(ckpt, run_config=cfg, processor=trainer.processor)
    save_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    t0 = time.perf_counter()
    RefSegModel.from_pretrained(ckpt)
    load_s = time.perf_counter() - t0
    params = sum(p.numel() for p in trainer.unwrapped.parameters())
    shutil.rmtree(work, ignore_errors=True)
    return {"train_step_s": float(np.median(times[1:])), "train_first_step_s": times[0],
            "train_peak_rss_mb": _status_mb("VmHWM"), "checkpoint_save_s": save_s, "checkpoint_load_s": load_s,
            "checkpoint_mb": size / 1e6, "params_m": params / 1e6, "train_threads": torch.get_num_threads(),
            "mixed_precision": trainer.accelerator.mixed_precision, "notes": notes}


# glibc raises its mmap threshold as large blocks are freed, so later image-sized buffers come from
# the heap, and where they land moves peak and resident memory by tens of MB from run to run (measured:
# 240-352 MB peak growth over the same evaluation). A fixed threshold keeps them in mmap and makes the
# evaluation figures say what refseg keeps, not where the heap fragmented.
EVAL_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _run_measure(args: list[str], env: Optional[dict] = None, timeout: float = 3 * 3600) -> dict:
    """This script with ``--measure ...`` in a fresh interpreter; returns its JSON answer."""
    import subprocess

    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    if r.returncode != 0:
        raise RuntimeError(f"measurement {' '.join(args)} failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure_check(root: Path, full_size: bool) -> dict:
    """``python -m refseg.data.check`` on the set (its default: sampled files, a few decodes).

    The checker compares the split sizes with RefCOCO's: at full size they must match; a scaled set
    may differ there and nowhere else.
    """
    import re
    import subprocess

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "refseg.data.check", "--data-root", str(root), "--dataset", DATASET,
                        "--split-by", SPLIT_BY], capture_output=True, text=True, cwd=str(REPO),
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    dt = time.perf_counter() - t0
    problems = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("problem:")]
    sizes_only = all(re.match(r"problem: split \w+: \d+ refs / \d+ sentences, expected", p) for p in problems)
    if r.returncode not in (0, 1) or (r.returncode == 1 and (full_size or not problems or not sizes_only)):
        raise RuntimeError(f"refseg.data.check failed on {root}: {(r.stderr or r.stdout).strip()[-2000:]}")
    return {"check_s": dt, "check_problems": problems}


def two_process_eval(root: Path, work: Path, overrides: list[str], batch_size: int) -> dict:
    """evaluate.py on val: one process, then ``accelerate launch --num_processes 2`` (CPU, gloo)."""
    import subprocess

    import torch

    from refseg.config import load_config
    from refseg.models import build_model

    cfg = load_config(None, [*EVAL_MODEL, *overrides, f"data.name={DATASET}", f"data.root={root}",
                             f"data.split_by={SPLIT_BY}", "data.num_workers=0"])
    torch.manual_seed(0)
    ckpt = work / "checkpoint"
    build_model(cfg.model, load_pretrained=False).save_pretrained(ckpt, run_config=cfg)
    common = ["evaluate.py", "--checkpoint", str(ckpt), "--split", "val", "--no-progress",
              "--batch-size", str(batch_size)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = {}
    for name, launch in (("one", []), ("two", ["-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                                              "--num_machines", "1", "--mixed_precision", "no",
                                              "--dynamo_backend", "no"])):
        dest = work / f"{name}.json"
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, *launch, *common, "--out", str(dest)], capture_output=True, text=True,
                           cwd=str(REPO), env=env, timeout=3 * 3600)
        if r.returncode != 0:
            raise RuntimeError(f"evaluate.py ({name} process(es)) failed: {r.stderr.strip()[-2000:]}")
        out[name] = {"results": json.loads(dest.read_text()), "wall_s": time.perf_counter() - t0}
    equal = out["one"]["results"] == out["two"]["results"]
    return {"eval_two_process_equal": equal, "eval_one_process": out["one"]["results"],
            "eval_two_process": out["two"]["results"], "eval_one_process_s": out["one"]["wall_s"],
            "eval_two_process_s": out["two"]["wall_s"], "eval_two_process_batch_size": batch_size}


def machine() -> dict:
    import platform

    import torch

    cpu = ""
    flags: set[str] = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu or platform.processor(), "cores": _cpus(), "cpu_flags": [f for f in wanted if f in flags],
            "load_average_1_5_15": load, "torch": torch.__version__, "opencv": cv2.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": _commit()}


def _commit() -> str:
    import subprocess

    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=str(REPO))
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=str(REPO)).stdout.strip()
        return r.stdout.strip() + ("+changes" if dirty else "") if r.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _table(fig: dict) -> list[tuple[str, str]]:
    lf = fig["loader"]
    retained = " / ".join(f"{r['eval_rss_retained_mb']:.0f}" for r in fig["eval"]["runs"])
    rows = [
        ("machine", f"{fig['machine']['cpu']}, {fig['machine']['cores']} cores, flags "
                    f"{' '.join(fig['machine']['cpu_flags'])}, load {fig['machine']['load_average_1_5_15']}"),
        ("set (images / refs / expressions)", f"{fig['dataset']['images']:,} / {fig['dataset']['refs']:,} / "
                                              f"{fig['dataset']['expressions']:,}; {fig['dataset']['annotations']:,} "
                                              f"annotations, {fig['dataset']['total_gb']:.2f} GB"),
        ("JPEG mean size", f"{fig['jpeg_mean_kb']:.1f} KB (realref photos {fig['realref_jpeg_mean_kb']:.1f} KB)"),
        ("decode only (cv2.imread, 1 thread)", f"{fig['decode_only_samples_per_s']:.0f} img/s (realref photos "
                                               f"{fig['realref_decode_samples_per_s']:.0f} img/s)"),
        ("annotation load", f"{fig['annotation_load_s']:.2f} s, {fig['annotation_rss_mb']:.0f} MB resident "
                            f"(peak +{fig['annotation_peak_rss_mb']:.0f} MB)"),
        ("python -m refseg.data.check", f"{fig['check_s']:.1f} s"),
        ("loader, uint8 path, 1 worker", f"{fig['loader_samples_per_s_per_worker']:.0f} samples/s at "
                                         f"{lf['image_size']} px ({', '.join(f'{k} workers {v:.0f}/s' for k, v in lf['uint8_samples_per_s'].items())})"),
        ("per sample, uint8 path (ms)", ", ".join(f"{k} {v:.2f}" for k, v in lf["uint8_ms"].items())),
        ("bytes per sample from a worker", f"{fig['worker_bytes_per_sample'] / 1e6:.2f} MB"),
        ("evaluation, small model", f"{fig['eval_samples_per_s']:.1f} expressions/s over {fig['eval_expressions_large']:,} "
                                    f"(batch {fig['eval']['batch_size']}, {fig['eval']['threads']} threads)"),
        ("eval peak resident growth (fixed mmap threshold)", f"{fig['eval_rss_growth_mb_small']:.0f} MB over {fig['eval_expressions_small']:,} "
                                             f"expressions, {fig['eval_rss_growth_mb_large']:.0f} MB over "
                                             f"{fig['eval_expressions_large']:,} (retained after: {retained} MB)"),
        ("training step, batch 2 (CPU)", f"{fig['train_step_s']:.1f} s ({fig['train']['mixed_precision']}, "
                                         f"{fig['train']['params_m']:.0f}M params), peak {fig['train_peak_rss_mb']:,.0f} MB"),
        ("checkpoint", f"{fig['checkpoint_mb']:.0f} MB, save {fig['checkpoint_save_s']:.1f} s, "
                       f"load {fig['train']['checkpoint_load_s']:.1f} s"),
    ]
    if "eval_two_process_equal" in fig:
        rows.append(("evaluate.py, 2 processes vs 1", f"{'equal' if fig['eval_two_process_equal'] else 'DIFFERENT'} "
                                                     f"(mIoU {fig['eval_one_process']['mIoU']:.4f}, "
                                                     f"{fig['eval_one_process']['num_samples']:,} expressions, "
                                                     f"{fig['eval_one_process_s']:.0f} s vs {fig['eval_two_process_s']:.0f} s)"))
    return rows


def main(argv=None) -> int:
    import argparse

    from refseg.cli import ArgumentParser, quiet_libraries

    ap = ArgumentParser(prog="refcoco_scale.py", description=__doc__.split("\n\n")[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--scale", type=float, default=0.1, help="fraction of RefCOCO's size (0.02 tests, 0.1 quick, 1.0 full)")
    ap.add_argument("--root", default=None, help="where the set lives (default: data/refcoco_scale-<scale>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality (4:4:4 chroma, as COCO's)")
    ap.add_argument("--workers", type=int, default=None, help="processes rendering images (default: all cores)")
    ap.add_argument("--photos", default=None, help="the realref folder whose photos make the backgrounds "
                    "(default: $REFSEG_REALREF or ../shared/realref)")
    ap.add_argument("--out", default=None, help="also write the figures as JSON to this file")
    ap.add_argument("--write-only", action="store_true", help="write (or find) the set and its JPEG figures only")
    ap.add_argument("--loader-samples", type=int, default=240, help="training items timed per loader setting")
    ap.add_argument("--eval-small", type=float, default=0.25, help="share of val in the small evaluation (<= 0.5)")
    ap.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the small evaluation model (repeatable)")
    ap.add_argument("--train-config", default=str(REPO / "configs" / "refcoco.yaml"))
    ap.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the training-step config (repeatable)")
    ap.add_argument("--train-steps", type=int, default=2, help="timed training steps (after one warm-up step)")
    ap.add_argument("--two-process-eval", action="store_true",
                    help="also run evaluate.py on val with 1 and with 2 processes (accelerate launch) and compare")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--measure", choices=("annotations", "eval", "train"), help=argparse.SUPPRESS)
    ap.add_argument("--eval-sizes", default="", help=argparse.SUPPRESS)
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    quiet_libraries()
    root = Path(args.root) if args.root else default_root(args.scale)
    if args.measure:  # a child of the run below: one measurement, one JSON line
        work = Path(args.out or root / ".work")
        fn = {"annotations": lambda: measure_annotations(root),
              "eval": lambda: measure_eval(root, [int(v) for v in args.eval_sizes.split(",")], args.eval_set),
              "train": lambda: measure_train(root, args.train_config, args.train_set, args.train_steps, work)}
        print(json.dumps(fn[args.measure]()))
        return 0
    for name in ("workers", "loader_samples", "train_steps"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise RehearsalError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not 0 < args.eval_small <= 0.5:
        raise RehearsalError(f"--eval-small must be in (0, 0.5], got {args.eval_small}")
    realref = Path(args.photos) if args.photos else REALREF
    meta = ensure_dataset(root, args.scale, args.seed, args.quality, args.workers, not args.no_progress, realref)
    say = (lambda *a: None) if args.no_progress else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say("measuring JPEG size and decode rate ...")
    fig: dict[str, Any] = {"scale": args.scale, "machine": machine(), **jpeg_figures(root, realref), "dataset": meta}
    if not args.write_only:
        say("annotation load ...")
        fig.update(_run_measure(["--measure", "annotations", "--root", str(root)]))
        say("python -m refseg.data.check ...")
        fig.update(measure_check(root, full_size=args.scale == 1.0))
        say("loader ...")
        lf = loader_figures(root, n=args.loader_samples)
        fig["loader"] = lf
        fig["loader_samples_per_s_per_worker"] = lf["uint8_samples_per_s"]["1"]
        fig["worker_bytes_per_sample"] = lf["uint8_bytes_per_sample"]
        n_val = meta["splits"]["val"]["expressions"]
        sizes = [max(1, int(n_val * args.eval_small)), n_val]
        say(f"evaluation over {sizes[0]:,} and then {sizes[1]:,} expressions ...")
        ev = _run_measure(["--measure", "eval", "--root", str(root), "--eval-sizes", ",".join(map(str, sizes)),
                           *[f"--eval-set={o}" for o in args.eval_set]], env=EVAL_ENV)
        ev["env"] = EVAL_ENV
        for size, run in zip(("small", "large"), ev["runs"]):
            fig[f"eval_expressions_{size}"] = run["expressions"]
            fig[f"eval_rss_growth_mb_{size}"] = run["eval_rss_growth_mb"]
        fig["eval"] = ev
        fig["eval_samples_per_s"] = ev["runs"][1]["eval_samples_per_s"]
        say("training step ...")
        work = root / ".work"
        train = _run_measure(["--measure", "train", "--root", str(root), "--out", str(work), "--train-config",
                              args.train_config, "--train-steps", str(args.train_steps),
                              *[f"--train-set={o}" for o in args.train_set]])
        fig["train"] = train
        for key in ("train_step_s", "train_peak_rss_mb", "checkpoint_save_s", "checkpoint_mb"):
            fig[key] = train[key]
        if args.two_process_eval:
            import shutil

            say("evaluate.py with 1 and 2 processes ...")
            work.mkdir(parents=True, exist_ok=True)
            try:
                fig.update(two_process_eval(root, work, args.eval_set, batch_size=16))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    print(f"RefCOCO rehearsal at scale {args.scale:g} ({root}), {fig['machine']['date']}, commit {fig['machine']['commit']}")
    rows = _table(fig) if not args.write_only else [
        ("set", f"{meta['images']:,} images, {meta['refs']:,} refs, {meta['expressions']:,} expressions"),
        ("JPEG mean size", f"{fig['jpeg_mean_kb']:.1f} KB"),
        ("decode only", f"{fig['decode_only_samples_per_s']:.0f} img/s (realref {fig['realref_decode_samples_per_s']:.0f})")]
    g = meta["generation_s"]
    rows.append(("generation" + (" (earlier, cached)" if meta.get("cached") else ""),
                 f"plan {g['plan']:.1f} s, images {g['images']:.1f} s ({g['images_rendered']:,} rendered, "
                 f"{g['workers']} processes), annotations {g['annotations']:.1f} s"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import markdown_table

    print(markdown_table(rows, "rehearsal"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(fig, indent=1))
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="refcoco_scale.py")
