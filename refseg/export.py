"""Export a checkpoint's model for other runtimes, and run the export.

    python -m refseg.export onnx runs/x/best model.onnx      # needs the onnx extra: pip install -e ".[onnx]"

The ONNX graph takes what ``RefSegProcessor.to_device`` gives the model (``pixel_values`` float32
(B, 3, S, S) normalised, ``input_ids`` and ``attention_mask`` (B, T) int64; B is dynamic) and returns
``logits`` (B, 2, S'/4, S'/4), the model's stride-4 logits: the processor's ``post_process_masks``
brings them to the image's size exactly as for the PyTorch model. ``Predictor(..., backend="onnx")``
runs it with ONNX Runtime (``OnnxRunner``).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch

from .errors import UserError

ONNX_OPSET = 17
_INPUTS = ("pixel_values", "input_ids", "attention_mask")


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"the ONNX export needs {module}: pip install -e \".[onnx]\"") from None


class _Outputs(torch.nn.Module):
    """The model with positional inputs and tensors out (what an exporter traces): the logits, and the
    no-target logit when the model has that head."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        out = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return out.logits if out.no_target_logits is None else (out.logits, out.no_target_logits)


def export_onnx(model, processor, out: str | os.PathLike, batch: int = 2) -> Path:
    """Write ``model`` (a RefSegModel, on the CPU, fp32) as ONNX to ``out``; returns the path."""
    _need("onnx")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().float().eval()
    S, T = processor.image_size, processor.max_tokens
    g = torch.Generator().manual_seed(0)
    pixels = processor.normalize(torch.randint(0, 256, (batch, 3, S, S), dtype=torch.uint8, generator=g))
    ids = torch.randint(1000, 2000, (batch, T), generator=g)
    mask = torch.ones(batch, T, dtype=torch.long)
    mask[:, T // 2:] = 0
    outputs = ["logits"] + (["no_target_logits"] if model.no_target_head is not None else [])
    dims = {name: {0: "batch"} for name in (*_INPUTS, *outputs)}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(_Outputs(model), (pixels, ids, mask), str(out), input_names=list(_INPUTS),
                          output_names=outputs, dynamic_axes=dims, opset_version=ONNX_OPSET, dynamo=False)
    return out


class OnnxRunner:
    """The exported model in ONNX Runtime, called like the model: ``runner(**inputs)`` has ``logits`` and
    ``no_target_logits`` (CPU tensors; None for a model without the no-target head)."""

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None):
        ort = _need("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        self.path = Path(path)
        self.runtime = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    @classmethod
    def for_model(cls, model, processor, path=None) -> "OnnxRunner":
        """The runner of ``path``, or of ``model`` exported now into a temporary file (kept while it runs)."""
        if path is not None:
            return cls(path)
        tmp = tempfile.TemporaryDirectory(prefix="refseg-onnx-")
        runner = cls(export_onnx(model, processor, Path(tmp.name) / "model.onnx"))
        runner._tmp = tmp
        return runner

    def __call__(self, pixel_values, input_ids, attention_mask, **_):
        feeds = {"pixel_values": pixel_values.detach().float().contiguous().cpu().numpy(),
                 "input_ids": input_ids.detach().cpu().long().numpy(),
                 "attention_mask": attention_mask.detach().cpu().long().numpy()}
        names = [o.name for o in self.runtime.get_outputs()]
        out = dict(zip(names, self.runtime.run(names, feeds)))
        no_target = out.get("no_target_logits")
        return SimpleNamespace(logits=torch.from_numpy(out["logits"]),
                               no_target_logits=None if no_target is None else torch.from_numpy(no_target))


def main(argv=None) -> int:
    from .cli import ArgumentParser

    ap = ArgumentParser(prog="python -m refseg.export", description="Export a checkpoint's model (ONNX).")
    sub = ap.add_subparsers(dest="format", required=True)
    onnx = sub.add_parser("onnx", help="ONNX (opset %d), batch dimension dynamic" % ONNX_OPSET)
    onnx.add_argument("checkpoint", help="checkpoint directory or Hub id")
    onnx.add_argument("out", help="the .onnx file to write")
    onnx.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    from .models import load_checkpoint

    _need("onnx")
    ckpt = load_checkpoint(args.checkpoint)
    out = export_onnx(ckpt.model, ckpt.processor, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    from .cli import run

    run(main, prog="python -m refseg.export")
