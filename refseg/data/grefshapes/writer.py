"""Writing grefshapes in the gRefCOCO layout (one generator per image, spawned workers from 500 images
on, an atomic swap into place), ``ensure_grefshapes`` (regenerates only when the parameters changed)
and ``verify_grefshapes`` (re-checks every written sentence against the scene rebuilt from
``instances.json``)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from ...errors import RefShapesError
from ...utils import atomic_directory, recover_directory
from ..refshapes.grammar import normalize_sentence
from ..refshapes.render import render_image
from ..refshapes.scene import SHAPES, sample_scene
from ..refshapes.verify import scene_from_annotations
from ..refshapes.writer import (CATEGORY_IDS, IMAGE_EXT, IMAGE_PARAMS, PARAM_KEYS, SPLITS, encode_rle, writer_workers,
                                params_of, init_writer_worker, read_meta, validate_params)
from .expressions import generate_grefs
from .language import check_gexpression

VERSION = 1
DATASET_NAME = "grefshapes"
SPLIT_BY = "grefshapes"
REFS_FILE = f"grefs({SPLIT_BY}).json"
KINDS = ("no_target", "one_target", "multi_target")


def image_rng(seed: int, image_id: int) -> np.random.Generator:
    """The generator of one grefshapes image (a stream of its own: not refshapes' scene of that id)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(image_id), 2]))


def generate_example(seed: int, image_id: int, image_size: int):
    """(scene, RGB uint8 image, refs) for one image id; resamples until the scene has a ref."""
    rng = image_rng(seed, image_id)
    while True:
        scene = sample_scene(rng, image_size)
        refs = generate_grefs(scene, rng)
        if refs:
            return scene, render_image(scene, rng), refs


@dataclass
class GeneratedImage:
    image: dict
    split: str
    anns: list[dict]  # COCO annotations in painter's order, without "id" / "image_id"
    refs: list[tuple[tuple[int, ...], list[tuple[str, str]]]]  # (target indices into anns, [(raw, type)])


def _make_image(task) -> GeneratedImage:
    image_id, split, seed, image_size, image_dir = task
    scene, image, refs = generate_example(seed, image_id, image_size)
    file_name = f"{image_id:06d}{IMAGE_EXT}"
    ok, buf = cv2.imencode(IMAGE_EXT, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), IMAGE_PARAMS)
    if not ok:  # pragma: no cover
        raise RuntimeError(f"could not encode {file_name}")
    Path(image_dir, file_name).write_bytes(buf.tobytes())
    anns = []
    for o in scene.objects:
        bbox = list(cv2.boundingRect(o.mask.view(np.uint8)))
        anns.append({
            "category_id": CATEGORY_IDS[o.shape], "bbox": [float(v) for v in bbox], "area": float(o.area),
            "segmentation": encode_rle(o.mask), "iscrowd": 0,
            "attributes": {"color": o.color, "size": o.size, "center": [round(o.center[0], 3), round(o.center[1], 3)],
                           "full_area": o.full_area},
        })
    return GeneratedImage(image={"id": image_id, "file_name": file_name, "height": image_size, "width": image_size},
                          split=split, anns=anns, refs=[(r.targets, r.sentences) for r in refs])


def _generate_images(tasks: list[tuple], workers: int, progress: bool) -> list[GeneratedImage]:
    from tqdm import tqdm

    results = []
    with tqdm(total=len(tasks), desc="grefshapes", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers, initializer=init_writer_worker) as pool:
                for r in pool.imap(_make_image, tasks, chunksize=16):
                    results.append(r)
                    bar.update()
        else:
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                for task in tasks:
                    results.append(_make_image(task))
                    bar.update()
            finally:
                cv2.setNumThreads(threads)
    return results


def _kind(targets) -> str:
    return KINDS[min(len(targets), 2)]


def _collect(results: list[GeneratedImage]) -> tuple[dict, list[dict], dict]:
    """(instances.json, the grefs list, statistics) with global annotation / ref / sentence ids.

    Refs are written as gRefCOCO writes them: ``ann_id`` and ``category_id`` lists, ``[-1]`` and ``[]``
    for no target."""
    images, annotations, refs = [], [], []
    ann_id = ref_id = sent_id = 0
    split_counts = {s: {"images": 0, "refs": 0, "sentences": 0, **{k: 0 for k in KINDS}} for s in SPLITS}
    types: dict[str, int] = {}
    for r in results:
        img = r.image
        images.append(img)
        split_counts[r.split]["images"] += 1
        first = ann_id + 1
        for a in r.anns:
            ann_id += 1
            annotations.append({"id": ann_id, "image_id": img["id"], **a})
        stem = Path(img["file_name"]).stem
        for targets, sentences in r.refs:
            ref_id += 1
            sents = []
            for raw, kind in sentences:
                sent = normalize_sentence(raw)
                sents.append({"sent_id": sent_id, "sent": sent, "raw": raw, "tokens": sent.split(), "type": kind})
                sent_id += 1
                types[kind] = types.get(kind, 0) + 1
            ids = [annotations[first - 1 + t]["id"] for t in targets]
            refs.append({
                "ref_id": ref_id, "ann_id": ids or [-1], "image_id": img["id"], "split": r.split,
                "category_id": [annotations[first - 1 + t]["category_id"] for t in targets],
                "file_name": f"{stem}_{ref_id}{IMAGE_EXT}", "sent_ids": [s["sent_id"] for s in sents],
                "sentences": sents,
            })
            c = split_counts[r.split]
            c["refs"] += 1
            c["sentences"] += len(sents)
            c[_kind(targets)] += len(sents)
    instances = {
        "info": {"description": "grefshapes: synthetic generalized referring segmentation", "version": VERSION},
        "images": images, "annotations": annotations,
        "categories": [{"id": CATEGORY_IDS[s], "name": s, "supercategory": "shape"} for s in SHAPES],
    }
    total = max(sum(c["sentences"] for c in split_counts.values()), 1)
    stats = {"splits": split_counts, "types": types,
             "kind_share": {k: round(sum(c[k] for c in split_counts.values()) / total, 4) for k in KINDS}}
    return instances, refs, stats


def write_grefshapes(root, num_train_images: int = 4000, num_val_images: int = 300, num_test_images: int = 300,
                     image_size: int = 192, seed: int = 0, progress: bool = True) -> Path:
    """Generate grefshapes into ``<root>/grefshapes`` (replacing what is there) and return that path.

    As ``refshapes.write_refshapes``: atomic, a pure function of the parameters, a pool of spawned
    processes from 500 images on (callers need the ``if __name__ == "__main__":`` guard).
    """
    validate_params(num_train_images, num_val_images, num_test_images, image_size, seed)
    t0 = time.time()
    final = Path(root) / DATASET_NAME
    with atomic_directory(final) as tmp:
        image_dir = tmp / "images"
        image_dir.mkdir()
        tasks, image_id = [], 0
        for split, n in zip(SPLITS, (num_train_images, num_val_images, num_test_images)):
            for _ in range(n):
                image_id += 1
                tasks.append((image_id, split, int(seed), int(image_size), str(image_dir)))
        workers = writer_workers(len(tasks))
        instances, refs, stats = _collect(_generate_images(tasks, workers, progress))
        (tmp / "instances.json").write_text(json.dumps(instances, separators=(",", ":")))
        (tmp / REFS_FILE).write_text(json.dumps(refs, separators=(",", ":")))
        meta = {
            "version": VERSION,
            "num_train_images": int(num_train_images), "num_val_images": int(num_val_images),
            "num_test_images": int(num_test_images), "image_size": int(image_size), "seed": int(seed),
            "stats": {**stats, "workers": workers, "seconds": round(time.time() - t0, 2)},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return final


def _is_current(path: Path, params: dict) -> bool:
    meta = read_meta(path)
    if not meta or meta.get("version") != VERSION or any(meta.get(k) != v for k, v in params.items()):
        return False
    return (path / "instances.json").is_file() and (path / REFS_FILE).is_file() and (path / "images").is_dir()


def ensure_grefshapes(data_cfg, progress: bool = True, force: bool = False) -> Path:
    """Return ``<data_cfg.root>/grefshapes``, generating it when missing, when its meta.json differs from
    the parameters (``data_cfg.refshapes``: the synthetic datasets share their sizes and seed) or the
    generator VERSION, or when ``force``. Safe under concurrent callers (an flock, as refshapes')."""
    import fcntl

    params = params_of(data_cfg)
    validate_params(*(params[k] for k in PARAM_KEYS))
    root = Path(getattr(data_cfg, "root", "data"))
    path = root / DATASET_NAME
    if not force and _is_current(path, params):
        return path
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{DATASET_NAME}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            recover_directory(path)
            if force or not _is_current(path, params):
                write_grefshapes(root, progress=progress, **params)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return path


def verify_grefshapes(path) -> dict[str, int]:
    """Re-check every written sentence against the scene rebuilt from ``instances.json``: it must name
    exactly its ref's objects (none, one or several). Returns sentence counts per kind; raises
    RefShapesError naming the first bad sentence."""
    path = Path(path)
    inst = json.loads((path / "instances.json").read_text())
    refs = json.loads((path / REFS_FILE).read_text())
    by_image: dict[int, list[dict]] = {}
    for a in inst["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    sizes = {im["id"]: im["height"] for im in inst["images"]}
    scenes: dict[int, tuple] = {}
    counts = {k: 0 for k in KINDS}
    for r in refs:
        iid = r["image_id"]
        if iid not in scenes:
            anns = by_image.get(iid, [])
            scenes[iid] = (scene_from_annotations(anns, sizes[iid]), {a["id"]: k for k, a in enumerate(anns)})
        scene, index = scenes[iid]
        ids = [] if r["ann_id"] == [-1] else r["ann_id"]
        targets = tuple(sorted(index[a] for a in ids))
        for s in r["sentences"]:
            if not check_gexpression(scene, s["raw"], targets):
                what = "no object" if not targets else f"exactly its {len(targets)} object(s)"
                raise RefShapesError(f"{path / REFS_FILE}: ref_id {r['ref_id']}: '{s['raw']}' does not name {what}")
            counts[_kind(targets)] += 1
    return counts


def stats_line(path) -> Optional[str]:
    """One line of statistics from meta.json (for the command line)."""
    meta = read_meta(path) or {}
    st = meta.get("stats")
    if not st:
        return None
    shares = ", ".join(f"{k.replace('_', '-')} {v:.1%}" for k, v in st["kind_share"].items())
    return f"sentences: {shares}; generated in {st['seconds']} s"


def write_preview(path, out, count: int = 12, split: Optional[str] = None, columns: int = 4) -> Path:
    """A PNG grid of ``count`` refs of ``split`` (default val), in file order: the image enlarged, the
    outline of the union of the ref's objects in magenta (none for no target), the number of objects
    and the sentences underneath."""
    from ..io import decode_segmentation, read_image, write_image
    from ..refshapes.verify import wrap_text

    path = Path(path)
    inst = json.loads((path / "instances.json").read_text())
    refs = json.loads((path / REFS_FILE).read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    imgs = {i["id"]: i for i in inst["images"]}
    split = split or ("val" if any(r["split"] == "val" for r in refs) else refs[0]["split"])
    chosen = [r for r in refs if r["split"] == split][:count]
    if not chosen:
        raise RefShapesError(f"no refs in split '{split}' to preview (splits: "
                             f"{', '.join(sorted({r['split'] for r in refs}))})")
    cells = []
    for r in chosen:
        im = imgs[r["image_id"]]
        S = im["height"]
        f = max(1, round(288 / S))
        img = read_image(path / "images" / im["file_name"], "stored", f"ref_id {r['ref_id']}")
        big = cv2.resize(img, (S * f, S * f), interpolation=cv2.INTER_NEAREST)
        ids = [] if r["ann_id"] == [-1] else r["ann_id"]
        m = np.zeros((S, S), np.uint8)
        for a in ids:
            m |= decode_segmentation(anns[a]["segmentation"], S, S, f"ann_id {a}").view(np.uint8)
        m = cv2.resize(m, (S * f, S * f), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(big, contours, -1, (0, 0, 0), 4)
        cv2.drawContours(big, contours, -1, (255, 0, 255), 2)
        lines = [f"{len(ids)} object(s)" if ids else "no object"]
        for s in r["sentences"]:
            lines += wrap_text(s["raw"], max(20, S * f // 8))
        text = np.full((16 * 5 + 6, S * f, 3), 255, np.uint8)
        for k, line in enumerate(lines[:5]):
            cv2.putText(text, line, (4, 14 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cell = np.concatenate([big, text], 0)
        cells.append(cv2.copyMakeBorder(cell, 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=(128, 128, 128)))
    while len(cells) % columns:
        cells.append(np.full_like(cells[0], 255))
    rows = [np.concatenate(cells[i:i + columns], 1) for i in range(0, len(cells), columns)]
    return write_image(out, np.concatenate(rows, 0))
