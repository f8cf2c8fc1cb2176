"""Typed run configuration: YAML -> nested dataclasses, with dotted ``key=value`` overrides.

Every field has a default, so ``load_config()`` with no file gives the embedded default run.
Unknown keys are errors that name the nearest valid key; wrong types name the field.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


@dataclass
class RefShapesConfig:
    """Sizes of the synthetic referring dataset written on first use (``refseg.data.refshapes``)."""

    num_train_images: int = 4000
    num_val_images: int = 300
    num_test_images: int = 300
    image_size: int = 192
    seed: int = 0


@dataclass
class DataConfig:
    name: str = "refshapes"  # refshapes | refcoco | refcoco+ | refcocog | any refer-layout folder | HF export path
    root: str = "data"
    split_by: str = "refshapes"  # unc | umd | google | refshapes | ...
    image_size: int = 128  # square working resolution (LAVT: 480); refshapes images are 192 px
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 1
    max_val_samples: Optional[int] = 300  # cap on (ref, sentence) pairs scored by periodic evaluations
    augment: bool = False  # horizontal flip is unsafe with "left"/"right"; only photometric jitter
    refshapes: RefShapesConfig = field(default_factory=RefShapesConfig)


@dataclass
class VisionConfig:
    arch: str = "xcit_columnar"  # xcit_columnar | xcit_hierarchical
    name: str = "xcit_nano_12_p8"  # timm XCiT variant for the columnar encoder
    pretrained: Optional[str] = None  # null | timm tag | local .safetensors/.pth
    # Overrides of the named timm variant's shape (null: the variant's own). The default model is a
    # slimmer xcit_nano_12_p8 (96 wide, 6 blocks); a config that names another `name` without these
    # keys gets that variant's own shape (see config_from_dict), so pretrained weights fit.
    embed_dim: Optional[int] = 96
    depth: Optional[int] = 6
    num_heads: Optional[int] = None
    patch_size: Optional[int] = None
    out_indices: Optional[list[int]] = None  # blocks closing each of the 4 stages; default per depth
    # Strides of the 4 stage maps F1..F4 the decoder gets (columnar encoder; null: [4, 8, 16, 32] as in
    # XCiT's dense-prediction backbones). Strides above the patch size are max-pooled.
    out_strides: Optional[list[int]] = None
    # Hierarchical (Swin-like) encoder, trained from scratch.
    hierarchical_dims: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    hierarchical_depths: list[int] = field(default_factory=lambda: [2, 2, 4, 2])
    hierarchical_heads: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    drop_path_rate: float = 0.0
    # xca (default) | global: standard softmax self-attention over tokens in place of XCA (same widths;
    # quadratic in pixels) - for the scaling comparison in benchmarks/scaling.py.
    attention: str = "xca"
    # Blocks of the columnar encoder that use softmax attention over tokens instead of XCA (a hybrid).
    global_blocks: list[int] = field(default_factory=list)


@dataclass
class CrossViTConfig:
    enabled: bool = True
    patch_size: int = 16  # the second stream's patch size (the XCiT stream uses the vision patch size)
    embed_dim: int = 128
    depth: int = 1  # transformer blocks of the second stream per stage
    num_heads: int = 4
    # vit: timm ViT blocks (softmax attention over the branch's own tokens, as CrossViT; quadratic in
    # its tokens) | xca: XCiT blocks (linear). The CLS exchange with the XCiT stream is linear either way.
    block: str = "xca"


@dataclass
class TextConfig:
    name: str = "bundled-minilm"  # bundled-minilm | a Hugging Face name | a local path
    max_tokens: int = 20
    # Indices of encoder layers that train; "all", "none" or a list (LAVT trains layers 0-9).
    trainable_layers: Any = "none"
    train_embeddings: bool = False


@dataclass
class FusionConfig:
    """Pixel-Word Attention Module and language gate settings."""

    hidden_dim: Optional[int] = None  # PWAM key/query width; default: the stage width
    num_heads: int = 1
    spatial_cues: bool = True  # append normalised (x, y) coordinates to the PWAM query/visual inputs
    dropout: float = 0.0


@dataclass
class DecoderConfig:
    hidden_dim: int = 64
    # Feed the encoder's convolutional stem (strides 2 and 4) into the decoder, which then predicts at
    # stride 2: the columnar XCiT's finest real features are otherwise its stride-8 patch tokens.
    stem_skips: bool = False
    # Width of the image-guided refiner (MaskRefiner: 3x3 convs over [logits, RGB] at stride 2);
    # 0: off. A perfect stride-4 map caps refshapes near 84 mIoU, but on the default run the refiner
    # did not raise the IoU of correctly found objects (74.6 vs 74.8): the masks are limited by
    # training, not by the output grid, so it is off by default.
    refine_channels: int = 0
    # Classes of the auxiliary category-segmentation head (background + the dataset's categories),
    # trained when loss.semantic_weight > 0; 0: no head. Training fills it in from instances.json.
    semantic_classes: int = 0
    # Bilinear upsampling in the decoder and of the logits. LAVT's align_corners=True stretches a
    # stride-4 map against the image by up to 1.5 px at 128 px: a perfect stride-4 mask then scores
    # 84.0 mIoU on refshapes val instead of 90.9, and the default run ends ~2.4 mIoU lower. false keeps
    # pixel centres aligned (checkpoints written before this option load with true).
    align_corners: bool = False


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    crossvit: CrossViTConfig = field(default_factory=CrossViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass
class LossConfig:
    class_weights: list[float] = field(default_factory=lambda: [0.9, 1.1])
    dice_weight: float = 1.0
    # Auxiliary loss: segment *every* annotated object of the image into its category (cross-entropy on
    # a 1x1 head over the decoder's last features). instances.json annotates all objects, not only the
    # referred one, so each image gives dense shape supervision; 0: off.
    semantic_weight: float = 0.0
    # Deep supervision: the mask loss (CE + Dice) also on 1x1 heads over the decoder's stride-16 and
    # stride-8 maps, each weighted by this; 0: no heads (LAVT has none).
    deep_supervision_weight: float = 0.4


@dataclass
class TrainConfig:
    # Schedule length: max_epochs if set, else max_steps if set, else as many steps as fit in
    # max_minutes (measured on this machine at the end of warm-up and after every evaluation).
    max_steps: Optional[int] = None
    max_epochs: Optional[int] = None  # when set, max_steps = epochs * steps per epoch
    # Wall-clock minutes for the whole train() call: data generation, training, evaluations and the
    # final evaluation (process start-up comes on top). Used only when max_steps and max_epochs are null.
    max_minutes: Optional[float] = 13.0
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    lr: float = 5e-4
    text_lr: Optional[float] = None  # learning rate of the trainable text layers (default: lr)
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    poly_power: float = 0.9
    grad_clip: Optional[float] = 1.0
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16 (auto: bf16 where it is fast)
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 400
    log_every: int = 20
    max_bad_steps: int = 20  # consecutive non-finite losses before training stops
    # CPU threads per process; null: this machine's cores shared among its processes. (accelerate
    # launch sets OMP_NUM_THREADS=1 unless told otherwise, which would leave cores idle.)
    cpu_threads: Optional[int] = None
    # Save state and exit once this step is reached (a time slice of a longer run; continue it with
    # --resume). The schedule still runs to max_steps.
    stop_at_step: Optional[int] = None


@dataclass
class EvalConfig:
    batch_size: int = 16
    resized_gt: bool = False  # score at image_size x image_size resized ground truth (LAVT test.py)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------------
# Building and validating
# ---------------------------------------------------------------------------------------------


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nearest(key: str, options) -> str:
    options = list(options)
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.0)
    return match[0] if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to type ``tp`` (a typing annotation); raise ConfigError on mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
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
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
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
            near_full = f"{where}.{near}" if where else near
            raise ConfigError(f"unknown config key '{full}' (did you mean '{near_full}'?)")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _all_keys(cls, prefix: str = "") -> list[str]:
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(_all_keys(hints[f.name], name + "."))
        else:
            out.append(name)
    return out


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict (values parsed as YAML scalars/lists)."""
    valid = set(_all_keys(Config))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if key not in valid:
            # Allow setting a whole sub-section (e.g. data.refshapes={...}) as well.
            sections = {k.rsplit(".", 1)[0] for k in valid if "." in k}
            if key not in sections:
                raise ConfigError(f"unknown config key '{key}' (did you mean '{_nearest(key, valid)}'?)")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
        node[parts[-1]] = _parse_scalar(raw)
    return data


def _validate(cfg: Config) -> None:
    def bad(msg):
        raise ConfigError(msg)

    if cfg.model.vision.arch not in ("xcit_columnar", "xcit_hierarchical"):
        bad(f"model.vision.arch: expected xcit_columnar or xcit_hierarchical, got '{cfg.model.vision.arch}'")
    if cfg.data.image_size < 32:
        bad(f"data.image_size: must be at least 32, got {cfg.data.image_size}")
    if cfg.train.batch_size < 1:
        bad(f"train.batch_size: must be positive, got {cfg.train.batch_size}")
    t = cfg.train
    if t.max_epochs is not None and t.max_epochs < 1:
        bad(f"train.max_epochs: must be positive, got {t.max_epochs}")
    if t.max_steps is not None and t.max_steps < 1:
        bad(f"train.max_steps: must be positive, got {t.max_steps}")
    if t.max_minutes is not None and t.max_minutes <= 0:
        bad(f"train.max_minutes: must be positive, got {t.max_minutes}")
    if t.max_steps is None and t.max_epochs is None and t.max_minutes is None:
        bad("train: set one of max_steps, max_epochs or max_minutes (all are null)")
    if cfg.train.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        bad(f"train.mixed_precision: expected auto, no, bf16 or fp16, got '{cfg.train.mixed_precision}'")
    if len(cfg.loss.class_weights) != 2:
        bad("loss.class_weights: expected two numbers (background, object)")
    if cfg.loss.deep_supervision_weight < 0:
        bad(f"loss.deep_supervision_weight: must be >= 0, got {cfg.loss.deep_supervision_weight}")
    if cfg.loss.semantic_weight < 0:
        bad(f"loss.semantic_weight: must be >= 0, got {cfg.loss.semantic_weight}")
    if cfg.model.decoder.semantic_classes < 0 or cfg.model.decoder.semantic_classes == 1:
        bad(f"model.decoder.semantic_classes: expected 0 (no head) or at least 2, got {cfg.model.decoder.semantic_classes}")
    if cfg.model.text.max_tokens < 2:
        bad("model.text.max_tokens: must be at least 2")
    tl = cfg.model.text.trainable_layers
    if not (tl in ("all", "none") or (isinstance(tl, list) and all(isinstance(i, int) for i in tl))):
        bad(f"model.text.trainable_layers: expected 'all', 'none' or a list of layer indices, got {tl!r}")
    for name in ("hierarchical_dims", "hierarchical_depths", "hierarchical_heads"):
        if len(getattr(cfg.model.vision, name)) != 4:
            bad(f"model.vision.{name}: expected 4 values (one per stage)")
    if cfg.model.vision.out_indices is not None and len(cfg.model.vision.out_indices) != 4:
        bad("model.vision.out_indices: expected 4 block indices")
    if cfg.model.vision.out_strides is not None and len(cfg.model.vision.out_strides) != 4:
        bad("model.vision.out_strides: expected 4 strides")
    if cfg.model.vision.arch == "xcit_hierarchical":  # options of the columnar trunk only
        if cfg.model.vision.out_strides not in (None, [4, 8, 16, 32]):
            bad("model.vision.out_strides: the hierarchical encoder's stages are at strides [4, 8, 16, 32]")
        if cfg.model.vision.global_blocks:
            bad("model.vision.global_blocks: only the xcit_columnar encoder has it")


_VARIANT_SHAPE_KEYS = ("embed_dim", "depth", "num_heads", "patch_size", "out_indices")


def config_from_dict(data: dict | None, overrides: list[str] | None = None) -> Config:
    data = apply_overrides(dict(data or {}), overrides)
    vision = (data.get("model") or {}).get("vision")
    if isinstance(vision, dict) and vision.get("name", VisionConfig.name) != VisionConfig.name:
        # Naming another timm variant means its own shape, unless the shape is given alongside.
        for key in _VARIANT_SHAPE_KEYS:
            vision.setdefault(key, None)
    cfg = _build(Config, data)
    _validate(cfg)
    return cfg


# Fields whose default changed: a run or checkpoint saved before the field existed was trained with
# the old behaviour, so its config.yaml gets the old value (a user's own YAML gets the new default).
_SAVED_BEFORE = {("model", "decoder", "align_corners"): True,
                 ("loss", "deep_supervision_weight"): 0.0}  # a checkpoint without the option has no heads


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """The config.yaml of a run or checkpoint directory, as that run was trained (see ``_SAVED_BEFORE``)."""
    p = Path(path)
    p = p / "config.yaml" if p.is_dir() else p
    return load_config(p, overrides, _legacy=True)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, _legacy: bool = False) -> Config:
    """Read a YAML config (or the embedded defaults when ``path`` is None) and apply overrides.

    >>> cfg = load_config("configs/default.yaml", overrides=["train.max_steps=10"])
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / "config.yaml"
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        if _legacy:
            for keys, old_value in _SAVED_BEFORE.items():
                node = data
                for k in keys[:-1]:
                    node = node.get(k) if isinstance(node, dict) else None
                if isinstance(node, dict) and keys[-1] not in node:
                    node[keys[-1]] = old_value
    try:
        return config_from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None
