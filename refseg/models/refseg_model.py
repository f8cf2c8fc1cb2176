"""RefSegModel: LAVT-style referring segmentation with an XCiT (or LAVT's Swin) encoder and a CrossViT branch.

    image ─► XCiT stage i ─► [CrossViT CLS exchange] ─► PWAM_i(words) ─► F_i ─┬─► LayerNorm_i ─► resample ─► decoder
                 ▲                                                               │
                 └──────── V + gate_i(F_i) * F_i (stages 1-3) ◄──────────────────┘

The contract (``docs/DESIGN.md``, "The model contract")::

    RefSegProcessor (CPU: clean text, tokenize, resize to uint8; device: normalise)
        -> RefSegModel.forward(pixel_values, input_ids, attention_mask, labels=None)
        -> RefSegOutput(loss, logits at stride 4, attentions, gate_magnitudes, no_target_logits)
        -> RefSegProcessor.post_process_masks(logits, image size, no_target_logits=...)   (one resize;
           empty where the no-target head, when the model has one, says nothing matches)

Checkpoint directory (``save_pretrained`` / ``from_pretrained``; a local path or a Hub id)::

    config.yaml            the run config (``config_version``; ``model`` rebuilds the model, losses
                           included; the rest says how it was trained: dataset, schedule)
    model.safetensors      every weight, text encoder included
    text/config.json       the text model's Hugging Face config (architecture without the original path)
    processor_config.json  the processor's settings, beside the tokenizer's own files
    README.md              the model card (Hub metadata, architecture, data, command, scores)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..config import ModelConfig, RunConfig, load_run_config
from ..errors import CheckpointError, ConfigError, first_line
from ..hub import CONFIG_FILE, MODEL_CARD, TEXT_DIR, WEIGHTS_FILE, checkpoint_directory, resolve_checkpoint
from ..ops import pad_to_multiple
from ..utils import atomic_directory, read_directory
from .crossvit import CrossViT
from .decoder import SimpleDecoder
from .encoder import Encoder
from .losses import SegmentationLoss
from .pwam import PWAM, LanguageGate
from .swin import SwinEncoder, load_swin_pretrained
from .text import TextEncoder
from .xcit import XCiTColumnar, XCiTHierarchical, load_xcit_pretrained

if TYPE_CHECKING:
    from ..processing import RefSegProcessor



@dataclass
class RefSegOutput(ModelOutput):
    """What ``RefSegModel.forward`` returns (a transformers ``ModelOutput``: ``out.logits``, ``out[0]``).

    Its fields do not depend on train/eval mode.

    loss: with ``labels``: the scalar training loss of ``model.loss`` (CE + Dice on the logits at the
        input size, plus the deep-supervision heads' losses when the model has them); else None.
    logits: (B, 2, H'/4, W'/4) background/object logits at stride 4 over the input padded to
        ``pad_multiple`` (H', W'), as Segformer's. ``RefSegProcessor.post_process_masks`` brings them to
        any size in one resize; ``RefSegModel.upsample_logits`` to the input size as the loss sees them.
    attentions: with ``output_attentions``: per stage, the PWAM's softmax weight of each word at each
        position of the stage's token grid, (B, heads, T, h_i, w_i) float32 (summing to 1 over the
        words with attention_mask 1; 0 for padding). The grid covers the padded input.
    gate_magnitudes: with ``output_attentions``: per gated stage (1-3), the language gate's mean
        |S| over channels, (B, h_i, w_i) float32: how much language each position lets through.
    no_target_logits: (B,) logit of "the expression names no object in this image" from the no-target
        head (``model.no_target.enabled``); None when the model has no head (every checkpoint trained
        without it). ``RefSegProcessor.post_process_masks`` empties the mask where its sigmoid is above
        ``model.no_target.threshold``.
    """

    loss: Optional[torch.Tensor] = None
    logits: torch.Tensor = None
    attentions: Optional[tuple[torch.Tensor, ...]] = None
    gate_magnitudes: Optional[tuple[torch.Tensor, ...]] = None
    no_target_logits: Optional[torch.Tensor] = None


class NoTargetHead(nn.Module):
    """The learned no-target decision: the decoder's stride-4 map (what the mask classifier reads),
    mean- and max-pooled over the unpadded input, -> Linear -> ReLU -> Linear -> one logit per sample.

    The max-pool sees the best-matching position (is there anything the expression fits?), the mean
    the scene as a whole; ReLA decides "no target" from its own pooled region features.

    forward(hidden (B, C, h, w), valid (rows, cols) of the map that cover the unpadded input) -> (B,).
    """

    def __init__(self, in_channels: int, hidden_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * in_channels, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, 1))

    def forward(self, hidden: torch.Tensor, valid: Optional[tuple[int, int]] = None) -> torch.Tensor:
        if valid is not None:
            hidden = hidden[:, :, :valid[0], :valid[1]]
        pooled = torch.cat([hidden.mean((2, 3)), hidden.amax((2, 3))], dim=1)
        return self.mlp(pooled)[:, 0]


def _model_config(config: Union[ModelConfig, RunConfig]) -> ModelConfig:
    return config.model if isinstance(config, RunConfig) else config


def build_encoder(config: Union[ModelConfig, RunConfig], load_pretrained: bool = True) -> Encoder:
    """The vision encoder named by ``config.vision``, with ``vision.pretrained`` loaded if set (without the
    CrossViT wrapper: ``RefSegModel`` adds it)."""
    v = _model_config(config).vision
    if v.arch == "xcit_columnar":
        enc = XCiTColumnar(v.name, embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads,
                           patch_size=v.patch_size, out_indices=v.out_indices,
                           drop_path_rate=v.drop_path_rate, attention=v.attention)
    elif v.arch == "swin":
        enc = SwinEncoder(v.name, embed_dim=v.embed_dim, depths=v.swin_depths, num_heads=v.swin_heads,
                          window_size=v.window_size, drop_path_rate=v.drop_path_rate)
    else:  # xcit_hierarchical (the config's Literal admits nothing else)
        enc = XCiTHierarchical(v.hierarchical_dims, v.hierarchical_depths, v.hierarchical_heads,
                               drop_path_rate=v.drop_path_rate, attention=v.attention)
    if load_pretrained and v.pretrained:
        if isinstance(enc, SwinEncoder):
            load_swin_pretrained(enc, v.pretrained)
        elif isinstance(enc, XCiTColumnar):
            load_xcit_pretrained(enc, v.pretrained)
        else:
            raise ValueError("model.vision.pretrained: pretrained weights exist for the xcit_columnar and swin "
                             "encoders only")
    return enc


class RefSegModel(nn.Module):
    """Image + expression -> 2-class logits.

    Args:
        config: the ``ModelConfig`` (``model.*``; a whole ``RunConfig`` is accepted and its ``model``
            taken). Kept as ``model.config``.
        load_pretrained: load the text encoder's weights and ``vision.pretrained``; False builds the
            architecture only (weights come from a refseg checkpoint).
        text_source: where the text model's config/weights live (default: ``config.text.name``).

    forward(pixel_values (B,3,H,W) float, input_ids (B,T) long, attention_mask (B,T)) -> RefSegOutput.
    """

    def __init__(self, config: Union[ModelConfig, RunConfig], load_pretrained: bool = True,
                 text_source: Optional[str] = None):
        super().__init__()
        m = self.config = _model_config(config)
        self.encoder = build_encoder(m, load_pretrained=load_pretrained)
        self._text_source = text_source or m.text.name
        self.text_encoder = TextEncoder(self._text_source, trainable_layers=m.text.trainable_layers,
                                        train_embeddings=m.text.train_embeddings, load_weights=load_pretrained,
                                        train_dropout=m.text.train_dropout)
        dims = list(self.encoder.out_channels)
        self.pwams = nn.ModuleList([PWAM(d, self.text_encoder.hidden_size, m.fusion) for d in dims])
        # No gate after the last stage: nothing consumes V + S*F there (LAVT computes it and drops it).
        self.gates = nn.ModuleList([LanguageGate(d) for d in dims[:3]])
        self.norms = nn.ModuleList([nn.LayerNorm(d) for d in dims])
        # CrossViT wraps the encoder (and drives its stages); the model owns both, so the state-dict keys
        # stay encoder.* and crossvit.*
        self.crossvit = CrossViT(self.encoder, m.crossvit) if m.crossvit.enabled else None
        self.decoder = SimpleDecoder(dims, m.decoder)
        # Deep supervision: mask logits from the decoder's stride-16 and stride-8 maps, so the coarse
        # stages, where objects are chosen, get a direct gradient. Only the loss reads them.
        self.deep_heads = (nn.ModuleList([nn.Conv2d(m.decoder.hidden_dim, 2, 1) for _ in range(2)])
                           if m.loss.deep_supervision_weight > 0 else None)
        self.criterion = SegmentationLoss(m.loss)  # no parameters, no state_dict entries
        # Built last, so that the modules above draw the same initial weights with or without it.
        self.no_target_head = (NoTargetHead(m.decoder.hidden_dim, m.no_target.hidden_dim or m.decoder.hidden_dim)
                               if m.no_target.enabled else None)
        self.pad_multiple = (self.encoder if self.crossvit is None else self.crossvit).pad_multiple

    # -- forward --------------------------------------------------------------------------------
    def forward_features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """The 4 fused stage maps [F1..F4], F_i (B, C_i, H'/s_i, W'/s_i), s = 4/8/16/32.

        H', W' are H, W padded (bottom/right, zeros) to multiples of ``pad_multiple``.
        """
        return self._encode(pixel_values, input_ids, attention_mask)[0]

    def _encode(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                output_attentions: bool = False):
        """(stage maps, PWAM attentions or None, gate magnitudes or None); see ``RefSegOutput``."""
        words = self.text_encoder(input_ids, attention_mask)  # (B, T, Dt)
        x = pad_to_multiple(pixel_values, self.pad_multiple)
        feats, attentions, gates = [], [], []

        def fuse(i: int, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
            """After stage i: PWAM_i, the stage's map for the decoder, and V + gate_i(F_i) * F_i for stage i+1."""
            H, W = hw
            if output_attentions:
                fused, attn = self.pwams[i].forward_with_attention(tokens, (H, W), words, attention_mask)
                attentions.append(attn.transpose(-2, -1).reshape(*attn.shape[:2], -1, H, W))  # (B, h, T, H, W)
            else:
                fused = self.pwams[i](tokens, (H, W), words, attention_mask)  # (B, N, C_i)
            if i < 3:
                gate = self.gates[i](fused)
                if output_attentions:
                    gates.append(gate.abs().float().mean(-1).reshape(-1, H, W))
                tokens = tokens + gate * fused
            feats.append(self.encoder.stage_output(i, self.norms[i](fused), H, W))
            return tokens

        # the stage loop: the encoder's, or CrossViT's driving it
        (self.encoder if self.crossvit is None else self.crossvit).forward_fused(x, fuse)
        if not output_attentions:
            return feats, None, None
        return feats, tuple(attentions), tuple(gates)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: Optional[torch.Tensor] = None, output_attentions: bool = False) -> RefSegOutput:
        """pixel_values (B,3,H,W) float (normalised: ``RefSegProcessor.to_device``), input_ids and
        attention_mask (B,T), labels (B,H,W) long in {0, 1} or None -> RefSegOutput (see there)."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values: expected (B, 3, H, W), got {tuple(pixel_values.shape)}")
        size = pixel_values.shape[-2:]
        x = pad_to_multiple(pixel_values, self.pad_multiple)
        feats, attentions, gates = self._encode(x, input_ids, attention_mask, output_attentions)
        out = self.decoder(feats)
        no_target = None
        if self.no_target_head is not None:  # pooled over the stride-4 cells that cover the unpadded input
            s = self.decoder.out_stride
            no_target = self.no_target_head(out.hidden_states[-1], (-(-size[0] // s), -(-size[1] // s)))
        loss = None
        if labels is not None:
            if tuple(labels.shape[-2:]) != tuple(size):
                raise ValueError(f"labels: expected (B, {size[0]}, {size[1]}) like the input, got {tuple(labels.shape)}")
            # one fp32 copy of each, shared by every loss term: their gradients add up in fp32 and are
            # rounded to the autocast dtype once (two casts of a bf16 tensor would round twice)
            logits = self.upsample_logits(out.logits, size).float()
            deep = [self.upsample_logits(head(h), size).float()
                    for head, h in zip(self.deep_heads or (), out.hidden_states[:2])]
            with torch.autocast(pixel_values.device.type, enabled=False):  # the loss is always fp32
                loss = self.criterion(logits, labels, deep, no_target)
        return RefSegOutput(loss=loss, logits=out.logits, attentions=attentions, gate_magnitudes=gates,
                            no_target_logits=no_target)

    def upsample_logits(self, logits: torch.Tensor, size) -> torch.Tensor:
        """(B, K, h, w) maps over the padded input -> (B, K, H, W) at the unpadded input size ``size``:
        the decoder's bilinear upsampling to the padded size, cropped (what the loss scores)."""
        H, W = int(size[0]), int(size[1])
        padded = [-(-n // self.pad_multiple) * self.pad_multiple for n in (H, W)]
        return self.decoder.resize(logits, padded)[:, :, :H, :W]

    # -- checkpoints ----------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, run_config: Optional[RunConfig] = None,
                        processor=None, model_card: Optional[str] = None,
                        state_dict: Optional[dict] = None) -> Path:
        """Write a self-contained checkpoint directory (config.yaml, model.safetensors, text/, the
        processor, README.md).

        ``run_config``: how the model was trained (written as config.yaml; its ``model`` must be this
        model's config); default: this model's config with default data/train/eval sections.
        ``processor``: the ``RefSegProcessor`` to save (default: this config's, with the text encoder's
        tokenizer). ``model_card``: the README.md text (default: ``refseg.modelcard.model_card``).
        ``state_dict``: the weights to write (default: this model's; a sharded (FSDP) model passes the
        full state dict its processes gathered).
        Everything is written to a temporary sibling directory first and renamed into place, so a
        crash never leaves a half-written checkpoint at ``path``. Returns the path.
        """
        from safetensors.torch import save_file

        from ..modelcard import model_card as make_card
        from ..processing import RefSegProcessor

        run_config = run_config or RunConfig.for_model(self.config)
        if run_config.model != self.config:
            raise ValueError("save_pretrained: run_config.model differs from the model's own config")
        if processor is None:
            from .text import load_tokenizer
            processor = RefSegProcessor.from_config(self.config, load_tokenizer(self._text_source))
        processor.pad_multiple = self.pad_multiple  # its logits cover the input padded to this
        with atomic_directory(path) as tmp:
            run_config.save(tmp / CONFIG_FILE)
            # clone: safetensors refuses tensors that share storage; contiguous CPU copies always save
            weights = self.state_dict() if state_dict is None else state_dict
            state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "producer": "refseg"})
            self.text_encoder.model.config.save_pretrained(str(tmp / TEXT_DIR))
            processor.save_pretrained(tmp)
            (tmp / MODEL_CARD).write_text(model_card if model_card is not None else make_card(run_config))
        return Path(path)

    def push_to_hub(self, repo_id: str, run_config: Optional[RunConfig] = None, processor=None,
                    model_card: Optional[str] = None, **kwargs):
        """Save a checkpoint directory (``save_pretrained``) to a temporary folder and upload it to the
        Hugging Face Hub as ``repo_id`` (``refseg.hub.push``; ``kwargs``: private, token, revision,
        commit_message). Returns the commit info."""
        import tempfile

        from ..hub import push

        with tempfile.TemporaryDirectory() as tmp:
            directory = self.save_pretrained(Path(tmp) / "checkpoint", run_config, processor, model_card)
            return push(directory, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "RefSegModel":
        """Load a checkpoint (``save_pretrained``): a local directory or a Hub id ``org/name[@revision]``
        (``refseg.hub.resolve_checkpoint``; offline from the Hugging Face cache with HF_HUB_OFFLINE=1).
        Strict; returns an eval() model.

        Safe while a training run replaces the checkpoint (``best/`` after an evaluation): the model
        comes whole from one version (``refseg.utils.read_directory``).
        """
        return load_checkpoint(path, map_location).model

    @classmethod
    def _load_directory(cls, path: Path, map_location: str | torch.device = "cpu"):
        """(model in eval mode, its RunConfig) from one complete checkpoint directory."""
        path = checkpoint_directory(path)
        try:
            cfg = load_run_config(path / CONFIG_FILE)
        except ConfigError as e:
            raise CheckpointError(f"{path}: bad {CONFIG_FILE}: {e}") from None
        return cls._with_weights(path, cfg.model, map_location).eval(), cfg

    @classmethod
    def from_weights(cls, path: str | os.PathLike, config: Union[ModelConfig, RunConfig],
                     map_location: str | torch.device = "cpu") -> "RefSegModel":
        """The model of ``config`` with every weight from checkpoint directory ``path`` (fine-tuning).

        The text architecture comes from the checkpoint; the weights must match ``config`` tensor for
        tensor (else CheckpointError). Returns the model in train mode. Safe while a run replaces the
        checkpoint, as ``from_pretrained``.
        """
        return read_directory(Path(path).expanduser(),
                              lambda d: cls._with_weights(checkpoint_directory(d), config, map_location))

    @classmethod
    def _with_weights(cls, path: Path, config: Union[ModelConfig, RunConfig],
                      map_location: str | torch.device = "cpu") -> "RefSegModel":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path / WEIGHTS_FILE), device=str(map_location))
        except Exception as e:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: cannot read weights ({first_line(e)})") from None
        try:
            model = cls(config, load_pretrained=False, text_source=str(path / TEXT_DIR))
        except (RuntimeError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot build the model ({first_line(e)})") from None
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # size mismatch
            raise CheckpointError(f"{path / WEIGHTS_FILE}: does not match {CONFIG_FILE} ({first_line(e)})") from None
        if missing or unexpected:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: does not match {CONFIG_FILE} "
                                  f"({len(missing)} missing e.g. {missing[:3]}, {len(unexpected)} unexpected e.g. {unexpected[:3]})")
        return model.to(map_location)


def build_model(config: Union[ModelConfig, RunConfig], load_pretrained: bool = True) -> RefSegModel:
    """The model described by ``config`` (a ``ModelConfig``, or a ``RunConfig``'s ``model``)."""
    return RefSegModel(config, load_pretrained=load_pretrained)


@dataclass
class Checkpoint:
    """One version of a checkpoint, loaded: the model (eval mode), its processor, the run config it
    was trained with, and the local directory it was read from (a Hub id's snapshot in the cache)."""

    model: RefSegModel
    processor: "RefSegProcessor"
    run_config: RunConfig
    path: Path

    def __iter__(self):  # model, processor = load_checkpoint(path)
        return iter((self.model, self.processor))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """A checkpoint directory or Hub id -> ``Checkpoint`` (model in eval mode, processor, run config),
    all from one version of it (see ``RefSegModel.from_pretrained``); the directory is checked once."""
    from ..processing import RefSegProcessor

    directory = resolve_checkpoint(path)

    def load(d: Path) -> Checkpoint:
        model, cfg = RefSegModel._load_directory(d, map_location=map_location)
        processor = RefSegProcessor.from_pretrained(d, cfg.model)
        processor.pad_multiple = model.pad_multiple  # (checkpoints written before processors lack it)
        return Checkpoint(model, processor, cfg, directory)

    return read_directory(directory, load)
