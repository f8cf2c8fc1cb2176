"""refseg: referring image segmentation with a language-aware XCiT encoder (LAVT-style).

Public API::

    from refseg import load_config, build_model, Predictor
"""
from __future__ import annotations

from .config import Config, ConfigError, load_config

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "build_model", "Predictor", "__version__"]


def __getattr__(name):  # lazy: keep `import refseg` light (no torch/timm until needed)
    if name == "build_model":
        from .models import build_model
        return build_model
    if name == "Predictor":
        from .predictor import Predictor
        return Predictor
    raise AttributeError(f"module 'refseg' has no attribute {name!r}")
