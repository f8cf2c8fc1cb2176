#!/usr/bin/env python
"""Serve a web page (and an HTTP API) that segments the object an expression names.

    python app.py                                   # the newest runs/*/best on http://127.0.0.1:7860
    python app.py --checkpoint runs/x/best --examples ../shared/realref/images --port 8080

Open the printed address in a browser: drop a photo, type an expression, press Enter. The same
function is the API /segment (see the README). Needs the app extra: pip install -e ".[app]".

The same server answers plain HTTP (OpenAPI at /docs):
    curl -F image=@photo.jpg -F text="the dog" http://127.0.0.1:7860/api/segment -o mask.png
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from refseg import serve
from refseg.cli import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="app.py", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the newest runs/*/best)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--examples", default=None, metavar="DIR",
                   help="also offer the photos in DIR (searched recursively) as examples")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the model (default: torch's choice, one per core; 1 can be faster on a "
                        "busy machine)")
    p.add_argument("--max-megapixels", type=float, default=None,
                   help="refuse larger images (default: 50)")
    # -- serving: the HTTP API (refseg.serve), its dynamic batcher and limits, the inference backend --
    p.add_argument("--backend", default="auto",
                   help="how the model runs: auto (bf16 on CUDA, channels_last on the CPU), fp32, bf16, fp16, channels_last, "
                        "compile, int8, onnx (see benchmarks/inference_backends.py)")
    p.add_argument("--batch-window-ms", type=float, default=serve.BATCH_WINDOW_MS,
                   help=f"wait this long for more requests to share a forward (default {serve.BATCH_WINDOW_MS:g})")
    p.add_argument("--max-batch", type=int, default=serve.MAX_BATCH,
                   help=f"most expressions in one forward (default {serve.MAX_BATCH})")
    p.add_argument("--max-queue", type=int, default=serve.MAX_QUEUE,
                   help=f"requests waiting beyond this get 503 (default {serve.MAX_QUEUE})")
    p.add_argument("--request-timeout", type=float, default=serve.REQUEST_TIMEOUT,
                   help=f"seconds a request may wait for the model, then 503 (default {serve.REQUEST_TIMEOUT:g})")
    p.add_argument("--max-body-mb", type=float, default=serve.MAX_BODY_MB,
                   help=f"/api/segment refuses larger bodies with 413 (default {serve.MAX_BODY_MB:g})")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from refseg.cli import UserError, quiet_libraries
    quiet_libraries()
    from refseg import app
    from refseg.hub import resolve_checkpoint

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.max_megapixels is not None and args.max_megapixels <= 0:
        raise UserError(f"--max-megapixels must be positive, got {args.max_megapixels}")
    for flag, value, low in (("--batch-window-ms", args.batch_window_ms, 0), ("--max-batch", args.max_batch, 1),
                             ("--max-queue", args.max_queue, 1), ("--request-timeout", args.request_timeout, 1e-3),
                             ("--max-body-mb", args.max_body_mb, 1e-3)):
        if not value >= low:
            raise UserError(f"{flag} must be at least {low:g}, got {value:g}")
    ckpt = resolve_checkpoint(args.checkpoint)
    photos = app.folder_examples(args.examples) if args.examples else []
    if importlib.util.find_spec("gradio") is None:  # before the model load; importing it takes seconds
        app.offline_gradio()  # raises the UserError that says how to install it
    app.check_port(args.host, args.port)  # before the model load, too
    if not args.checkpoint:
        print(f"using the newest checkpoint: {ckpt}")
    import torch

    from refseg.cli import check_device
    from refseg.predictor import Predictor

    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        predictor = Predictor.from_pretrained(ckpt, device=args.device, backend=args.backend)
    except ValueError as e:  # a backend the device cannot run
        raise UserError(f"--backend {args.backend}: {e}") from None
    batcher = serve.Batcher(predictor, window_ms=args.batch_window_ms, max_batch=args.max_batch,
                            max_queue=args.max_queue, timeout=args.request_timeout,
                            start=False)  # its loop runs in this, the main, thread (serve.Batcher.run)
    segmenter = app.Segmenter(predictor, max_megapixels=args.max_megapixels or app.MAX_MEGAPIXELS, batcher=batcher)
    router = serve.api_router(segmenter, batcher, max_body_bytes=int(args.max_body_mb * 1e6), model_name=str(ckpt))
    examples = app.dataset_examples(predictor.run_config)
    synthetic = predictor.run_config.data.name in ("refshapes", "grefshapes")
    demo = app.build_demo(segmenter, examples=examples, photos=photos, title="refseg",
                          note=app.SYNTHETIC_NOTE if synthetic else "", concurrency=args.max_batch)
    print(f"model {ckpt} on {predictor.device} ({predictor.backend}, {torch.get_num_threads()} threads); "
          f"{len(examples)} dataset examples, {len(photos)} photos; API /api/segment (batch window "
          f"{args.batch_window_ms:g} ms, max batch {args.max_batch}, max queue {args.max_queue})")
    # Gradio serves files only from its cache and these: the example images themselves, one by one
    # (never the folders they are in).
    allowed = {str(Path(p).resolve()) for p, _ in examples} | set(photos)
    try:
        app.launch(demo, args.host, args.port, allowed_paths=sorted(allowed), app_kwargs=serve.app_kwargs(router),
                   main_loop=batcher.run)
    finally:
        batcher.close()
    return 0


if __name__ == "__main__":
    from refseg.cli import run
    run(main, prog="app.py")
