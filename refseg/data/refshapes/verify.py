"""Reading a written dataset back: ``verify_refshapes`` re-checks every sentence against the scenes
rebuilt from ``instances.json``; ``write_preview`` draws a grid of examples with their targets."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from ..io import decode_segmentation, read_image, write_image
from .grammar import parse_expression
from .resolver import check_expression
from .scene import COLORS, Scene, SceneObject, mask_centroid
from .writer import CATEGORY_IDS, REFS_FILE, RefShapesError

def scene_from_annotations(anns: Sequence[dict], image_size: int) -> Scene:
    """Rebuild a Scene (what the checker needs) from one image's written annotations, in order."""
    names = {v: k for k, v in CATEGORY_IDS.items()}
    objs = []
    for a in anns:
        at = a["attributes"]
        m = decode_segmentation(a["segmentation"], image_size, image_size, f"ann_id {a.get('id')}")
        objs.append(SceneObject(
            shape=names[a["category_id"]], color=at["color"], size=at["size"], center=tuple(at["center"]),
            scale=math.sqrt(at["full_area"]), rotation=0.0, rgb=COLORS[at["color"]], full_mask=None, mask=m,
            full_area=int(at["full_area"]), area=int(np.count_nonzero(m)), centroid=mask_centroid(m)))
    return Scene(image_size, objs)


def verify_refshapes(path) -> int:
    """Re-check every written sentence against the scene rebuilt from ``instances.json``; returns the
    number of sentences checked, raises RefShapesError naming the first bad one."""
    path = Path(path)
    inst = json.loads((path / "instances.json").read_text())
    refs = json.loads((path / REFS_FILE).read_text())
    by_image: dict[int, list[dict]] = {}
    for a in inst["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    sizes = {im["id"]: im["height"] for im in inst["images"]}
    scenes: dict[int, tuple[Scene, dict[int, int]]] = {}
    n = 0
    for r in refs:
        if r["image_id"] not in scenes:
            anns = by_image[r["image_id"]]
            scenes[r["image_id"]] = (scene_from_annotations(anns, sizes[r["image_id"]]),
                                     {a["id"]: k for k, a in enumerate(anns)})
        scene, index = scenes[r["image_id"]]
        for s in r["sentences"]:
            if not check_expression(scene, s["raw"], index[r["ann_id"]]):
                raise RefShapesError(f"ref_id {r['ref_id']}: '{s['raw']}' does not name its target "
                                     "uniquely")
            if parse_expression(s["raw"]).type != s["type"]:
                raise RefShapesError(f"ref_id {r['ref_id']}: '{s['raw']}' is not of type {s['type']}")
            n += 1
    return n


def wrap_text(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for w in text.split():
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])


def write_preview(path, out, count: int = 8, split: Optional[str] = None, columns: int = 4) -> Path:
    """A PNG grid of ``count`` refs (one per image): the image enlarged, the target's outline in
    magenta, and the sentences with their types underneath."""
    path = Path(path)
    inst = json.loads((path / "instances.json").read_text())
    refs = json.loads((path / REFS_FILE).read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    imgs = {i["id"]: i for i in inst["images"]}
    if split is None:
        split = "val" if any(r["split"] == "val" for r in refs) else refs[0]["split"]
    chosen, seen = [], set()
    for r in refs:
        if r["split"] == split and r["image_id"] not in seen:
            chosen.append(r)
            seen.add(r["image_id"])
        if len(chosen) >= count:
            break
    if not chosen:
        have = sorted({r["split"] for r in refs})
        raise RefShapesError(f"no refs in split '{split}' to preview (splits: {', '.join(have)})")
    S = imgs[chosen[0]["image_id"]]["height"]
    f = max(1, round(288 / S))
    cell_w = S * f
    chars = max(20, cell_w // 8)
    cells = []
    for r in chosen:
        img = read_image(path / "images" / imgs[r["image_id"]]["file_name"], "stored", f"ref_id {r['ref_id']}")
        big = cv2.resize(img, (cell_w, cell_w), interpolation=cv2.INTER_NEAREST)
        m = decode_segmentation(anns[r["ann_id"]]["segmentation"], S, S, f"ann_id {r['ann_id']}").view(np.uint8)
        m = cv2.resize(m, (cell_w, cell_w), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(big, contours, -1, (0, 0, 0), 4)
        cv2.drawContours(big, contours, -1, (255, 0, 255), 2)
        lines = []
        for s in r["sentences"]:
            lines += wrap_text(f"[{s['type'][:3]}] {s['raw']}", chars)
        text = np.full((16 * 7 + 6, cell_w, 3), 255, np.uint8)
        for k, line in enumerate(lines[:7]):
            cv2.putText(text, line, (4, 14 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cell = np.concatenate([big, text], 0)
        cells.append(cv2.copyMakeBorder(cell, 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=(128, 128, 128)))
    while len(cells) % columns:
        cells.append(np.full_like(cells[0], 255))
    rows = [np.concatenate(cells[i:i + columns], 1) for i in range(0, len(cells), columns)]
    return write_image(out, np.concatenate(rows, 0))
