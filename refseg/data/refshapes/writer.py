"""Writing the dataset in the refer layout (one generator per image, a pool of spawned workers from 500
images on, an atomic swap into place) and ``ensure_refshapes``, which regenerates only when the
parameters changed."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from ...errors import RefShapesError
from ...utils import atomic_directory, cpu_cores, recover_directory
from .expressions import generate_refs, shares_attribute
from .grammar import EXPR_TYPES, normalize_sentence
from .render import render_image
from .scene import SHAPES, sample_scene

VERSION = 1
DATASET_NAME = "refshapes"
SPLIT_BY = "refshapes"
REFS_FILE = f"refs({SPLIT_BY}).json"
PARAM_KEYS = ("num_train_images", "num_val_images", "num_test_images", "image_size", "seed")
SPLITS = ("train", "val", "test")

# JPEG q95 without chroma subsampling: measured at 192 px (noisy textures), PNG level 1 encodes in
# 4.3 ms and decodes in 1.3 ms (74 KiB); this JPEG encodes in 0.4 ms and decodes in 0.55 ms (28 KiB),
# mean abs error 2.9 grey levels (mostly the added sensor noise). Masks are stored exactly as RLE.
IMAGE_EXT = ".jpg"
IMAGE_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(SHAPES)}


def image_rng(seed: int, image_id: int) -> np.random.Generator:
    """The generator of one image: depends only on (seed, image id), never on worker scheduling."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(image_id)]))


def generate_example(seed: int, image_id: int, image_size: int):
    """(scene, RGB uint8 image, refs) for one image id; resamples until the scene has a ref."""
    rng = image_rng(seed, image_id)
    while True:
        scene = sample_scene(rng, image_size)
        refs = generate_refs(scene, rng)
        if refs:
            return scene, render_image(scene, rng), refs


def encode_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


@dataclass
class GeneratedImage:
    """What a worker returns for one image: COCO records without global annotation / ref ids."""

    image: dict  # the COCO image entry (id, file_name, height, width)
    split: str
    anns: list[dict]  # COCO annotations in the scene's painter's order, without "id" / "image_id"
    refs: list[tuple[int, list[tuple[str, str]]]]  # (target index into anns, [(raw sentence, type)])
    shares: list[bool]  # per ref: the target shares its colour or shape with another object


def _make_image(task) -> GeneratedImage:
    """Worker: generate one image, write its JPEG, return its records."""
    image_id, split, seed, image_size, image_dir = task
    scene, image, refs = generate_example(seed, image_id, image_size)
    file_name = f"{image_id:06d}{IMAGE_EXT}"
    ok, buf = cv2.imencode(IMAGE_EXT, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), IMAGE_PARAMS)
    if not ok:  # pragma: no cover
        raise RuntimeError(f"could not encode {file_name}")
    Path(image_dir, file_name).write_bytes(buf.tobytes())
    anns = []
    for o in scene.objects:
        bbox = list(cv2.boundingRect(o.mask.view(np.uint8)))  # x, y, w, h of the visible region
        anns.append({
            "category_id": CATEGORY_IDS[o.shape], "bbox": [float(v) for v in bbox], "area": float(o.area),
            "segmentation": encode_rle(o.mask), "iscrowd": 0,
            "attributes": {"color": o.color, "size": o.size, "center": [round(o.center[0], 3), round(o.center[1], 3)],
                           "full_area": o.full_area},
        })
    shares = [shares_attribute(scene, r.target) for r in refs]
    return GeneratedImage(image={"id": image_id, "file_name": file_name, "height": image_size, "width": image_size},
                          split=split, anns=anns, refs=[(r.target, r.sentences) for r in refs], shares=shares)


def validate_params(num_train: int, num_val: int, num_test: int, image_size: int, seed: int) -> None:
    for name, v in (("num_train_images", num_train), ("num_val_images", num_val), ("num_test_images", num_test),
                    ("image_size", image_size), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise RefShapesError(f"{name} must be an integer, got {v!r}")
    for name, v in (("num_train_images", num_train), ("num_val_images", num_val), ("num_test_images", num_test)):
        if v < 0:
            raise RefShapesError(f"{name} must be >= 0, got {v}")
    if num_train + num_val + num_test < 1:
        raise RefShapesError("at least one image is needed")
    if not 48 <= image_size <= 4096:
        raise RefShapesError(f"image_size must be between 48 and 4096, got {image_size}")
    if seed < 0:
        raise RefShapesError(f"seed must be >= 0, got {seed}")


def writer_workers(n: int) -> int:
    """Processes for ``n`` images: one per 250 images, at most 8 and the cores we may use."""
    return max(1, min(cpu_cores(), 8, n // 250))


def init_writer_worker() -> None:
    cv2.setNumThreads(1)


def write_refshapes(root, num_train_images: int = 4000, num_val_images: int = 300, num_test_images: int = 300,
                    image_size: int = 192, seed: int = 0, progress: bool = True) -> Path:
    """Generate the dataset into ``<root>/refshapes`` (replacing what is there) and return that path.

    Written through ``refseg.utils.atomic_directory`` (a temporary sibling renamed into place), so
    readers never see a partial dataset. Image ids run 1..N over train, val, test; everything depends
    only on ``seed`` (each image has its own generator, so the worker count does not matter). From 500
    images on, it uses a pool of spawned processes: a calling script needs the usual
    ``if __name__ == "__main__":`` guard. Concurrent callers should go through
    :func:`ensure_refshapes` (it holds a lock).
    """
    validate_params(num_train_images, num_val_images, num_test_images, image_size, seed)
    t0 = time.time()
    final = Path(root) / DATASET_NAME
    with atomic_directory(final) as tmp:
        image_dir = tmp / "images"
        image_dir.mkdir()
        tasks = []
        image_id = 0
        for split, n in zip(SPLITS, (num_train_images, num_val_images, num_test_images)):
            for _ in range(n):
                image_id += 1
                tasks.append((image_id, split, int(seed), int(image_size), str(image_dir)))
        workers = writer_workers(len(tasks))
        results = _generate_images(tasks, workers, progress)
        instances, refs, stats = _collect(results)
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


def _generate_images(tasks: list[tuple], workers: int, progress: bool) -> list[GeneratedImage]:
    """``_make_image`` over ``tasks`` in order, in ``workers`` spawned processes when > 1."""
    from tqdm import tqdm

    results = []
    with tqdm(total=len(tasks), desc="refshapes", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        if workers > 1:
            import multiprocessing as mp

            # spawn: safe when the caller already runs torch/CUDA threads (fork would copy them)
            with mp.get_context("spawn").Pool(workers, initializer=init_writer_worker) as pool:
                for r in pool.imap(_make_image, tasks, chunksize=16):
                    results.append(r)
                    bar.update()
        else:
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)  # small images: OpenCV's thread pool costs more than it saves
            try:
                for task in tasks:
                    results.append(_make_image(task))
                    bar.update()
            finally:
                cv2.setNumThreads(threads)
    return results


def _collect(results: list[GeneratedImage]) -> tuple[dict, list[dict], dict]:
    """(instances.json, the refs list, meta statistics) with global annotation / ref / sentence ids."""
    images, annotations, refs = [], [], []
    ann_id = ref_id = sent_id = 0
    type_counts = {k: 0 for k in EXPR_TYPES}
    split_counts = {s: {"images": 0, "refs": 0, "sentences": 0} for s in SPLITS}
    shares = []
    for r in results:
        img = r.image
        images.append(img)
        split_counts[r.split]["images"] += 1
        first_ann = ann_id + 1
        for a in r.anns:
            ann_id += 1
            annotations.append({"id": ann_id, "image_id": img["id"], **a})
        stem = Path(img["file_name"]).stem
        for (target, sentences), share in zip(r.refs, r.shares):
            ref_id += 1
            sents = []
            for raw, kind in sentences:
                sent = normalize_sentence(raw)
                sents.append({"sent_id": sent_id, "sent": sent, "raw": raw, "tokens": sent.split(), "type": kind})
                sent_id += 1
                type_counts[kind] += 1
            a = annotations[first_ann - 1 + target]
            refs.append({
                "ref_id": ref_id, "ann_id": a["id"], "image_id": img["id"], "split": r.split,
                "category_id": a["category_id"], "file_name": f"{stem}_{ref_id}{IMAGE_EXT}",
                "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
            })
            shares.append(share)
            split_counts[r.split]["refs"] += 1
            split_counts[r.split]["sentences"] += len(sents)
    instances = {
        "info": {"description": "refshapes: synthetic referring segmentation", "version": VERSION},
        "images": images, "annotations": annotations,
        "categories": [{"id": CATEGORY_IDS[s], "name": s, "supercategory": "shape"} for s in SHAPES],
    }
    total_sents = max(sum(type_counts.values()), 1)
    stats = {
        "splits": split_counts,
        "types": type_counts,
        "type_share": {k: round(v / total_sents, 4) for k, v in type_counts.items()},
        "distractor_share": round(float(np.mean(shares)) if shares else 0.0, 4),
    }
    return instances, refs, stats


def read_meta(path) -> Optional[dict]:
    """meta.json of a refshapes folder, or None when missing/unreadable."""
    try:
        return json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def params_of(data_cfg) -> dict:
    rs = getattr(data_cfg, "refshapes", data_cfg)
    return {k: getattr(rs, k) for k in PARAM_KEYS}


def _is_current(path: Path, params: dict) -> bool:
    meta = read_meta(path)
    if not meta or meta.get("version") != VERSION:
        return False
    if any(meta.get(k) != v for k, v in params.items()):
        return False
    return (path / "instances.json").is_file() and (path / REFS_FILE).is_file() and (path / "images").is_dir()


def ensure_refshapes(data_cfg, progress: bool = True, force: bool = False) -> Path:
    """Return ``<data_cfg.root>/refshapes``, generating it when missing, when its meta.json differs
    from ``data_cfg.refshapes`` (or the generator VERSION), or when ``force``.

    ``data_cfg`` is ``cfg.data`` (anything with ``root`` and ``refshapes.<PARAM_KEYS>``). Safe under
    concurrent callers (DDP ranks): an exclusive ``fcntl.flock`` on ``<root>/.refshapes.lock``
    serialises them and the check is repeated once the lock is held, so only the first generates.
    """
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
            # a writer killed mid-swap left the previous version aside and/or a partial one (we hold
            # the lock: no writer is running): put the complete one back, drop the rest
            recover_directory(path)
            if force or not _is_current(path, params):
                write_refshapes(root, progress=progress, **params)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return path
