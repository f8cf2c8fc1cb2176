"""Data: sources of referring expressions, image / mask I/O, the torch dataset, and refshapes.

Stable surface (imported lazily, so ``refseg.data.sources`` and the refshapes generator stay
torch-free)::

    from refseg.data import open_source, RefSegDataset, collate, read_image

Modules: ``types`` (Sample, Ref, the Source protocol), ``io`` (read_image, decode_segmentation,
write_image), ``sources`` (ReferSource, GReferSource, HFSource, open_source), ``dataset``
(RefSegDataset, collate), ``transforms`` (preprocessing shared with the Predictor), ``check`` (the
dataset checker CLI), ``refshapes`` (the synthetic dataset generator), ``grefshapes`` (its
generalized variant: no, one or several objects per expression).
"""
from __future__ import annotations

__all__ = ["Sample", "Ref", "Source", "read_image", "write_image", "decode_segmentation", "open_source",
           "ReferSource", "GReferSource", "HFSource", "RefSegDataset", "collate"]


def __getattr__(name: str):
    if name in ("RefSegDataset", "collate"):
        from . import dataset as module
    elif name in ("open_source", "ReferSource", "GReferSource", "HFSource"):
        from . import sources as module
    elif name in ("read_image", "write_image", "decode_segmentation"):
        from . import io as module
    elif name in ("Sample", "Ref", "Source"):
        from . import types as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
