#!/usr/bin/env python
"""Segment the object an English expression refers to, and save an overlay.

    python demo.py --image photo.jpg --text "the man on the left"
    python demo.py --image x.png --text "the blue square" --checkpoint runs/x/best --out o.png --mask m.png
    python demo.py --image photo.jpg --text "the dog" --explain explain/   # where each word looked

Without --checkpoint the newest runs/*/best is used. A checkpoint trained on refshapes (the default
run's synthetic shapes) knows shapes, not people or objects: on any image other than one of refshapes'
own (under the checkpoint's <data.root>/refshapes/) the demo says so. For photos, train on RefCOCO
(configs/refcoco.yaml) or convert LAVT's published weights (README, "Use LAVT's published weights").
An --explain directory must be new or empty, unless --overwrite moves the old one to DIR.old-<n>.

An expression that names several objects gets one mask, their union. When nothing matches (the mask
is empty, e.g. because the checkpoint's no-target head says so) the demo prints and captions
`no object matches "<expression>"` and still exits 0.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from refseg.cli import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, help="input image (any format PIL reads)")
    p.add_argument("--text", required=True, help="the referring expression")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint directory or Hugging Face Hub id org/name[@revision] (default: the newest "
                        "runs/*/best); a local path wins over an id of the same spelling")
    p.add_argument("--out", default=None, help="overlay image to write (default: <image>_overlay.png "
                                                "in the current directory); a plain file, replaced if it exists")
    p.add_argument("--mask", default=None, help="also write the binary mask as a PNG here (replaced if it exists)")
    p.add_argument("--explain", default=None, metavar="DIR",
                   help="also write the PWAMs' word attention: one PNG per (word, stage) at the image's size "
                        "and contact_sheet.png, into DIR")
    p.add_argument("--overwrite", action="store_true", help="a non-empty --explain directory is moved to "
                                                            "<dir>.old-<n> (never deleted) and written afresh")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


SYNTHETIC_NOTE = ("note: this checkpoint was trained on refshapes (synthetic shapes), so on photos it will not find "
                  "people or objects; train on RefCOCO (configs/refcoco.yaml) or convert LAVT's published weights "
                  "(README: Use LAVT's published weights)")


def is_refshapes_image(image: str | Path, data) -> bool:
    """Whether ``image`` is one of the synthetic dataset's own (under ``<data.root>/<data.name>``:
    refshapes or grefshapes)."""
    try:
        Path(image).resolve().relative_to((Path(data.root).expanduser() / data.name).resolve())
    except (ValueError, OSError):
        return False
    return True


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from refseg.cli import check_device, quiet_libraries
    from refseg.engine.rundir import check_output_dir, claim_output_dir
    from refseg.errors import UserError
    quiet_libraries()
    from refseg.data.io import read_image, write_image
    from refseg.hub import resolve_checkpoint
    from refseg.visualize import no_match_message, overlay

    if not args.text.strip():
        raise UserError("--text is empty: give an expression such as \"the man on the left\"")
    image = read_image(args.image)  # validate the input before the (slower) model load
    if args.explain:
        check_output_dir(args.explain, args.overwrite, option="--explain")
    ckpt = resolve_checkpoint(args.checkpoint)  # a local directory, or a Hub id's snapshot in the cache
    check_device(args.device)
    if not args.checkpoint:
        print(f"using the newest checkpoint: {ckpt}")
    from refseg.predictor import Predictor

    predictor = Predictor.from_pretrained(ckpt, device=args.device)  # checked and read once
    data = predictor.run_config.data
    if data.name in ("refshapes", "grefshapes") and not is_refshapes_image(args.image, data):
        print(SYNTHETIC_NOTE)
    text = predictor.processor.clean_text(args.text)  # for the caption; the processor cleans what it encodes
    if args.explain:  # one forward pass gives the mask and the attention maps
        explanation = predictor.explain(image, args.text)
        mask = explanation.mask
        paths = explanation.write(claim_output_dir(args.explain, args.overwrite, option="--explain"), image)
        gates = ", ".join(f"stage {i + 1} {g:.3f}" for i, g in enumerate(explanation.gate_means))
        print(f"word attention of {len(explanation.tokens)} tokens x {explanation.num_stages} stages: "
              f"{len(paths)} images in {args.explain} (contact_sheet.png); language gate mean |S|: {gates}")
        p_none = None
    else:
        mask, p_none = predictor.predict_with_no_target(image, args.text)
    out = Path(args.out) if args.out else Path(Path(args.image).stem + "_overlay.png")
    caption = text if mask.any() else no_match_message(text)
    write_image(out, overlay(image, mask, caption))
    if not mask.any():
        print(no_match_message(text) + ("" if p_none is None else f" (no-target probability {p_none:.2f})"))
    else:
        print(f"mask covers {100.0 * mask.mean():.1f}% of the {image.shape[1]}x{image.shape[0]} image")
    print(f"overlay written to {out}")
    if args.mask:
        print(f"mask written to {write_image(args.mask, mask)}")
    return 0


if __name__ == "__main__":
    from refseg.cli import run
    run(main, prog="demo.py")
