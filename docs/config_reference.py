#!/usr/bin/env python
"""Regenerate the config reference in docs/DESIGN.md from the config schema.

The text between ``<!-- config-reference:start -->`` and ``<!-- config-reference:end -->`` is
``refseg.config.format_config_reference()`` (every key with its type, default and help).
``tests/test_docs.py`` fails when the file differs from what this script would write.

    python docs/config_reference.py            # rewrite the section in place
    python docs/config_reference.py --check    # exit 1 if it is stale
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESIGN = Path(__file__).resolve().parent / "DESIGN.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def render(text: str) -> str:
    """``text`` (DESIGN.md) with the marked section replaced by the current reference."""
    from refseg.config import format_config_reference

    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"{DESIGN}: the markers {START} and {END} are missing")
    return f"{head}{START}\n{format_config_reference()}\n{END}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the section is stale; write nothing")
    args = ap.parse_args(argv)
    text = DESIGN.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{DESIGN} is stale: run python docs/config_reference.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        DESIGN.write_text(new)
        print(f"updated {DESIGN}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(DESIGN.parents[1]))
    sys.exit(main())
