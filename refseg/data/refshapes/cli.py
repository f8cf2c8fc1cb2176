"""``python -m refseg.data.refshapes``: generate (only when the parameters changed), print statistics,
optionally verify and preview."""
from __future__ import annotations

from typing import Optional

from ...cli import ArgumentParser
from .verify import verify_refshapes, write_preview
from .writer import RefShapesError, ensure_refshapes, read_meta, validate_params


def main(argv: Optional[list[str]] = None) -> int:
    p = ArgumentParser(prog="python -m refseg.data.refshapes",
                description="Generate the synthetic refshapes referring-segmentation dataset "
                            "(<root>/refshapes in the refer layout). Regenerates only when the parameters changed.")
    p.add_argument("--root", default="data", help="data root (default: data)")
    p.add_argument("--train", type=int, default=4000, help="train images (default: 4000)")
    p.add_argument("--val", type=int, default=300, help="val images (default: 300)")
    p.add_argument("--test", type=int, default=300, help="test images (default: 300)")
    p.add_argument("--image-size", type=int, default=192, help="square image size in pixels (default: 192)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--force", action="store_true", help="regenerate even when meta.json matches")
    p.add_argument("--preview", metavar="PNG", help="write a grid of examples with target outlines")
    p.add_argument("--preview-count", type=int, default=8, help="refs in the preview (default: 8)")
    p.add_argument("--preview-split", default=None, help="split to preview (default: val)")
    p.add_argument("--verify", action="store_true",
                   help="re-check every sentence against the scenes rebuilt from instances.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    from types import SimpleNamespace

    params = dict(num_train_images=args.train, num_val_images=args.val, num_test_images=args.test,
                  image_size=args.image_size, seed=args.seed)
    validate_params(*params.values())
    if args.preview_count < 1:
        raise RefShapesError("--preview-count must be >= 1")
    path = ensure_refshapes(SimpleNamespace(root=args.root, refshapes=SimpleNamespace(**params)),
                            progress=not args.no_progress, force=args.force)
    meta = read_meta(path) or {}
    st = meta.get("stats", {})
    print(f"refshapes: {path}")
    for s, c in st.get("splits", {}).items():
        print(f"  {s:5s} images {c['images']:6d}  refs {c['refs']:6d}  sentences {c['sentences']:6d}")
    if st:
        print("  types: " + ", ".join(f"{k} {v:.1%}" for k, v in st["type_share"].items())
              + f"; targets with a same colour/shape distractor: {st['distractor_share']:.1%}"
              + f"; generated in {st['seconds']} s")
    if args.verify:
        print(f"verified: {verify_refshapes(path)} sentences name their target uniquely")
    if args.preview:
        print(f"preview: {write_preview(path, args.preview, args.preview_count, args.preview_split)}")
    return 0
