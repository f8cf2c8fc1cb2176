"""Hugging Face ``datasets`` exports of RefCOCO-style data, read from LOCAL files.

``HFSource(path)`` accepts a ``.parquet`` or ``.arrow`` file, a folder of them (e.g. a Hub snapshot
with ``data/<split>-00000-of-00004.parquet``), or a ``save_to_disk`` folder (``dataset_dict.json`` or
``state.json``). It is a ``refseg.data.types.Source``: ``splits()``, ``samples(split)``,
``refs(split)``, ``load_image(sample)``, ``load_mask(sample)``.

The schema is detected from the columns (``SCHEMAS``: one parser per schema, tried in this order);
each parser turns rows into ``Record``s, one per referred object:

``benchmark``   one row per image: ``ref_list`` = [{ann_info: COCO annotation, ref_info: refer ref}],
                ``image_info`` (COCO image entry), optionally ``image`` (jxu124/refcoco-benchmark).
``per_image``   one row per image: ``image`` + ``samples`` = [{id, sentences, mask: RLE}]
                (moondream/refcoco-m).
``dense``       one row per object with a dense ``mask`` (image or 2-D array column) and a text column
                (``sentence(s)``, ``text``, ``expression(s)``, ``caption(s)``, ``answer``).
``lmms``        one row per object: ``image`` (embedded), ``answer`` (list of expressions),
                ``segmentation`` (one flat polygon), ``bbox``, ``question_id``, ``file_name``
                (lmms-lab/RefCOCO, RefCOCO+, RefCOCOg).
``refer_rows``  one row per ref in the refer layout: ``ref_id``, ``ann_id``, ``sentences``, with
                ``raw_anns`` (JSON) or ``segmentation``, images embedded or by ``image_path``/``file_name``
                under ``image_dir`` (jxu124/refcoco).

Splits come from a ``split`` column when there is one (benchmark: not used), else from the file names
(``<split>-00000-of-00001.parquet``, ``<split>.parquet``) or the ``save_to_disk`` split folders.
Parquet files are read into memory (shared with forked DataLoader workers); ``.arrow`` files are
memory-mapped.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ...errors import DataError
from ..io import check_mask, decode_image_bytes, decode_mask_image, decode_segmentation, read_image, read_image_size
from ..types import Ref, Sample, Sentence
from .base import RefsBySplit
from .refer import py2_text

TEXT_COLUMNS = ("sentences", "sentence", "expressions", "expression", "referring_expressions",
                "referring_expression", "texts", "text", "captions", "caption", "answer")
RawSentence = tuple[Optional[int], str, Optional[str]]  # (sent_id or None, text, type or None) as read


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


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        m = re.search(r"(\d+)(?=\D*$)", str(value)) if value is not None else None
        return int(m.group(1)) if m else default


def _texts(value: Any) -> list[RawSentence]:
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
# Records and the schema parsers
# ---------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One referred object as read from an export, before ``HFSource`` numbers missing ids.

    Ids are as stored (int, str or None); ``segm`` is a COCO segmentation (None for the dense schema,
    whose mask is read from the row's ``mask`` cell); ``size`` is (height, width) when the export
    states it, else (None, None) until the image header is read.
    """

    where: str  # "<file>: row <n>[, ref_list[<k>]]": names the object in error messages
    table: int  # index of the table (file) in ``HFSource.tables``
    row: int
    split: str
    sentences: list[RawSentence]
    ref_id: Any = None
    ann_id: Any = None
    image_id: Any = None
    category_id: Any = -1
    sent_ids: list = field(default_factory=list)
    segm: Any = None
    size: tuple = (None, None)
    file_name: Optional[str] = None


Parser = Callable[[Any, str, int, list[str]], Iterator[Record]]  # (table, label, table index, row splits)


@dataclass(frozen=True)
class Schema:
    """One entry of ``SCHEMAS``: how to recognise an export's columns and turn its rows into records."""

    name: str
    description: str  # for the unknown-schema message
    matches: Callable[[set[str]], bool]  # on the column names
    parse: Parser
    split_column: bool = True  # rows take their split from a ``split`` column when there is one


def _column(table, name: str) -> list:
    """A column as a Python list, or Nones when the table lacks it."""
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _object_rows(table, label: str, t: int, splits: list[str], texts: list, segms: list,
                 sizes: Optional[list] = None, files: Optional[list] = None) -> Iterator[Record]:
    """Records of the one-row-per-object schemas: ids from the ``ref_id`` / ``ann_id`` (else the number
    in ``question_id``) / ``image_id`` (else the number in the file name) / ``category_id`` columns."""
    ref_ids, ann_ids, image_ids = _column(table, "ref_id"), _column(table, "ann_id"), _column(table, "image_id")
    qids, cats = _column(table, "question_id"), _column(table, "category_id")
    sizes = sizes or list(zip(_column(table, "height"), _column(table, "width")))
    files = files or _column(table, "file_name")
    for row in range(table.num_rows):
        yield Record(
            where=f"{label}: row {row}", table=t, row=row, split=splits[row], sentences=_texts(texts[row]),
            ref_id=ref_ids[row], ann_id=ann_ids[row] if ann_ids[row] is not None else _int(qids[row], -1),
            image_id=image_ids[row] if image_ids[row] is not None else _int(files[row], -1),
            category_id=cats[row] if cats[row] is not None else -1, segm=segms[row], size=sizes[row],
            file_name=files[row])


def parse_lmms(table, label: str, t: int, splits: list[str]) -> Iterator[Record]:
    """lmms-lab/RefCOCO: one row per object; ``answer`` lists the expressions, ``segmentation`` is one
    flat polygon."""
    return _object_rows(table, label, t, splits, _column(table, "answer"), _column(table, "segmentation"))


def parse_benchmark(table, label: str, t: int, splits: list[str]) -> Iterator[Record]:
    """jxu124/refcoco-benchmark: one row per image; ``ref_list`` = [{ann_info, ref_info}]."""
    ref_lists = _column(table, "ref_list")
    infos = _column(table, "image_info")
    for row in range(table.num_rows):
        info = infos[row] or {}
        for k, item in enumerate(ref_lists[row] or []):
            ann = (item or {}).get("ann_info") or {}
            ref = (item or {}).get("ref_info") or {}
            yield Record(
                where=f"{label}: row {row}, ref_list[{k}]", table=t, row=row, split=splits[row],
                sentences=_texts(ref.get("sentences")), ref_id=ref.get("ref_id"),
                ann_id=ref.get("ann_id", ann.get("id")), image_id=ref.get("image_id", info.get("id")),
                category_id=ref.get("category_id", ann.get("category_id", -1)),
                sent_ids=list(ref.get("sent_ids") or []), segm=ann.get("segmentation"),
                size=(info.get("height"), info.get("width")),
                file_name=info.get("file_name") or ref.get("file_name"))


def parse_per_image(table, label: str, t: int, splits: list[str]) -> Iterator[Record]:
    """moondream/refcoco-m: one row per image; ``samples`` = [{id, sentences, mask: RLE}]."""
    samples = _column(table, "samples")
    image_ids = _column(table, "image_id")
    for row in range(table.num_rows):
        for k, s in enumerate(samples[row] or []):
            mask = s.get("mask") or s.get("segmentation")
            size = tuple(mask.get("size")) if isinstance(mask, dict) and mask.get("size") else (None, None)
            yield Record(
                where=f"{label}: row {row}, samples[{k}]", table=t, row=row, split=splits[row],
                sentences=_texts(s.get("sentences") or s.get("sentence") or s.get("text")),
                ref_id=s.get("ref_id", s.get("id")), ann_id=s.get("ann_id", s.get("id")),
                image_id=s.get("image_id", image_ids[row]), category_id=s.get("category_id", -1),
                segm=mask, size=size)


def parse_refer_rows(table, label: str, t: int, splits: list[str]) -> Iterator[Record]:
    """jxu124/refcoco: one row per ref; the COCO annotation in ``segmentation`` or ``raw_anns`` (JSON),
    the image size and file in ``raw_image_info`` (JSON), ``image_path`` under the image folder."""
    segms = _column(table, "segmentation") if "segmentation" in table.column_names else _column(table, "raw_anns")
    infos, paths = _column(table, "raw_image_info"), _column(table, "image_path")
    sizes = list(zip(_column(table, "height"), _column(table, "width")))
    files = _column(table, "file_name")
    for row in range(table.num_rows):
        segm = segms[row]
        if isinstance(segm, str):  # raw_anns: the COCO annotation as JSON
            try:
                segm = json.loads(segm)
            except ValueError:
                raise DataError(f"{label}: row {row}: raw_anns is not JSON") from None
            if isinstance(segm, list) and segm and isinstance(segm[0], dict):
                segm = segm[0]
            segms[row] = segm.get("segmentation") if isinstance(segm, dict) else segm
        if isinstance(infos[row], str):
            try:
                info = json.loads(infos[row])
                sizes[row] = (info.get("height"), info.get("width"))
                files[row] = files[row] or info.get("file_name")
            except (ValueError, AttributeError):
                pass
        files[row] = paths[row] or files[row]
    return _object_rows(table, label, t, splits, _column(table, "sentences"), segms, sizes, files)


def parse_dense(table, label: str, t: int, splits: list[str]) -> Iterator[Record]:
    """One row per object with a dense ``mask`` (an image or a 2-D array) and a text column."""
    text_column = next(c for c in TEXT_COLUMNS if c in table.column_names)
    return _object_rows(table, label, t, splits, _column(table, text_column), [None] * table.num_rows)


SCHEMAS: dict[str, Schema] = {s.name: s for s in (  # detection order
    Schema("benchmark", "jxu124/refcoco-benchmark (ref_list, image_info)", lambda c: "ref_list" in c,
           parse_benchmark, split_column=False),
    Schema("per_image", "per-image (image, samples)", lambda c: {"samples", "image"} <= c, parse_per_image),
    Schema("dense", f"dense masks (mask + one of {', '.join(TEXT_COLUMNS)})",
           lambda c: "mask" in c and any(t in c for t in TEXT_COLUMNS), parse_dense),
    Schema("lmms", "lmms-lab/RefCOCO (image, answer, segmentation)",
           lambda c: {"answer", "segmentation", "image"} <= c, parse_lmms),
    Schema("refer_rows", "refer rows (ref_id, sentences, raw_anns)",
           lambda c: "sentences" in c and ("raw_anns" in c or "segmentation" in c), parse_refer_rows),
)}
FORMATS = tuple(SCHEMAS)


def detect_schema(columns: list[str], label: str) -> Schema:
    """The first schema of ``SCHEMAS`` that matches the column names; DataError listing them if none."""
    c = set(columns)
    for schema in SCHEMAS.values():
        if schema.matches(c):
            return schema
    raise DataError(f"{label}: unknown Hugging Face schema with columns {sorted(c)}; supported: "
                    + ", ".join(s.description for s in SCHEMAS.values()))


# ---------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------


class HFSource(RefsBySplit):
    """A Hugging Face export as a data source (see the module docstring for the schemas)."""

    def __init__(self, path: str | Path, image_dir: str | Path | None = None):
        super().__init__()
        self.path = Path(path).expanduser()
        self.name = str(self.path)
        tables = _discover(self.path)
        self._base_dirs = [d for d in (Path(image_dir) if image_dir else None, self.path if self.path.is_dir()
                                       else self.path.parent) if d is not None]
        first = next(iter(tables.values()))[0]
        self.columns = list(first[1].column_names)
        self.schema = detect_schema(self.columns, first[0])
        self.format = self.schema.name
        self.tables: list[tuple[str, Any]] = []  # (file label, pyarrow.Table)
        records: dict[str, list[Record]] = {}
        for split, items in tables.items():
            for label, table in items:
                if list(table.column_names) != self.columns and set(self.columns) - set(table.column_names):
                    raise DataError(f"{label}: columns {table.column_names} differ from {self.columns}")
                self.tables.append((label, table))
                for r in self.schema.parse(table, label, len(self.tables) - 1, self._row_splits(table, split)):
                    records.setdefault(r.split, []).append(r)
        self._records: dict[tuple[str, int], Record] = {}  # (split, ref_id) -> its record
        for split, recs in records.items():
            self._refs[split] = self._number(split, recs)

    def _row_splits(self, table, split: str) -> list[str]:
        """Each row's split: its ``split`` cell when the schema reads one, else the file's split."""
        if not (self.schema.split_column and "split" in table.column_names):
            return [split] * table.num_rows
        return [str(s) if s not in (None, "") else split for s in table.column("split").to_pylist()]

    def _number(self, split: str, records: list[Record]) -> list[Ref]:
        """Refs with int ids: stored ref ids when all are present and distinct, else running numbers;
        sentences without an id are numbered after the largest id so far."""
        ids = [r.ref_id for r in records]
        usable = all(i is not None for i in ids) and len(set(ids)) == len(ids)
        next_sent = 0
        refs = []
        for k, r in enumerate(records):
            ref_id = int(r.ref_id) if usable else k
            ann_id = _int(r.ann_id, ref_id)
            sents = []
            for j, (sid, text, etype) in enumerate(r.sentences):
                if sid is None:
                    sid = r.sent_ids[j] if j < len(r.sent_ids) else None
                if sid is None:
                    sid = next_sent
                next_sent = max(next_sent, int(sid)) + 1
                sents.append(Sentence(int(sid), text, None if etype is None else str(etype)))
            if not sents:
                raise DataError(f"{r.where}: object without expressions")
            refs.append(Ref(ref_id=ref_id, ann_id=ann_id if ann_id >= 0 else ref_id, image_id=_int(r.image_id, -1),
                            category_id=_int(r.category_id, -1), split=split, sentences=tuple(sents)))
            self._records[(split, ref_id)] = r
        return refs

    # -- images -------------------------------------------------------------------------------

    def _image_value(self, r: Record) -> tuple[Optional[bytes], Optional[Path]]:
        label, table = self.tables[r.table]
        if "image" in table.column_names:
            value = _cell(table, "image", r.row)
            if value is not None:
                return _image_bytes(value, r.where, self._base_dirs)
        if r.file_name:
            return _image_bytes(str(r.file_name), r.where, self._base_dirs)
        raise DataError(f"{r.where}: no image column and no file name")

    def _embedded(self, r: Record) -> bool:
        """Whether the record's image is stored in the table (not a path), without copying it."""
        import pyarrow as pa

        table = self.tables[r.table][1]
        if "image" not in table.column_names:
            return False
        cell = table.column("image")[r.row]
        if not cell.is_valid:
            return False
        if isinstance(cell, pa.StructScalar):
            return "bytes" in cell.type.names and cell["bytes"].is_valid
        return pa.types.is_binary(cell.type) or pa.types.is_large_binary(cell.type)

    def _size(self, r: Record) -> tuple[int, int]:
        h, w = r.size or (None, None)
        if h and w:
            return int(h), int(w)
        data, path = self._image_value(r)
        try:
            return read_image_size(path if data is None else data)
        except FileNotFoundError:
            raise DataError(f"{path}: image file missing ({r.where})") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many types on bad data
            raise DataError(f"{r.where}: cannot read the image header ({e})") from None

    # -- the source interface -----------------------------------------------------------------

    def _samples_of(self, ref: Ref) -> list[Sample]:
        r = self._records[(ref.split, ref.ref_id)]
        h, w = self._size(r)
        r.size = (h, w)
        path = f"{self.tables[r.table][0]}#row={r.row}" if self._embedded(r) else str(self._image_value(r)[1])
        return ref.samples(path, h, w)

    def _record(self, sample: Sample) -> Record:
        r = self._records.get((sample.split, sample.ref_id))
        if r is None:
            raise DataError(f"{self.name}: no ref_id {sample.ref_id} in split '{sample.split}'")
        return r

    def load_image(self, sample: Sample) -> np.ndarray:
        r = self._record(sample)
        data, path = self._image_value(r)
        where = f"{r.where}, ref_id {sample.ref_id}"
        img = decode_image_bytes(data, where) if data is not None else read_image(path, "stored", where)
        if img.shape[:2] != (sample.height, sample.width):
            raise DataError(f"{where}: image is {img.shape[0]}x{img.shape[1]}, expected "
                            f"{sample.height}x{sample.width}")
        return img

    def load_mask(self, sample: Sample) -> np.ndarray:
        r = self._record(sample)
        where = f"{r.where}, ref_id {sample.ref_id}, ann_id {sample.ann_id}"
        if self.format != "dense":
            if r.segm is None:
                raise DataError(f"{where}: no segmentation")
            return decode_segmentation(r.segm, sample.height, sample.width, where)
        value = _cell(self.tables[r.table][1], "mask", r.row)
        if isinstance(value, dict) and "counts" in value:
            return decode_segmentation(value, sample.height, sample.width, where)
        if isinstance(value, dict) or isinstance(value, (bytes, bytearray)):
            data, path = _image_bytes(value, where, self._base_dirs)
            if data is None:
                data = Path(path).read_bytes() if Path(path).is_file() else b""
            m = decode_mask_image(data, where)
        elif value is None:
            raise DataError(f"{where}: no mask")
        else:
            m = np.asarray(value)
            if m.ndim != 2:
                raise DataError(f"{where}: mask array has shape {m.shape}, expected (H, W)")
            m = m > 0
        return check_mask(m, sample.height, sample.width, where)

    def __repr__(self) -> str:
        return f"HFSource({self.name!r}, format={self.format!r})"
