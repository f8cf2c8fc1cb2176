"""Data sources: the refer layout (``ReferSource``), the gRefCOCO layout (``GReferSource``: an
expression may name no object or several) and Hugging Face exports (``HFSource``), all
``refseg.data.types.Source``s, and ``open_source`` that picks one from ``cfg.data``. Torch-free, so a
command line can check its data before loading a model.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from .grefer import GReferSource, is_grefer_layout
from .hf import HFSource, is_hf_export
from .refer import ReferSource

__all__ = ["GReferSource", "HFSource", "ReferSource", "is_grefer_layout", "is_hf_export", "open_source",
           "resolve_split_by"]

# the synthetic datasets' own partition names (data.split_by "refshapes", the config's default, reads
# grefshapes' partition too)
GENERALIZED_DATASETS = ("grefcoco", "grefshapes")  # always read in the gRefCOCO layout
SYNTHETIC_SPLIT_BY = {"refshapes": "refshapes", "grefshapes": "grefshapes"}


def resolve_split_by(name: str, split_by: str) -> str:
    """``split_by`` for dataset ``name``: the synthetic datasets' default partition is renamed to theirs."""
    if name in SYNTHETIC_SPLIT_BY and split_by in SYNTHETIC_SPLIT_BY.values():
        return SYNTHETIC_SPLIT_BY[name]
    return split_by


def open_source(data_cfg, image_dir: str | Path | None = None) -> ReferSource | GReferSource | HFSource:
    """Open ``cfg.data``: a refer-layout or gRefCOCO-layout folder ``<root>/<name>`` or a Hugging Face
    export path.

    ``name`` may be refshapes / refcoco / refcoco+ / refcocog / any folder under ``root`` in the refer
    layout, grefcoco / grefshapes / any folder holding ``grefs(<split_by>)`` files (gRefCOCO layout),
    or a path (absolute, relative to the working directory, or under ``root``) to a .parquet / .arrow
    file or an export folder. ``image_dir`` overrides where the images are (default: the
    dataset's ``images/``, else ``<root>/images/train2014`` as in the COCO layout).
    """
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
    split_by = resolve_split_by(name, str(data_cfg.split_by))
    if name in GENERALIZED_DATASETS or is_grefer_layout(root, name, split_by):
        return GReferSource(root, name, split_by, image_dir=image_dir)
    return ReferSource(root, name, split_by, image_dir=image_dir)
