"""RefSegModel: LAVT-style referring segmentation with an XCiT encoder and a CrossViT branch.

    image ─► XCiT stage i ─► [CrossViT CLS exchange] ─► PWAM_i(words) ─► F_i ─┬─► LayerNorm_i ─► resample ─► decoder ─► refiner(image)
                 ▲                                                               │
                 └──────── V + gate_i(F_i) * F_i (stages 1-3) ◄──────────────────┘

Checkpoint directory (``save_pretrained`` / ``from_pretrained``)::

    config.yaml          full run Config
    model.safetensors    every weight, text encoder included
    text/config.json     the text model's Hugging Face config (architecture without the original path)
    tokenizer/           tokenizer.save_pretrained
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, ConfigError, load_run_config
from ..errors import CheckpointError, first_line
from ..utils import atomic_directory
from .crossvit import CrossViTBranch
from .decoder import MaskRefiner, SimpleDecoder
from .pwam import PWAM, LanguageGate
from .text import TextEncoder, load_tokenizer
from .xcit import XCiTColumnar, XCiTHierarchical, load_xcit_pretrained

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
TEXT_DIR = "text"
TOKENIZER_DIR = "tokenizer"


def build_encoder(cfg: Config, load_pretrained: bool = True) -> nn.Module:
    """The vision encoder named by ``cfg.model.vision``, with ``model.vision.pretrained`` loaded if set."""
    v = cfg.model.vision
    if v.arch == "xcit_columnar":
        enc = XCiTColumnar(v.name, embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads,
                           patch_size=v.patch_size, out_indices=v.out_indices,
                           drop_path_rate=v.drop_path_rate, attention=v.attention, out_strides=v.out_strides,
                           global_blocks=v.global_blocks)
    elif v.arch == "xcit_hierarchical":
        enc = XCiTHierarchical(v.hierarchical_dims, v.hierarchical_depths, v.hierarchical_heads,
                               drop_path_rate=v.drop_path_rate, attention=v.attention)
    else:
        raise ValueError(f"model.vision.arch: expected xcit_columnar or xcit_hierarchical, got '{v.arch}'")
    if load_pretrained and v.pretrained:
        if not isinstance(enc, XCiTColumnar):
            raise ValueError("model.vision.pretrained: pretrained weights exist only for the xcit_columnar encoder")
        load_xcit_pretrained(enc, v.pretrained)
    return enc


class RefSegModel(nn.Module):
    """Image + expression -> 2-class logits.

    Args:
        cfg: the full run ``Config`` (kept as ``model.config``).
        load_pretrained: load the text encoder's weights and ``model.vision.pretrained``; False builds
            the architecture only (weights come from a refseg checkpoint).
        text_source: where the text model's config/weights live (default: ``cfg.model.text.name``).

    forward(pixel_values (B,3,H,W) float, input_ids (B,T) long, attention_mask (B,T)) -> logits (B,2,H,W);
    with ``return_aux`` (training) also a dict of the auxiliary outputs the model has heads for:
    ``deep`` [(B,2,H,W) x 2], deep supervision from the decoder's stride-16 and stride-8 maps
    (``loss.deep_supervision_weight`` > 0), and ``semantic`` (B, semantic_classes, H/s, W/s) at the
    decoder's stride s (``model.decoder.semantic_classes`` > 0).
    """

    def __init__(self, cfg: Config, load_pretrained: bool = True, text_source: Optional[str] = None):
        super().__init__()
        self.config = cfg
        m = cfg.model
        self.encoder = build_encoder(cfg, load_pretrained=load_pretrained)
        self._text_source = text_source or m.text.name
        self.text_encoder = TextEncoder(self._text_source, trainable_layers=m.text.trainable_layers,
                                        train_embeddings=m.text.train_embeddings, load_weights=load_pretrained)
        dims = list(self.encoder.out_channels)
        dt = self.text_encoder.hidden_size
        f = m.fusion
        self.pwams = nn.ModuleList([PWAM(d, dt, key_dim=f.hidden_dim, value_dim=f.hidden_dim, num_heads=f.num_heads,
                                         dropout=f.dropout, spatial_cues=f.spatial_cues) for d in dims])
        # No gate after the last stage: nothing consumes V + S*F there (LAVT computes it and drops it).
        self.gates = nn.ModuleList([LanguageGate(d) for d in dims[:3]])
        self.norms = nn.ModuleList([nn.LayerNorm(d) for d in dims])
        c = m.crossvit
        self.crossvit = CrossViTBranch(dims, self.encoder.stage_heads, patch_size=c.patch_size, embed_dim=c.embed_dim,
                                       depth=c.depth, num_heads=c.num_heads, block=c.block) if c.enabled else None
        skips = {k: v for k, v in self.encoder.stem_channels.items() if k in (2, 4)} if m.decoder.stem_skips else None
        self.decoder = SimpleDecoder(dims, hidden_dim=m.decoder.hidden_dim, skip_channels=skips,
                                     align_corners=m.decoder.align_corners)
        rc = m.decoder.refine_channels
        self.refiner = MaskRefiner(rc) if rc else None
        k = m.decoder.semantic_classes
        # Auxiliary head over the decoder's last features (training only; inference ignores it).
        self.semantic_head = nn.Conv2d(self.decoder.out_channels, k, 1) if k else None
        # Deep supervision (training only): mask logits from the decoder's stride-16 and stride-8
        # maps, so the coarse stages, where objects are chosen, get a direct gradient.
        self.deep_heads = (nn.ModuleList([nn.Conv2d(m.decoder.hidden_dim, 2, 1) for _ in range(2)])
                           if cfg.loss.deep_supervision_weight > 0 else None)
        mult = self.encoder.pad_multiple
        if self.crossvit is not None:
            mult = mult * self.crossvit.patch_size // math.gcd(mult, self.crossvit.patch_size)
        self.pad_multiple = mult
        self._tokenizer = None
        self._tokenizer_dir: Optional[str] = None  # set by from_pretrained: the checkpoint's tokenizer/

    # -- forward --------------------------------------------------------------------------------
    def forward_features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, return_stem: bool = False):
        """The 4 fused stage maps [F1..F4], F_i (B, C_i, H'/s_i, W'/s_i), s = 4/8/16/32.

        H', W' are H, W padded (bottom/right, zeros) to multiples of ``pad_multiple``. With
        ``return_stem`` also the encoder stem's maps {stride: (B, c, H'/stride, W'/stride)}.
        """
        words = self.text_encoder(input_ids, attention_mask)  # (B, T, Dt)
        mask = attention_mask
        x = self._pad(pixel_values)
        tokens, (H, W), stem = self.encoder.embed(x, return_stem=True)
        cls = tb = hwb = None
        if self.crossvit is not None:
            tb, hwb = self.crossvit.embed(x)
            cls = self.crossvit.xcit_cls(x.shape[0])
        feats = []
        for i in range(4):
            if cls is not None:
                cls = self.crossvit.xcit_cls_to_stage(i, cls)
            tokens, (H, W), cls = self.encoder.forward_stage(i, tokens, H, W, cls)
            if self.crossvit is not None:
                tb = self.crossvit.forward_stage(i, tb, hwb)
                tokens, cls, tb = self.crossvit.exchange(i, tokens, cls, tb)
            fused = self.pwams[i](tokens, (H, W), words, mask)  # (B, N, C_i)
            if i < 3:
                tokens = tokens + self.gates[i](fused) * fused
            feats.append(self.encoder.stage_output(i, self.norms[i](fused), H, W))
        return (feats, stem) if return_stem else feats

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                return_aux: bool = False):
        """(B,3,H,W), (B,T), (B,T) -> logits (B, 2, H, W) at the input size [, dict of auxiliary outputs]."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values: expected (B, 3, H, W), got {tuple(pixel_values.shape)}")
        H, W = pixel_values.shape[-2:]
        x = self._pad(pixel_values)
        feats, stem = self.forward_features(x, input_ids, attention_mask, return_stem=True)
        logits, hidden = self.decoder(feats, stem, return_hidden=True)  # (B, 2, H'/s, W'/s), s = 4 or 2
        if self.refiner is not None:
            half = (x.shape[-2] // 2, x.shape[-1] // 2)  # H', W' are multiples of pad_multiple (>= 16)
            logits = self.refiner(self.decoder.resize(logits, half), F.avg_pool2d(x, 2))
        def to_input(t: torch.Tensor) -> torch.Tensor:  # (B, K, h, w) -> (B, K, H, W): the padded size, cropped
            return self.decoder.resize(t, x.shape[-2:])[:, :, :H, :W]

        logits = to_input(logits)
        if not return_aux:
            return logits
        aux = {}
        if self.deep_heads is not None:
            aux["deep"] = [to_input(head(h)) for head, h in zip(self.deep_heads, hidden[:2])]
        if self.semantic_head is not None:
            s = self.decoder.out_stride
            aux["semantic"] = self.semantic_head(hidden[-1])[:, :, :-(-H // s), :-(-W // s)]
        return logits, aux

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ph, pw = (-H) % self.pad_multiple, (-W) % self.pad_multiple
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    # -- tokenizer ------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer that matches the text encoder (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._text_source if self._tokenizer_dir is None else self._tokenizer_dir)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tok) -> None:
        self._tokenizer = tok

    # -- checkpoints ----------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, tokenizer=None) -> Path:
        """Write a self-contained checkpoint directory (config.yaml, model.safetensors, text/, tokenizer/).

        Everything is written to a temporary sibling directory first and renamed into place, so a
        crash never leaves a half-written checkpoint at ``path``. Returns the path.
        """
        from safetensors.torch import save_file

        with atomic_directory(path) as tmp:
            self.config.save(tmp / CONFIG_FILE)
            # clone: safetensors refuses tensors that share storage; contiguous CPU copies always save
            state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "producer": "refseg"})
            self.text_encoder.model.config.save_pretrained(str(tmp / TEXT_DIR))
            (tokenizer or self.tokenizer).save_pretrained(str(tmp / TOKENIZER_DIR))
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "RefSegModel":
        """Load a checkpoint directory written by ``save_pretrained`` (offline, strict). Returns an eval() model."""
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        if not path.exists():
            raise CheckpointError(f"checkpoint directory not found: {path}")
        if not path.is_dir():
            raise CheckpointError(f"not a checkpoint directory: {path}")
        for name in (CONFIG_FILE, WEIGHTS_FILE, f"{TEXT_DIR}/config.json", TOKENIZER_DIR):
            if not (path / name).exists():
                raise CheckpointError(f"{path}: missing {name} (not a complete refseg checkpoint)")
        try:
            cfg = load_run_config(path / CONFIG_FILE)
        except ConfigError as e:
            raise CheckpointError(f"{path}: bad {CONFIG_FILE}: {e}") from None
        try:
            state = load_file(str(path / WEIGHTS_FILE), device=str(map_location))
        except Exception as e:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: cannot read weights ({first_line(e)})") from None
        try:
            model = cls(cfg, load_pretrained=False, text_source=str(path / TEXT_DIR))
        except (RuntimeError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot build the model ({first_line(e)})") from None
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # size mismatch
            raise CheckpointError(f"{path / WEIGHTS_FILE}: does not match {CONFIG_FILE} ({first_line(e)})") from None
        if missing or unexpected:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: does not match {CONFIG_FILE} "
                                  f"({len(missing)} missing e.g. {missing[:3]}, {len(unexpected)} unexpected e.g. {unexpected[:3]})")
        model._tokenizer_dir = str(path / TOKENIZER_DIR)
        return model.to(map_location).eval()


def build_model(cfg: Config, load_pretrained: bool = True) -> RefSegModel:
    """The model described by ``cfg.model`` (see ``RefSegModel``)."""
    return RefSegModel(cfg, load_pretrained=load_pretrained)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """A checkpoint directory -> (model in eval mode, tokenizer)."""
    model = RefSegModel.from_pretrained(path, map_location=map_location)
    try:
        tok = model.tokenizer
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load the tokenizer ({first_line(e)})") from None
    return model, tok
