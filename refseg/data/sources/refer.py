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
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, UnsafePickleError
from ..io import decode_segmentation, read_image
from ..types import Ref, Sample, Sentence
from .base import RefsBySplit


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
# The refer source
# ---------------------------------------------------------------------------------------------


def refs_file(root: str | Path, dataset: str, split_by: str, prefix: str = "refs") -> Path:
    """``<root>/<dataset>/<prefix>(<split_by>).p`` or ``.json``; DataError listing what exists if neither.

    ``prefix``: ``refs`` (refer layout) or ``grefs`` (gRefCOCO layout).
    """
    folder = Path(root) / dataset
    for ext in (".p", ".json"):
        p = folder / f"{prefix}({split_by}){ext}"
        if p.is_file():
            return p
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found (see docs/DATA.md for the layout)")
    found = sorted(p.name for p in folder.glob("*refs(*)*"))
    hint = f"; found {', '.join(found)}" if found else ""
    raise DataError(f"{folder / f'{prefix}({split_by}).p'}: refs file not found{hint}")


class ReferSource(RefsBySplit):
    """A dataset in the refer layout. ``samples(split)`` lists every (ref, sentence) pair in file order."""

    refs_prefix = "refs"  # the refs file is <refs_prefix>(<split_by>).p / .json

    def __init__(self, root: str | Path, dataset: str, split_by: str, image_dir: str | Path | None = None):
        super().__init__()
        self.root = Path(root)
        self.dataset = dataset
        self.split_by = split_by
        self.folder = self.root / dataset
        self.refs_path = refs_file(root, dataset, split_by, self.refs_prefix)
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
        for i, ref in enumerate(raw_refs):
            r = self._normalise_ref(ref, i)
            self._refs.setdefault(r.split, []).append(r)

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

    def _normalise_ref(self, ref: Any, i: int) -> Ref:
        where = f"{self.refs_path}: ref #{i}"
        if not isinstance(ref, dict):
            raise DataError(f"{where}: expected a dict, got {type(ref).__name__}")
        ref = {py2_text(k): v for k, v in ref.items()}
        try:
            ref_id = int(ref["ref_id"])
            where = f"{self.refs_path}: ref_id {ref_id}"
            ids = dict(ref_id=ref_id, ann_id=int(ref["ann_id"]), image_id=int(ref["image_id"]),
                       category_id=int(ref.get("category_id", -1)), split=py2_text(ref["split"]))
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
            sentences.append(Sentence(int(sid), py2_text(text), None if etype is None else py2_text(etype)))
        if not sentences:
            raise DataError(f"{where}: ref without sentences")
        return Ref(**ids, sentences=tuple(sentences))

    # -- the source interface -----------------------------------------------------------------

    def _location(self) -> str:
        return f" in {self.refs_path}"

    def _samples_of(self, ref: Ref) -> list[Sample]:
        img = self.images.get(ref.image_id)
        if img is None:
            raise DataError(f"{self.refs_path}: ref_id {ref.ref_id}: image_id {ref.image_id} "
                            f"is not in {self.instances_path}")
        return ref.samples(str(self.image_dir / img["file_name"]), int(img["height"]), int(img["width"]))

    def load_image(self, sample: Sample) -> np.ndarray:
        """RGB uint8 (H, W, 3) at the original size."""
        img = read_image(sample.image_path, orientation="stored",
                         where=f"ref_id {sample.ref_id}, image_id {sample.image_id}")
        if img.shape[:2] != (sample.height, sample.width):
            raise DataError(f"{sample.image_path}: image is {img.shape[0]}x{img.shape[1]} but "
                            f"{self.instances_path.name} says {sample.height}x{sample.width} "
                            f"(ref_id {sample.ref_id})")
        return img

    def segmentation(self, sample: Sample) -> Any:
        """The referred annotation's COCO segmentation (polygons or RLE) as stored."""
        ann = self.anns.get(sample.ann_id)
        if ann is None or "segmentation" not in ann:
            what = "annotation not found" if ann is None else "annotation has no segmentation"
            raise DataError(f"{self.instances_path}: ref_id {sample.ref_id}, ann_id {sample.ann_id}: {what}")
        return ann["segmentation"]

    def load_mask(self, sample: Sample) -> np.ndarray:
        """Bool (H, W): the union of all parts of the referred annotation."""
        where = f"{self.instances_path}: ref_id {sample.ref_id}, ann_id {sample.ann_id}"
        return decode_segmentation(self.segmentation(sample), sample.height, sample.width, where)

    def __repr__(self) -> str:
        return f"ReferSource({str(self.root)!r}, {self.dataset!r}, {self.split_by!r})"
