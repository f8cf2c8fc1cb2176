"""The refer layout (RefCOCO, RefCOCO+, RefCOCOg, refshapes): refs file + COCO ``instances.json``.

Layout::

    <root>/<dataset>/refs(<split_by>).p   (or .json)   list of refs
    <root>/<dataset>/instances.json                    COCO images / annotations / categories
    <root>/<dataset>/images/   if present, else   <root>/images/train2014/

A ref is ``{ref_id, ann_id, image_id, category_id, split, sentences: [{raw, sent, sent_id,
tokens[, type]}], sent_ids}``. The image file comes from ``instances.json`` by image id (the ref's
``file_name`` names a crop that does not exist on disk). The ``.p`` files were written by Python 2:
they are read with a restricted unpickler that builds plain containers, strings and numbers only.
"""
from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Optional

import cv2
import numpy as np

from ..errors import DataError, UnsafePickleError

# Canonical order for printing; other split names follow alphabetically.
SPLIT_ORDER = ("train", "val", "validation", "test", "testA", "testB", "testC")


# ---------------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------------


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused _codecs.encode with a non-latin1 encoding")
    return obj.encode("latin1", errors)


_ALLOWED_GLOBALS = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _safe_codecs_encode,
    ("codecs", "encode"): _safe_codecs_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits dict, list, tuple, set, frozenset, str, bytes, int, float, bool and None only."""

    def __init__(self, file, path: str, encoding: str):
        super().__init__(file, encoding=encoding, fix_imports=True)
        self._path = path

    def find_class(self, module, name):  # every GLOBAL / STACK_GLOBAL / INST / EXT goes through here
        fn = _ALLOWED_GLOBALS.get((module, name))
        if fn is None:
            raise UnsafePickleError(
                f"{self._path}: refused to load a pickle that references '{module}.{name}' "
                "(refs files may only hold plain lists, dicts, strings and numbers); nothing was executed")
        return fn

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._path}: refused a pickle with persistent ids; nothing was executed")


def safe_load_pickle(path: str | Path, encoding: str = "latin1") -> Any:
    """Load a pickle that may contain only plain containers, strings and numbers.

    Python 2 ``str`` objects are decoded with ``encoding`` (latin1 never fails; see ``py2_text`` for
    recovering UTF-8 text). Anything else (a class, a function, ``os.system`` via ``__reduce__``) raises
    ``UnsafePickleError`` before it can run.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, str(path), encoding).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, OverflowError) as e:
        raise DataError(f"{path}: not a readable refs pickle ({type(e).__name__}: {e})") from None


def py2_text(s: Any) -> str:
    """Text from a Python 2 pickle: str decoded as latin1 that really held UTF-8 is repaired."""
    if isinstance(s, bytes):
        try:
            return s.decode("utf-8")
        except UnicodeDecodeError:
            return s.decode("latin1")
    s = str(s)
    if not s.isascii():
        try:
            return s.encode("latin1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return s


# ---------------------------------------------------------------------------------------------
# Samples, masks, images
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One (ref, sentence) pair. ``height``/``width`` are the original image size."""

    ref_id: int
    sent_id: int
    sentence: str
    image_id: int
    ann_id: int
    image_path: str
    height: int
    width: int
    category_id: int
    split: str
    expr_type: Optional[str] = None


def decode_segmentation(segm: Any, height: int, width: int, where: str) -> np.ndarray:
    """COCO segmentation -> bool mask (height, width): the union of all parts.

    ``segm``: polygons ``[[x1, y1, x2, y2, ...], ...]`` (a flat single polygon is accepted too),
    an RLE dict with uncompressed ``counts`` (a list, crowd annotations) or compressed ``counts``
    (str/bytes), or a list of RLE dicts. Raises DataError (naming ``where``) on empty or malformed
    input and on an empty result.
    """
    from pycocotools import mask as mask_utils

    h, w = int(height), int(width)
    try:
        if isinstance(segm, dict):
            rle = _rle(segm, h, w, where)
        elif isinstance(segm, (list, tuple)) and segm and all(isinstance(p, dict) for p in segm):
            rle = mask_utils.merge([_rle(p, h, w, where) for p in segm], intersect=False)
        elif isinstance(segm, (list, tuple, np.ndarray)):
            polys = list(segm)
            if polys and not isinstance(polys[0], (list, tuple, np.ndarray)):
                polys = [polys]  # one flat polygon (lmms-lab exports)
            parts = []
            for p in polys:
                p = [float(v) for v in p]
                if len(p) % 2:
                    raise DataError(f"{where}: polygon with an odd number of coordinates ({len(p)})")
                if len(p) >= 6:  # fewer than 3 points has no area; len 4 would be read as a box
                    parts.append(p)
            if not parts:
                raise DataError(f"{where}: empty polygon (no part with at least 3 points)")
            rle = mask_utils.merge(mask_utils.frPyObjects(parts, h, w), intersect=False)
        else:
            raise DataError(f"{where}: unsupported segmentation of type {type(segm).__name__}")
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy= DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
    except DataError:
        raise
    except Exception as e:  # pycocotools raises bare Exceptions / TypeErrors on bad input
        raise DataError(f"{where}: cannot decode the segmentation ({type(e).__name__}: {e})") from None
    if m.ndim == 3:
        m = m.any(axis=2)
    m = m.astype(bool)
    if m.shape != (h, w):
        raise DataError(f"{where}: mask is {m.shape[0]}x{m.shape[1]} but the image is {h}x{w}")
    if not m.any():
        raise DataError(f"{where}: the object mask is empty")
    return m


def _rle(segm: dict, h: int, w: int, where: str) -> dict:
    from pycocotools import mask as mask_utils

    if "counts" not in segm or "size" not in segm:
        raise DataError(f"{where}: RLE segmentation without 'counts'/'size'")
    size = [int(v) for v in segm["size"]]
    if size != [h, w]:
        raise DataError(f"{where}: RLE size {size[0]}x{size[1]} does not match the image {h}x{w}")
    counts = segm["counts"]
    if isinstance(counts, (list, tuple, np.ndarray)):  # uncompressed (iscrowd=1 in COCO)
        return mask_utils.frPyObjects({"counts": [int(c) for c in counts], "size": size}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise DataError(f"{where}: RLE counts of type {type(counts).__name__}")
    return {"counts": counts, "size": size}


_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # COCO masks are in the stored frame


def read_image(path: str | Path, where: str = "") -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); EXIF orientation is ignored (like PIL / COCO)."""
    path = str(path)
    img = cv2.imread(path, _IMREAD_FLAGS)
    if img is None:
        what = "missing" if not Path(path).exists() else "unreadable (not an image, or corrupt)"
        raise DataError(f"{path}: image file {what}" + (f" ({where})" if where else ""))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes (JPEG/PNG/...) -> RGB uint8 (H, W, 3)."""
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_FLAGS) if data else None
    if img is None:
        raise DataError(f"{where}: embedded image cannot be decoded")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def sort_splits(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    known = [s for s in SPLIT_ORDER if s in names]
    return known + sorted(s for s in names if s not in SPLIT_ORDER)


# ---------------------------------------------------------------------------------------------
# The refer source
# ---------------------------------------------------------------------------------------------


def refs_file(root: str | Path, dataset: str, split_by: str) -> Path:
    """``<root>/<dataset>/refs(<split_by>).p`` or ``.json``; DataError listing what exists if neither."""
    folder = Path(root) / dataset
    for ext in (".p", ".json"):
        p = folder / f"refs({split_by}){ext}"
        if p.is_file():
            return p
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found (see docs/DATA.md for the layout)")
    found = sorted(p.name for p in folder.glob("refs(*)*"))
    hint = f"; found {', '.join(found)}" if found else ""
    raise DataError(f"{folder / f'refs({split_by}).p'}: refs file not found{hint}")


class ReferSource:
    """A dataset in the refer layout. ``samples(split)`` lists every (ref, sentence) pair in file order."""

    def __init__(self, root: str | Path, dataset: str, split_by: str, image_dir: str | Path | None = None):
        self.root = Path(root)
        self.dataset = dataset
        self.split_by = split_by
        self.folder = self.root / dataset
        self.refs_path = refs_file(root, dataset, split_by)
        self.instances_path = self.folder / "instances.json"
        if image_dir is not None:
            self.image_dir = Path(image_dir)
        elif (self.folder / "images").is_dir():
            self.image_dir = self.folder / "images"
        else:
            self.image_dir = self.root / "images" / "train2014"
        self.name = f"{dataset} ({split_by})"

        raw_refs = self._load_refs()
        self.images, self.anns, self.categories = self._load_instances()
        self._refs: dict[str, list[dict]] = {}
        for i, ref in enumerate(raw_refs):
            r = self._normalise_ref(ref, i)
            self._refs.setdefault(r["split"], []).append(r)
        self._samples: dict[str, list[Sample]] = {}

    # -- loading ------------------------------------------------------------------------------

    def _load_refs(self) -> list:
        p = self.refs_path
        if p.suffix == ".json":
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{p}: not a readable refs JSON file ({e})") from None
            if isinstance(data, dict) and "refs" in data:
                data = data["refs"]
        else:
            data = safe_load_pickle(p)
        if not isinstance(data, (list, tuple)):
            raise DataError(f"{p}: expected a list of refs, got {type(data).__name__}")
        return list(data)

    def _load_instances(self):
        p = self.instances_path
        if not p.is_file():
            raise DataError(f"{p}: instances.json not found (it ships with the refs file)")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{p}: not a readable COCO instances file ({e})") from None
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DataError(f"{p}: expected a COCO instances file with 'images' and 'annotations'")
        try:
            images = {int(im["id"]): im for im in data["images"]}
            anns = {int(a["id"]): a for a in data["annotations"]}
            cats = {int(c["id"]): c.get("name", str(c["id"])) for c in data.get("categories", [])}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{p}: malformed images/annotations/categories entry ({e!r})") from None
        return images, anns, cats

    def _normalise_ref(self, ref: Any, i: int) -> dict:
        where = f"{self.refs_path}: ref #{i}"
        if not isinstance(ref, dict):
            raise DataError(f"{where}: expected a dict, got {type(ref).__name__}")
        ref = {py2_text(k): v for k, v in ref.items()}
        try:
            ref_id = int(ref["ref_id"])
            where = f"{self.refs_path}: ref_id {ref_id}"
            out = {
                "ref_id": ref_id,
                "ann_id": int(ref["ann_id"]),
                "image_id": int(ref["image_id"]),
                "category_id": int(ref.get("category_id", -1)),
                "split": py2_text(ref["split"]),
            }
            sents = ref["sentences"]
        except KeyError as e:
            raise DataError(f"{where}: missing key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: malformed ref ({e})") from None
        sent_ids = list(ref.get("sent_ids") or [])
        sentences = []
        for j, s in enumerate(sents):
            if isinstance(s, dict):
                s = {py2_text(k): v for k, v in s.items()}
                if s.get("raw") is not None:
                    text = s["raw"]
                elif s.get("sent") is not None:
                    text = s["sent"]
                elif s.get("tokens"):
                    text = " ".join(py2_text(t) for t in s["tokens"])
                else:
                    raise DataError(f"{where}: sentence #{j} has no 'raw', 'sent' or 'tokens'")
                sid = s.get("sent_id", sent_ids[j] if j < len(sent_ids) else j)
                etype = s.get("type")
            else:  # a bare string
                text, sid, etype = s, (sent_ids[j] if j < len(sent_ids) else j), None
            sentences.append((int(sid), py2_text(text), None if etype is None else py2_text(etype)))
        if not sentences:
            raise DataError(f"{where}: ref without sentences")
        out["sentences"] = sentences
        return out

    # -- the source interface -----------------------------------------------------------------

    def splits(self) -> list[str]:
        return sort_splits(self._refs)

    def _check_split(self, split: str) -> None:
        if split not in self._refs:
            raise DataError(f"unknown split '{split}' for {self.name} in {self.refs_path}: "
                            f"valid splits are {', '.join(self.splits())}")

    def refs(self, split: str) -> list[dict]:
        """The refs of ``split`` in file order: dicts with ref_id, ann_id, image_id, category_id, split,
        sentences [(sent_id, text, type)]."""
        self._check_split(split)
        return list(self._refs[split])

    def samples(self, split: str) -> list[Sample]:
        self._check_split(split)
        if split not in self._samples:
            out = []
            for r in self._refs[split]:
                img = self.images.get(r["image_id"])
                if img is None:
                    raise DataError(f"{self.refs_path}: ref_id {r['ref_id']}: image_id {r['image_id']} "
                                    f"is not in {self.instances_path}")
                path = str(self.image_dir / img["file_name"])
                for sid, text, etype in r["sentences"]:
                    out.append(Sample(ref_id=r["ref_id"], sent_id=sid, sentence=text, image_id=r["image_id"],
                                      ann_id=r["ann_id"], image_path=path, height=int(img["height"]),
                                      width=int(img["width"]), category_id=r["category_id"], split=split,
                                      expr_type=etype))
            self._samples[split] = out
        return list(self._samples[split])

    def load_image(self, sample: Sample) -> np.ndarray:
        """RGB uint8 (H, W, 3) at the original size."""
        img = read_image(sample.image_path, f"ref_id {sample.ref_id}, image_id {sample.image_id}")
        if img.shape[:2] != (sample.height, sample.width):
            raise DataError(f"{sample.image_path}: image is {img.shape[0]}x{img.shape[1]} but "
                            f"{self.instances_path.name} says {sample.height}x{sample.width} "
                            f"(ref_id {sample.ref_id})")
        return img

    def load_mask(self, sample: Sample) -> np.ndarray:
        """Bool (H, W): the union of all parts of the referred annotation."""
        ann = self.anns.get(sample.ann_id)
        where = f"{self.instances_path}: ref_id {sample.ref_id}, ann_id {sample.ann_id}"
        if ann is None:
            raise DataError(f"{where}: annotation not found")
        if "segmentation" not in ann:
            raise DataError(f"{where}: annotation has no segmentation")
        return decode_segmentation(ann["segmentation"], sample.height, sample.width, where)

    # -- all objects of an image (auxiliary supervision) -----------------------------------------

    @cached_property
    def category_ids(self) -> list[int]:
        """Sorted category ids of instances.json; class k of ``load_semantic`` is ``category_ids[k-1]``."""
        return sorted(set(self.categories) or {int(a.get("category_id", 0)) for a in self.anns.values()})

    @cached_property
    def _semantic_index(self) -> tuple[dict[int, list[dict]], dict[int, int]]:
        """(image_id -> its annotations, largest first; category id -> class) for ``load_semantic``."""
        by_image: dict[int, list[dict]] = {}
        for a in self.anns.values():
            by_image.setdefault(int(a.get("image_id", -1)), []).append(a)
        for anns in by_image.values():
            anns.sort(key=lambda a: -float(a.get("area", 0.0)))
        return by_image, {c: k + 1 for k, c in enumerate(self.category_ids)}

    def load_semantic(self, sample: Sample) -> np.ndarray:
        """int64 (H, W): 0 background, k = 1 + index of the category in ``category_ids``, for every
        annotated object of the sample's image (not only the referred one). Larger objects are painted
        first, so a small object in front of a large one keeps its pixels."""
        by_image, index = self._semantic_index
        out = np.zeros((sample.height, sample.width), np.int64)
        for a in by_image.get(sample.image_id, []):
            if "segmentation" not in a or int(a.get("category_id", -1)) not in index:
                continue
            where = f"{self.instances_path}: image_id {sample.image_id}, ann_id {a.get('id')}"
            out[decode_segmentation(a["segmentation"], sample.height, sample.width, where)] = index[int(a["category_id"])]
        return out

    def __repr__(self) -> str:
        return f"ReferSource({str(self.root)!r}, {self.dataset!r}, {self.split_by!r})"


def open_source(data_cfg, image_dir: str | Path | None = None):
    """Open ``cfg.data``: a refer-layout folder ``<root>/<name>`` or a Hugging Face export path.

    ``name`` may be refshapes / refcoco / refcoco+ / refcocog / any folder under ``root`` in the refer
    layout, or a path (absolute, relative to the working directory, or under ``root``) to a .parquet /
    .arrow file or an export folder.
    """
    from .hf import HFSource, is_hf_export  # hf imports this module

    name = str(data_cfg.name)
    root = Path(str(data_cfg.root)).expanduser()
    coco_images = root / "images" / "train2014"
    candidates = [Path(name).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(root / name)
    for c in candidates:
        if c.exists() and is_hf_export(c):
            return HFSource(c, image_dir=image_dir or (coco_images if coco_images.is_dir() else None))
    if not root.is_dir():
        raise DataError(f"data root not found: {root} (set data.root or --data-root; see docs/DATA.md)")
    return ReferSource(root, name, str(data_cfg.split_by), image_dir=image_dir)
