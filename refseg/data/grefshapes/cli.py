"""``python -m refseg.data.grefshapes``: generate (only when the parameters changed), print the shares
of no-target / one-target / multi-target sentences, optionally re-check every sentence."""
from __future__ import annotations

from typing import Optional

from ...cli import ArgumentParser
from ...errors import RefShapesError
from ..refshapes.writer import read_meta, validate_params
from .writer import ensure_grefshapes, stats_line, verify_grefshapes, write_preview


def main(argv: Optional[list[str]] = None) -> int:
    p = ArgumentParser(prog="python -m refseg.data.grefshapes",
                       description="Generate grefshapes (<root>/grefshapes in the gRefCOCO layout): synthetic "
                                   "expressions that name one object, several or none. Regenerates only when the "
                                   "parameters changed.")
    p.add_argument("--root", default="data", help="data root (default: data)")
    p.add_argument("--train", type=int, default=4000, help="train images (default: 4000)")
    p.add_argument("--val", type=int, default=300, help="val images (default: 300)")
    p.add_argument("--test", type=int, default=300, help="test images (default: 300)")
    p.add_argument("--image-size", type=int, default=192, help="square image size in pixels (default: 192)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--force", action="store_true", help="regenerate even when meta.json matches")
    p.add_argument("--verify", action="store_true", help="re-check every sentence against the rebuilt scenes")
    p.add_argument("--preview", metavar="PNG", help="write a grid of refs with the outline of their objects")
    p.add_argument("--preview-count", type=int, default=12, help="refs in the preview (default: 12)")
    p.add_argument("--preview-split", default=None, help="split to preview (default: val)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    from types import SimpleNamespace

    params = dict(num_train_images=args.train, num_val_images=args.val, num_test_images=args.test,
                  image_size=args.image_size, seed=args.seed)
    validate_params(*params.values())
    if args.preview_count < 1:
        raise RefShapesError("--preview-count must be >= 1")
    path = ensure_grefshapes(SimpleNamespace(root=args.root, refshapes=SimpleNamespace(**params)),
                             progress=not args.no_progress, force=args.force)
    st = (read_meta(path) or {}).get("stats", {})
    print(f"grefshapes: {path}")
    for s, c in st.get("splits", {}).items():
        print(f"  {s:5s} images {c['images']:6d}  refs {c['refs']:6d}  sentences {c['sentences']:6d}  "
              f"no-target {c['no_target']:6d}  multi-target {c['multi_target']:6d}")
    line = stats_line(path)
    if line:
        print(f"  {line}")
    if args.verify:
        counts = verify_grefshapes(path)
        print(f"verified: {sum(counts.values())} sentences name exactly their objects "
              f"({counts['no_target']} none, {counts['one_target']} one, {counts['multi_target']} several)")
    if args.preview:
        print(f"preview: {write_preview(path, args.preview, args.preview_count, args.preview_split)}")
    return 0
