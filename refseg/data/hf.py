"""Hugging Face ``datasets`` exports of RefCOCO-style data, read from LOCAL files.

``HFSource(path)`` accepts a ``.parquet`` or ``.arrow`` file, a folder of them (e.g. a Hub snapshot
with ``data/<split>-00000-of-00004.parquet``), or a ``save_to_disk`` folder (``dataset_dict.json`` or
``state.json``). It exposes the same interface as ``ReferSource``: ``splits()``, ``samples(split)``,
``refs(split)``, ``load_image(sample)``, ``load_mask(sample)``.

The schema is detected from the columns:

``lmms``        one row per object: ``image`` (embedded), ``answer`` (list of expressions),
                ``segmentation`` (one flat polygon), ``bbox``, ``question_id``, ``file_name``
                (lmms-lab/RefCOCO, RefCOCO+, RefCOCOg).
``benchmark``   one row per image: ``ref_list`` = [{ann_info: COCO annotation, ref_info: refer ref}],
                ``image_info`` (COCO image entry), optionally ``image`` (jxu124/refcoco-benchmark).
``per_image``   one row per image: ``image`` + ``samples`` = [{id, sentences, mask: RLE}]
                (moondream/refcoco-m).
``refer_rows``  one row per ref in the refer layout: ``ref_id``, ``ann_id``, ``sentences``, with
                ``raw_anns`` (JSON) or ``segmentation``, images embedded or by ``image_path``/``file_name``
                under ``image_dir`` (jxu124/refcoco).
``dense``       one row per object with a dense ``mask`` (image or 2-D array column) and a text column
                (``sentence(s)``, ``text``, ``expression(s)``, ``caption(s)``, ``answer``).

Splits come from a ``split`` column when there is one, else from the file names
(``<split>-00000-of-00001.parquet``, ``<split>.parquet``) or the ``save_to_disk`` split folders.
Parquet files are read into memory (shared with forked DataLoader workers); ``.arrow`` files are
memory-mapped.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .refer import DataError, Sample, decode_image_bytes, decode_segmentation, py2_text, read_image, sort_splits

TEXT_COLUMNS = ("sentences", "sentence", "expressions", "expression", "referring_expressions",
                "referring_expression", "texts", "text", "captions", "caption", "answer")
FORMATS = ("lmms", "benchmark", "per_image", "refer_rows", "dense")


def is_hf_export(path: str | Path) -> bool:
    """True for a .parquet/.arrow file or a folder holding a datasets export (and no refs file)."""
    p = Path(path)
    if p.is_file():
        return p.suffix in (".parquet", ".arrow")
    if not p.is_dir():
        return False
    if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        return True
    if any(p.glob("refs(*)*")):
        return False
    return any(p.glob("*.parquet")) or any(p.glob("*/*.parquet")) or any(p.glob("*.arrow"))


# ---------------------------------------------------------------------------------------------
# Reading tables
# ---------------------------------------------------------------------------------------------


def _read_table(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        source = pa.memory_map(str(path), "r")
        try:
            return pa.ipc.open_stream(source).read_all()  # what datasets writes
        except pa.ArrowInvalid:
            return pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file ({e})") from None


_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}")


def _split_from_name(path: Path) -> str:
    m = _SHARD.match(path.name)
    return m.group("split") if m else path.stem


def _discover(path: Path) -> dict[str, list[tuple[str, Any]]]:
    """{split: [(label, pyarrow.Table), ...]} from a file or folder."""
    if not path.exists():
        raise DataError(f"{path}: Hugging Face export not found")
    out: dict[str, list] = {}
    if path.is_file():
        if path.suffix not in (".parquet", ".arrow"):
            raise DataError(f"{path}: expected a .parquet or .arrow file")
        out[_split_from_name(path)] = [(str(path), _read_table(path))]
        return out
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path / 'dataset_dict.json'}: unreadable ({e})") from None
        for s in splits:
            out[s] = _saved_dataset(path / s)
        return out
    if (path / "state.json").is_file():
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{path / 'state.json'}: unreadable ({e})") from None
        out[state.get("_split") or path.name] = _saved_dataset(path)
        return out
    files = sorted(path.rglob("*.parquet")) or sorted(path.rglob("*.arrow"))
    if not files:
        raise DataError(f"{path}: no .parquet or .arrow files (and no save_to_disk metadata) found")
    for f in files:
        out.setdefault(_split_from_name(f), []).append((str(f), _read_table(f)))
    return out


def _saved_dataset(folder: Path) -> list:
    try:
        state = json.loads((folder / "state.json").read_text())
        names = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder / 'state.json'}: not a datasets save_to_disk folder ({e})") from None
    return [(str(folder / n), _read_table(folder / n)) for n in names]


# ---------------------------------------------------------------------------------------------
# Cell helpers
# ---------------------------------------------------------------------------------------------


def _cell(table, column: str, row: int) -> Any:
    return table.column(column)[row].as_py()


def _image_bytes(value: Any, where: str, base_dirs: list[Path]) -> tuple[Optional[bytes], Optional[Path]]:
    """An image cell (datasets Image struct {bytes, path}, raw bytes or a path) -> (bytes, path)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"], None
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, str) and value:
        p = Path(value)
        if not p.is_absolute():
            for d in base_dirs:
                if (d / p).exists():
                    return None, d / p
                if (d / p.name).exists():
                    return None, d / p.name
            p = base_dirs[0] / p if base_dirs else p
        return None, p
    raise DataError(f"{where}: no image (neither embedded bytes nor a path)")


def _image_size(data: bytes) -> tuple[int, int]:
    """(height, width) from an encoded image's header without decoding the pixels."""
    from PIL import Image

    for chunk in (data[:262144], data):
        try:
            with Image.open(io.BytesIO(chunk)) as im:
                w, h = im.size
            return int(h), int(w)
        except Exception:  # noqa: BLE001 - truncated header: retry with the whole file
            continue
    raise ValueError("unrecognised image header")


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        m = re.search(r"(\d+)(?=\D*$)", str(value)) if value is not None else None
        return int(m.group(1)) if m else default


def _texts(value: Any) -> list[tuple[Optional[int], str, Optional[str]]]:
    """A text cell -> [(sent_id or None, text, type or None)]."""
    if value is None:
        return []
    if isinstance(value, str):
        return [(None, value, None)]
    out = []
    for v in value:
        if isinstance(v, dict):
            text = v.get("raw") or v.get("sent") or v.get("text") or " ".join(v.get("tokens") or [])
            sid = v.get("sent_id")
            out.append((None if sid is None else int(sid), py2_text(text), v.get("type")))
        elif v is not None:
            out.append((None, py2_text(v), None))
    return out


# ---------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------


class HFSource:
    """A Hugging Face export as a data source (see the module docstring for the schemas)."""

    def __init__(self, path: str | Path, image_dir: str | Path | None = None):
        self.path = Path(path).expanduser()
        self.name = str(self.path)
        tables = _discover(self.path)
        self._base_dirs = [d for d in (Path(image_dir) if image_dir else None, self.path if self.path.is_dir()
                                       else self.path.parent) if d is not None]
        first = next(iter(tables.values()))[0]
        self.columns = list(first[1].column_names)
        self.format = self._detect(self.columns, first[0])
        self._tables: list[tuple[str, Any]] = []
        self._refs: dict[str, list[dict]] = {}
        self._by_key: dict[tuple[str, int], dict] = {}
        for split, items in tables.items():
            for label, table in items:
                if list(table.column_names) != self.columns and set(self.columns) - set(table.column_names):
                    raise DataError(f"{label}: columns {table.column_names} differ from {self.columns}")
                t = len(self._tables)
                self._tables.append((label, table))
                self._ingest(split, t, label, table)
        for split, refs in self._refs.items():
            self._number(split, refs)
        self._samples: dict[str, list[Sample]] = {}

    # -- schema detection ---------------------------------------------------------------------

    @staticmethod
    def _detect(cols: list[str], label: str) -> str:
        c = set(cols)
        if "ref_list" in c:
            return "benchmark"
        if "samples" in c and "image" in c:
            return "per_image"
        if "mask" in c and any(t in c for t in TEXT_COLUMNS):
            return "dense"
        if {"answer", "segmentation"} <= c and "image" in c:
            return "lmms"
        if "sentences" in c and ("raw_anns" in c or "segmentation" in c):
            return "refer_rows"
        raise DataError(
            f"{label}: unknown Hugging Face schema with columns {sorted(c)}; supported: lmms-lab/RefCOCO "
            "(image, answer, segmentation), jxu124/refcoco-benchmark (ref_list, image_info), "
            "per-image (image, samples), refer rows (ref_id, sentences, raw_anns) or dense masks "
            f"(mask + one of {', '.join(TEXT_COLUMNS)})")

    # -- building refs ------------------------------------------------------------------------

    def _add(self, split: str, ref: dict) -> None:
        self._refs.setdefault(split, []).append(ref)

    def _ingest(self, split: str, t: int, label: str, table) -> None:
        n = table.num_rows
        fmt = self.format
        has_split_col = "split" in table.column_names and fmt != "benchmark"
        splits = table.column("split").to_pylist() if has_split_col else [split] * n
        splits = [str(s) if s not in (None, "") else split for s in splits]

        if fmt == "benchmark":
            ref_lists = table.column("ref_list").to_pylist()
            infos = table.column("image_info").to_pylist() if "image_info" in table.column_names else [None] * n
            for row in range(n):
                info = infos[row] or {}
                for k, item in enumerate(ref_lists[row] or []):
                    ann = (item or {}).get("ann_info") or {}
                    ref = (item or {}).get("ref_info") or {}
                    where = f"{label}: row {row}, ref_list[{k}]"
                    self._add(splits[row], {
                        "ref_id": ref.get("ref_id"), "ann_id": ref.get("ann_id", ann.get("id")),
                        "image_id": ref.get("image_id", info.get("id")),
                        "category_id": ref.get("category_id", ann.get("category_id", -1)),
                        "sentences": _texts(ref.get("sentences")), "sent_ids": ref.get("sent_ids"),
                        "segm": ann.get("segmentation"), "size": (info.get("height"), info.get("width")),
                        "t": t, "row": row, "file_name": info.get("file_name") or ref.get("file_name"),
                        "where": where})
        elif fmt == "per_image":
            samples = table.column("samples").to_pylist()
            image_ids = table.column("image_id").to_pylist() if "image_id" in table.column_names else [None] * n
            for row in range(n):
                for k, s in enumerate(samples[row] or []):
                    mask = s.get("mask") or s.get("segmentation")
                    size = tuple(mask.get("size")) if isinstance(mask, dict) and mask.get("size") else (None, None)
                    self._add(splits[row], {
                        "ref_id": s.get("ref_id", s.get("id")), "ann_id": s.get("ann_id", s.get("id")),
                        "image_id": s.get("image_id", image_ids[row]), "category_id": s.get("category_id", -1),
                        "sentences": _texts(s.get("sentences") or s.get("sentence") or s.get("text")),
                        "segm": mask, "size": size, "t": t, "row": row,
                        "where": f"{label}: row {row}, samples[{k}]"})
        else:
            cols = table.column_names
            get = lambda name: table.column(name).to_pylist() if name in cols else [None] * n  # noqa: E731
            ref_ids, ann_ids, image_ids = get("ref_id"), get("ann_id"), get("image_id")
            qids, cats, files = get("question_id"), get("category_id"), get("file_name")
            heights, widths = get("height"), get("width")
            if fmt == "lmms":
                texts, segms = get("answer"), get("segmentation")
            elif fmt == "refer_rows":
                texts = get("sentences")
                segms = get("segmentation") if "segmentation" in cols else get("raw_anns")
                infos = get("raw_image_info")
                paths = get("image_path")
            else:  # dense
                tcol = next(c for c in TEXT_COLUMNS if c in cols)
                texts, segms = get(tcol), [None] * n
            for row in range(n):
                size = (heights[row], widths[row])
                segm = segms[row]
                file_name = files[row]
                if fmt == "refer_rows":
                    if isinstance(segm, str):  # raw_anns: the COCO annotation as JSON
                        try:
                            segm = json.loads(segm)
                        except ValueError:
                            raise DataError(f"{label}: row {row}: raw_anns is not JSON") from None
                        if isinstance(segm, list) and segm and isinstance(segm[0], dict):
                            segm = segm[0]
                        segm = segm.get("segmentation") if isinstance(segm, dict) else segm
                    if isinstance(infos[row], str):
                        try:
                            info = json.loads(infos[row])
                            size = (info.get("height"), info.get("width"))
                            file_name = file_name or info.get("file_name")
                        except (ValueError, AttributeError):
                            pass
                    file_name = paths[row] or file_name
                qid = qids[row]
                self._add(splits[row], {
                    "ref_id": ref_ids[row], "ann_id": ann_ids[row] if ann_ids[row] is not None else _int(qid, -1),
                    "image_id": image_ids[row] if image_ids[row] is not None else _int(file_name, -1),
                    "category_id": cats[row] if cats[row] is not None else -1,
                    "sentences": _texts(texts[row]), "segm": segm, "size": size, "t": t, "row": row,
                    "file_name": file_name, "where": f"{label}: row {row}"})

    def _number(self, split: str, refs: list[dict]) -> None:
        """Fill missing/duplicate ids with running numbers; index refs by (split, ref_id)."""
        ids = [r["ref_id"] for r in refs]
        usable = all(i is not None for i in ids) and len(set(ids)) == len(ids)
        next_sent = 0
        for k, r in enumerate(refs):
            r["ref_id"] = int(r["ref_id"]) if usable else k
            r["ann_id"] = _int(r.get("ann_id"), r["ref_id"])
            if r["ann_id"] < 0:
                r["ann_id"] = r["ref_id"]
            r["image_id"] = _int(r.get("image_id"), -1)
            r["category_id"] = _int(r.get("category_id"), -1)
            sent_ids = list(r.pop("sent_ids", None) or [])
            sents = []
            for j, (sid, text, etype) in enumerate(r["sentences"]):
                if sid is None:
                    sid = sent_ids[j] if j < len(sent_ids) else None
                if sid is None:
                    sid = next_sent
                next_sent = max(next_sent, int(sid)) + 1
                sents.append((int(sid), text, None if etype is None else str(etype)))
            if not sents:
                raise DataError(f"{r['where']}: object without expressions")
            r["sentences"] = sents
            r["split"] = split
            self._by_key[(split, r["ref_id"])] = r

    # -- images -------------------------------------------------------------------------------

    def _image_value(self, ref: dict) -> tuple[Optional[bytes], Optional[Path]]:
        label, table = self._tables[ref["t"]]
        if "image" in table.column_names:
            value = _cell(table, "image", ref["row"])
            if value is not None:
                return _image_bytes(value, ref["where"], self._base_dirs)
        if ref.get("file_name"):
            return _image_bytes(str(ref["file_name"]), ref["where"], self._base_dirs)
        raise DataError(f"{ref['where']}: no image column and no file name")

    def _embedded(self, ref: dict) -> bool:
        """Whether the ref's image is stored in the table (not a path), without copying it."""
        import pyarrow as pa

        table = self._tables[ref["t"]][1]
        if "image" not in table.column_names:
            return False
        cell = table.column("image")[ref["row"]]
        if not cell.is_valid:
            return False
        if isinstance(cell, pa.StructScalar):
            return "bytes" in cell.type.names and cell["bytes"].is_valid
        return pa.types.is_binary(cell.type) or pa.types.is_large_binary(cell.type)

    def _size(self, ref: dict) -> tuple[int, int]:
        h, w = ref.get("size") or (None, None)
        if h and w:
            return int(h), int(w)
        data, path = self._image_value(ref)
        try:
            if data is None:
                from PIL import Image

                with Image.open(path) as im:
                    w, h = im.size
                return int(h), int(w)
            return _image_size(data)
        except FileNotFoundError:
            raise DataError(f"{path}: image file missing ({ref['where']})") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many types on bad data
            raise DataError(f"{ref['where']}: cannot read the image header ({e})") from None

    # -- the source interface -----------------------------------------------------------------

    def splits(self) -> list[str]:
        return sort_splits(self._refs)

    def _check_split(self, split: str) -> None:
        if split not in self._refs:
            raise DataError(f"unknown split '{split}' for {self.name}: valid splits are {', '.join(self.splits())}")

    def refs(self, split: str) -> list[dict]:
        self._check_split(split)
        keys = ("ref_id", "ann_id", "image_id", "category_id", "split", "sentences")
        return [{k: r[k] for k in keys} for r in self._refs[split]]

    def samples(self, split: str) -> list[Sample]:
        self._check_split(split)
        if split not in self._samples:
            out = []
            for r in self._refs[split]:
                h, w = self._size(r)
                r["size"] = (h, w)
                label = self._tables[r["t"]][0]
                if self._embedded(r):
                    path = f"{label}#row={r['row']}"
                else:
                    path = str(self._image_value(r)[1])
                for sid, text, etype in r["sentences"]:
                    out.append(Sample(ref_id=r["ref_id"], sent_id=sid, sentence=text, image_id=r["image_id"],
                                      ann_id=r["ann_id"], image_path=path, height=h, width=w,
                                      category_id=r["category_id"], split=split, expr_type=etype))
            self._samples[split] = out
        return list(self._samples[split])

    def _ref(self, sample: Sample) -> dict:
        r = self._by_key.get((sample.split, sample.ref_id))
        if r is None:
            raise DataError(f"{self.name}: no ref_id {sample.ref_id} in split '{sample.split}'")
        return r

    def load_image(self, sample: Sample) -> np.ndarray:
        r = self._ref(sample)
        data, path = self._image_value(r)
        where = f"{r['where']}, ref_id {r['ref_id']}"
        img = decode_image_bytes(data, where) if data is not None else read_image(path, where)
        if img.shape[:2] != (sample.height, sample.width):
            raise DataError(f"{where}: image is {img.shape[0]}x{img.shape[1]}, expected "
                            f"{sample.height}x{sample.width}")
        return img

    def load_mask(self, sample: Sample) -> np.ndarray:
        r = self._ref(sample)
        where = f"{r['where']}, ref_id {r['ref_id']}, ann_id {r['ann_id']}"
        if self.format != "dense":
            if r["segm"] is None:
                raise DataError(f"{where}: no segmentation")
            return decode_segmentation(r["segm"], sample.height, sample.width, where)
        label, table = self._tables[r["t"]]
        value = _cell(table, "mask", r["row"])
        if isinstance(value, dict) and "counts" in value:
            return decode_segmentation(value, sample.height, sample.width, where)
        if isinstance(value, dict) or isinstance(value, (bytes, bytearray)):
            import cv2

            data, path = _image_bytes(value, where, self._base_dirs)
            if data is None:
                data = Path(path).read_bytes() if Path(path).is_file() else b""
            m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
            if m is None:
                raise DataError(f"{where}: mask image cannot be decoded")
            m = m.any(axis=2) if m.ndim == 3 else m > 0
        elif value is None:
            raise DataError(f"{where}: no mask")
        else:
            m = np.asarray(value)
            if m.ndim != 2:
                raise DataError(f"{where}: mask array has shape {m.shape}, expected (H, W)")
            m = m > 0
        if m.shape != (sample.height, sample.width):
            raise DataError(f"{where}: mask is {m.shape[0]}x{m.shape[1]} but the image is "
                            f"{sample.height}x{sample.width}")
        if not m.any():
            raise DataError(f"{where}: the object mask is empty")
        return m

    def __repr__(self) -> str:
        return f"HFSource({self.name!r}, format={self.format!r})"
