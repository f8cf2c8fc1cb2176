"""``python -m refseg.data.refshapes``: see ``refseg.data.refshapes.cli``."""
from __future__ import annotations

from ...cli import run
from .cli import main

if __name__ == "__main__":
    run(main, prog="python -m refseg.data.refshapes")
