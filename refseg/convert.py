"""Convert LAVT's published checkpoints into refseg checkpoint directories.

    python -m refseg.convert lavt refcoco.pth --text-model bert-base-uncased --out checkpoints/lavt_refcoco

Reads the files LAVT's ``train.py`` (yz93/LAVT-RIS) saves, in both layouts: ``lavt`` (``{'model',
'bert_model', 'optimizer', 'lr_scheduler', 'epoch', 'args'}``, BERT apart) and ``lavt_one`` (BERT inside
``model`` under ``text_encoder.``), with or without DDP's ``module.`` prefixes. The file is read with
``torch.load(weights_only=True)``; the only class it may name besides tensors and containers is
``argparse.Namespace`` (its ``args``), so no code in it runs. The Swin variant, window, decoder width
and the BERT it was trained with are read from the weights (and ``args``); every tensor is mapped
(1x1 ``Conv1d`` -> ``Linear``), LAVT's unused last-stage gate and the relative-position index buffers
are dropped and reported, and the result is written as ``config.yaml`` (LAVT's model and recipe:
configs/lavt_refcoco.yaml), ``model.safetensors``, ``text/``, the processor (``processor_config.json`` + tokenizer files) and a
model card (``README.md``) - what ``demo.py``,
``evaluate.py``, ``Predictor.from_pretrained`` and ``train.py --init-from`` read.

``--text-model`` names the BERT whose config and tokenizer go with the weights (``bert-base-uncased``,
or offline a local directory with config.json and vocab.txt / tokenizer.json). Anything unexpected
(a file that is not a LAVT checkpoint, a missing, extra or misshapen tensor) is one error line and
exit 2, and nothing is written.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .cli import ArgumentParser, quiet_libraries, run
from .config import (DataConfig, EvalConfig, FusionConfig, LossConfig, ModelConfig, RunConfig, TextConfig,
                     TrainConfig, VisionConfig, CrossViTConfig, DecoderConfig)
from .errors import CheckpointError, UserError, first_line

# (LAVT key template, refseg key template, stage-index shift LAVT -> refseg, 1x1 Conv1d weight).
# {i}: stage index, {j}: block index, {p}: the rest of the key. LAVT's patch merging closes stage i,
# refseg's (timm's) opens stage i + 1.
_RULES = [
    ("backbone.patch_embed.{p}", "encoder.patch_embed.{p}", 0, False),
    ("backbone.layers.{i}.blocks.{p}", "encoder.layers.{i}.blocks.{p}", 0, False),
    ("backbone.layers.{i}.downsample.{p}", "encoder.layers.{i}.downsample.{p}", 1, False),
    ("backbone.layers.{i}.fusion.vis_project.0.{p}", "pwams.{i}.vis_project.0.{p}", 0, True),
    ("backbone.layers.{i}.fusion.image_lang_att.f_query.0.{p}", "pwams.{i}.f_query.{p}", 0, True),
    ("backbone.layers.{i}.fusion.image_lang_att.f_key.0.{p}", "pwams.{i}.f_key.{p}", 0, True),
    ("backbone.layers.{i}.fusion.image_lang_att.f_value.0.{p}", "pwams.{i}.f_value.{p}", 0, True),
    ("backbone.layers.{i}.fusion.image_lang_att.W.0.{p}", "pwams.{i}.W.{p}", 0, True),
    ("backbone.layers.{i}.fusion.project_mm.0.{p}", "pwams.{i}.project_mm.0.{p}", 0, True),
    ("backbone.layers.{i}.res_gate.0.weight", "gates.{i}.fc1.weight", 0, False),
    ("backbone.layers.{i}.res_gate.2.weight", "gates.{i}.fc2.weight", 0, False),
    ("backbone.norm{i}.{p}", "norms.{i}.{p}", 0, False),
] + [(f"classifier.{lavt}.{{p}}", f"decoder.{ours}.{{p}}", 0, False) for lavt, ours in (
    ("conv1_4", "fuse.0.0"), ("bn1_4", "fuse.0.1"), ("conv2_4", "fuse.0.3"), ("bn2_4", "fuse.0.4"),
    ("conv1_3", "fuse.1.0"), ("bn1_3", "fuse.1.1"), ("conv2_3", "fuse.1.3"), ("bn2_3", "fuse.1.4"),
    ("conv1_2", "fuse.2.0"), ("bn1_2", "fuse.2.1"), ("conv2_2", "fuse.2.3"), ("bn2_2", "fuse.2.4"),
    ("conv1_1", "classifier"))]
TEXT_PREFIX = "text_encoder.model."  # refseg's text model; LAVT: bert_model keys / model["text_encoder." + k]


def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>.+)")
    return re.compile(pattern + "$")


_COMPILED = [(_regex(a), _regex(b), a, b, shift, conv) for a, b, shift, conv in _RULES]


def lavt_key_to_refseg(key: str) -> Optional[tuple[str, bool]]:
    """A LAVT ``model`` key -> (refseg key, is a 1x1 Conv1d weight to squeeze), or None if no rule fits."""
    for lavt, _, _, ours, shift, conv in _COMPILED:
        m = lavt.match(key)
        if m:
            g = m.groupdict()
            i = int(g["i"]) + shift if "i" in g else None
            return ours.format(i=i, p=g.get("p")), conv and key.endswith(".weight")
    return None


def refseg_key_to_lavt(key: str) -> str:
    """The LAVT name of a refseg model key (for messages); the key itself when no rule fits."""
    if key.startswith(TEXT_PREFIX):
        return "BERT " + key[len(TEXT_PREFIX):]
    for _, ours, lavt, _, shift, _ in _COMPILED:
        m = ours.match(key)
        if m:
            g = m.groupdict()
            return lavt.format(i=int(g["i"]) - shift if "i" in g else None, p=g.get("p"))
    return key


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass
class LavtCheckpoint:
    """The parts of a LAVT file refseg uses: state dicts without ``module.``, and what train.py recorded."""

    layout: str  # "lavt" (BERT under bert_model) or "lavt_one" (BERT inside model under text_encoder.)
    model: dict  # LAVT model tensors: backbone.*, classifier.*
    text: dict  # BERT tensors, BertModel key names
    args: Optional[argparse.Namespace] = None
    epoch: Optional[int] = None
    dropped: dict[str, list[str]] = field(default_factory=dict)


def _strip_module(sd: dict) -> dict:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _check_pytorch_file(path: Path) -> None:
    """CheckpointError naming what ``path`` is when it is neither format ``torch.save`` writes: the zip
    archive (torch >= 1.6) or the legacy pickle stream (it begins with a pickle protocol opcode)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return
    if not head:
        what = "the file is empty"
    else:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and text.strip() and all(c.isprintable() or c in "\r\n\t" for c in text):
            what = f"it is a text file, beginning {' '.join(text.split())[:40]!r}"
        else:
            what = f"it begins with the bytes {head[:8].hex(' ')}"
    raise CheckpointError(f"{path}: not a PyTorch checkpoint: {what}, not the zip archive (or pickle) that "
                          f"torch.save writes; give LAVT's .pth file")


def read_lavt_checkpoint(path: str | Path) -> LavtCheckpoint:
    """Load a LAVT ``.pth`` without running code in it; CheckpointError if it is not a LAVT checkpoint."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"LAVT checkpoint not found: {path}")
    _check_pytorch_file(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # mmap needs the zip format (torch >= 1.6); older files load whole
                if "mmap" not in str(e):
                    raise
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses code-carrying pickles; corrupt files fail too
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            raise CheckpointError(f"{path}: refused: the file asks to run or import {refused.group(1)}, which a LAVT "
                                  f"checkpoint never does (only tensors and argparse.Namespace are allowed)") from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))  # torch's weights-only wording, first line
        raise CheckpointError(f"{path}: cannot read it as a PyTorch checkpoint "
                              f"({reason.group(1).strip() if reason else first_line(e)})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path}: not a LAVT checkpoint (expected a dict with 'model', as LAVT's train.py saves)")
    model = _strip_module(obj["model"])
    if "backbone.patch_embed.proj.weight" not in model:
        raise CheckpointError(f"{path}: not a LAVT checkpoint ('model' has no backbone.patch_embed.proj.weight)")
    bad = [k for k, v in model.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{path}: 'model' holds non-tensors, e.g. {bad[:3]}")
    dropped: dict[str, list[str]] = {}
    if isinstance(obj.get("bert_model"), dict):
        layout, text = "lavt", _strip_module(obj["bert_model"])
        stray = [k for k in model if k.startswith("text_encoder.")]
        if stray:
            raise CheckpointError(f"{path}: BERT weights both in 'bert_model' and in 'model' ({stray[0]}, ...)")
    else:
        layout = "lavt_one"
        text = {k[len("text_encoder."):]: model.pop(k) for k in [k for k in model if k.startswith("text_encoder.")]}
        if not text:
            raise CheckpointError(f"{path}: no BERT weights (neither 'bert_model' nor text_encoder.* in 'model')")
    pooler = [k for k in text if k.startswith("pooler.")]
    if pooler:  # LAVT sets pooler = None; a file saved without that still carries it
        dropped["BERT pooler (unused)"] = pooler
        text = {k: v for k, v in text.items() if not k.startswith("pooler.")}
    args = obj.get("args") if isinstance(obj.get("args"), argparse.Namespace) else None
    epoch = obj.get("epoch") if isinstance(obj.get("epoch"), int) else None
    return LavtCheckpoint(layout, model, text, args, epoch, dropped)


# ---------------------------------------------------------------------------------------------
# Architecture and recipe
# ---------------------------------------------------------------------------------------------


def infer_swin(model_sd: dict) -> dict:
    """Swin shape of a LAVT ``model`` state dict: embed_dim, depths, num_heads, window_size."""
    embed = int(model_sd["backbone.patch_embed.proj.weight"].shape[0])
    blocks: dict[int, set[int]] = {}
    for k in model_sd:
        m = re.match(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(blocks) != [0, 1, 2, 3] or any(sorted(b) != list(range(len(b))) for b in blocks.values()):
        raise CheckpointError(f"expected 4 Swin stages of consecutive blocks, found stages {sorted(blocks)}")
    depths = [len(blocks[i]) for i in range(4)]
    tables = [model_sd.get(f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table") for i in range(4)]
    if any(t is None or t.ndim != 2 for t in tables):
        raise CheckpointError("missing backbone.layers.*.blocks.0.attn.relative_position_bias_table")
    heads = [int(t.shape[1]) for t in tables]
    side = math.isqrt(int(tables[0].shape[0]))
    if side * side != tables[0].shape[0] or side % 2 == 0:
        raise CheckpointError(f"relative-position table of {tables[0].shape[0]} rows is not (2 * window - 1) ** 2")
    return dict(embed_dim=embed, depths=depths, num_heads=heads, window_size=(side + 1) // 2)


def _pwam_heads(args: Optional[argparse.Namespace]) -> int:
    mha = getattr(args, "mha", "") or ""
    if not mha:
        return 1
    heads = {int(h) for h in str(mha).split("-")}
    if len(heads) != 1:
        raise CheckpointError(f"args.mha={mha}: PWAMs with different head counts per stage are not supported")
    return heads.pop()


def lavt_model_config(ckpt: LavtCheckpoint, text_model: str, text_layers: int) -> ModelConfig:
    """LAVT's model (configs/lavt_swin_b_480.yaml) with the shape read from the weights."""
    from .models.swin import SWIN_SIZES

    s = infer_swin(ckpt.model)
    named = [n for n, (d, dep, h) in SWIN_SIZES.items() if (d, list(dep), list(h)) == (s["embed_dim"], s["depths"],
                                                                                       s["num_heads"])]
    vision = VisionConfig(arch="swin", name=f"swin_{named[0]}" if named else "swin_base", window_size=s["window_size"],
                          drop_path_rate=0.3,  # lib/segmentation.py, every variant
                          embed_dim=None if named else s["embed_dim"], swin_depths=None if named else s["depths"],
                          swin_heads=None if named else s["num_heads"])
    return ModelConfig(
        image_size=int(getattr(ckpt.args, "img_size", 480) or 480), image_resize="pil", vision=vision,
        crossvit=CrossViTConfig(enabled=False),
        text=TextConfig(name=text_model, max_tokens=20, truncation="cut", trainable_layers=list(range(min(10, text_layers))),
                        train_embeddings=False, train_dropout=ckpt.layout == "lavt_one"),
        fusion=FusionConfig(hidden_dim=None, num_heads=_pwam_heads(ckpt.args), spatial_cues=False,
                            dropout=float(getattr(ckpt.args, "fusion_drop", 0.0) or 0.0)),
        decoder=DecoderConfig(hidden_dim=int(ckpt.model["classifier.conv1_1.weight"].shape[1]) if
                              "classifier.conv1_1.weight" in ckpt.model else 4 * s["embed_dim"],
                              align_corners=True),
        loss=LossConfig(class_weights=[0.9, 1.1], dice_weight=0.0, deep_supervision_weight=0.0))


def lavt_run_config(model: ModelConfig, args: Optional[argparse.Namespace] = None) -> RunConfig:
    """LAVT's train.py / test.py recipe (configs/lavt_refcoco.yaml) around ``model``; dataset, epochs,
    batch, lr and weight decay from the checkpoint's ``args`` (LAVT's args.py defaults without one)."""
    def arg(name, default):
        v = getattr(args, name, None)
        return default if v is None else v

    steps_per_epoch = 1325  # ~42.4k RefCOCO refs / 32: evaluate and checkpoint once an epoch
    return RunConfig(
        model=model,
        data=DataConfig(name=str(arg("dataset", "refcoco")), root="data", split_by=str(arg("splitBy", "unc")),
                        train_split="train", val_split="val", num_workers=8, max_val_samples=None, augment=False),
        train=TrainConfig(max_epochs=int(arg("epochs", 40)), batch_size=int(arg("batch_size", 8)),
                          gradient_accumulation_steps=1, lr=float(arg("lr", 5e-5)), text_lr=None,
                          weight_decay=float(arg("weight_decay", 1e-2)), weight_decay_rule="lavt",
                          sync_batchnorm=True, warmup_steps=0, poly_power=0.9, grad_clip=None, mixed_precision="no",
                          best_metric="oIoU", checkpoint_every=steps_per_epoch, eval_every=steps_per_epoch),
        eval=EvalConfig(batch_size=16, resized_gt=True, mixed_precision="no"))


# ---------------------------------------------------------------------------------------------
# Mapping and writing
# ---------------------------------------------------------------------------------------------


def map_lavt_state_dict(ckpt: LavtCheckpoint, expected: dict) -> tuple[dict, dict[str, list[str]]]:
    """LAVT tensors -> refseg state dict, checked against ``expected`` (a refseg model's state dict).

    Returns (state, dropped {reason: [LAVT keys]}). CheckpointError on an unknown, missing, extra or
    misshapen tensor, naming it as LAVT does.
    """
    state, dropped, unknown = {}, {k: list(v) for k, v in ckpt.dropped.items()}, []
    last_gate = f"gates.{sum(1 for k in expected if k.startswith('norms.') and k.endswith('.weight')) - 1}."
    for k, v in ckpt.model.items():
        if k.endswith(".relative_position_index"):
            dropped.setdefault("relative-position index buffers (recomputed)", []).append(k)
            continue
        mapped = lavt_key_to_refseg(k)
        if mapped is None:
            unknown.append(k)
            continue
        ours, conv1d = mapped
        if ours.startswith(last_gate):
            dropped.setdefault("the last stage's language gate (LAVT computes it and discards the result)",
                               []).append(k)
            continue
        if conv1d:
            if v.ndim != 3 or v.shape[-1] != 1:
                raise CheckpointError(f"{k}: expected a 1x1 Conv1d weight (out, in, 1), got {tuple(v.shape)}")
            v = v[..., 0]
        state[ours] = v
    for k, v in ckpt.text.items():
        state[TEXT_PREFIX + k] = v
    if unknown:
        raise CheckpointError(f"{len(unknown)} tensors that LAVT's model does not have, e.g. {unknown[:3]}")
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"{len(missing)} tensors missing, e.g. {[refseg_key_to_lavt(k) for k in missing[:3]]}")
    if extra:
        raise CheckpointError(f"{len(extra)} unexpected tensors, e.g. {[refseg_key_to_lavt(k) for k in extra[:3]]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{refseg_key_to_lavt(k)}: shape {tuple(v.shape)}, expected "
                                  f"{tuple(expected[k].shape)} (does --text-model match the BERT it was trained with?)")
        if v.dtype != expected[k].dtype and not (v.is_floating_point() and expected[k].is_floating_point()):
            raise CheckpointError(f"{refseg_key_to_lavt(k)}: dtype {v.dtype}, expected {expected[k].dtype}")
    return state, dropped


def _text_layers(text_model: str) -> int:
    from transformers import AutoConfig

    from .models.text import resolve_text_path

    try:
        cfg = AutoConfig.from_pretrained(resolve_text_path(text_model), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(f"--text-model {text_model}: cannot load its config ({first_line(e)}); offline, pass a "
                        f"local directory with config.json and the tokenizer files") from None
    return int(getattr(cfg, "num_hidden_layers", 0) or 0)


def convert_lavt(path: str | Path, text_model: str, out: str | Path, progress: bool = False) -> tuple[Path, str]:
    """Convert a LAVT checkpoint file into a refseg checkpoint directory ``out``. Returns (out, report)."""
    import torch
    from tqdm.auto import tqdm

    from .models import RefSegModel
    from .models.text import load_tokenizer

    out = Path(out).expanduser()
    if out.exists():
        raise UserError(f"--out {out} already exists (remove it or choose another directory)")
    # a terminal only (None: off when stderr is not a TTY); closed, i.e. erased, on errors too
    with tqdm(total=4, desc="read", disable=None if progress else True, leave=False) as bar:
        text_layers = _text_layers(text_model)  # a missing text model fails before the large read
        ckpt = read_lavt_checkpoint(path)
        bar.update()
        bar.set_description("build")
        config = lavt_model_config(ckpt, text_model, text_layers)
        try:
            tokenizer = load_tokenizer(text_model)
            model = RefSegModel(config, load_pretrained=False)
        except (RuntimeError, OSError, ValueError) as e:
            raise UserError(f"--text-model {text_model}: {first_line(e)}") from None
        bar.update()
        bar.set_description("map")
        state, dropped = map_lavt_state_dict(ckpt, model.state_dict())
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
        bar.update()
        bar.set_description("write")
        run_config = lavt_run_config(config, ckpt.args)
        from .modelcard import model_card
        from .processing import RefSegProcessor

        card = model_card(run_config, source=f"Converted from LAVT's checkpoint `{Path(path).name}` "
                                             f"(yz93/LAVT-RIS) by `python -m refseg.convert lavt`.")
        model.save_pretrained(out, run_config=run_config, processor=RefSegProcessor.from_config(config, tokenizer),
                              model_card=card)
        bar.update()
    v = config.vision
    swin = v.name if v.embed_dim is None else f"Swin (embed {v.embed_dim}, depths {v.swin_depths})"
    lines = [f"converted {path} ({ckpt.layout} layout{f', epoch {ckpt.epoch}' if ckpt.epoch is not None else ''}"
             f"{f', trained on {run_config.data.name} ({run_config.data.split_by})' if ckpt.args else ''}): "
             f"{swin} window {v.window_size}, {len(ckpt.text)} BERT tensors ({text_model}), "
             f"{len(state)} tensors written"]
    for reason, keys in dropped.items():
        lines.append(f"dropped {len(keys)} {'tensor' if len(keys) == 1 else 'tensors'}: {reason}, e.g. {keys[0]}")
    lines.append(f"wrote {out}")
    return out, "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m refseg.convert", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    sub = p.add_subparsers(dest="format", required=True, metavar="FORMAT", parser_class=ArgumentParser)
    lavt = sub.add_parser("lavt", help="a checkpoint saved by LAVT's train.py (lavt or lavt_one)",
                          description="Convert a LAVT checkpoint (yz93/LAVT-RIS train.py) to a refseg checkpoint.")
    lavt.add_argument("checkpoint", help="LAVT .pth file (e.g. refcoco.pth)")
    lavt.add_argument("--text-model", required=True, metavar="NAME_OR_DIR",
                      help="the BERT it was trained with, for its config and tokenizer: bert-base-uncased, or "
                           "offline a local directory (config.json + vocab.txt/tokenizer.json)")
    lavt.add_argument("--out", required=True, help="refseg checkpoint directory to write (must not exist)")
    lavt.add_argument("--no-progress", action="store_true", help="no progress bar")
    lavt.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    _, report = convert_lavt(args.checkpoint, args.text_model, args.out, progress=not args.no_progress)
    print(report)
    return 0


if __name__ == "__main__":
    run(main, prog="python -m refseg.convert")
