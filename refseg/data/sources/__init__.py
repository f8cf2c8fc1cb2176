"""Data sources: the refer layout (``ReferSource``) and Hugging Face exports (``HFSource``), both
``refseg.data.types.Source``s, and ``open_source`` that picks one from ``cfg.data``. Torch-free, so a
command line can check its data before loading a model.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from .hf import HFSource, is_hf_export
from .refer import ReferSource

__all__ = ["HFSource", "ReferSource", "is_hf_export", "open_source"]


def open_source(data_cfg, image_dir: str | Path | None = None) -> ReferSource | HFSource:
    """Open ``cfg.data``: a refer-layout folder ``<root>/<name>`` or a Hugging Face export path.

    ``name`` may be refshapes / refcoco / refcoco+ / refcocog / any folder under ``root`` in the refer
    layout, or a path (absolute, relative to the working directory, or under ``root``) to a .parquet /
    .arrow file or an export folder. ``image_dir`` overrides where the images are (default: the
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
    return ReferSource(root, name, str(data_cfg.split_by), image_dir=image_dir)
