"""RefSegProcessor: everything between a user's (image, expression) and the model, both ways.

    processor = RefSegProcessor.from_pretrained("runs/x/best")
    inputs = processor(images=image_rgb_uint8, text=["the man on the left"])   # CPU: uint8 + token ids
    batch = processor.to_device(inputs, "cuda")                                 # device: float pixels
    out = model(**batch)
    mask = processor.post_process_masks(out.logits, image_rgb_uint8.shape[:2],
                                        no_target_logits=out.no_target_logits)  # (K, H, W) bool

The processor habit of transformers (CLIPSeg's, Segformer's): one object owns the text cleaning, the
tokenizer and its truncation, the square resize to uint8 planes (CPU side: loader workers and the
Predictor), the ImageNet normalisation (device side: a quarter of the bytes cross to the device), and
the way back from the model's stride-4 logits to a mask at any size in one bilinear resize. The
trainer, evaluation, gallery, Predictor, explain and app all go through it; nothing else preprocesses.

Saved in every checkpoint directory as ``processor_config.json`` plus the tokenizer's own files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .data.transforms import clean_text, encode_text, image_to_uint8, normalize_pixels
from .errors import CheckpointError, first_line
from .hub import LEGACY_TOKENIZER_DIR, PROCESSOR_FILE
from .ops import resample_from_stride

Images = Union[np.ndarray, Sequence[np.ndarray]]


class RefSegProcessor:
    """Preprocessing and post-processing of one model configuration.

    Args:
        tokenizer: the text encoder's tokenizer (a transformers tokenizer).
        image_size: S, the square input side (``model.image_size``).
        image_resize: ``opencv`` or ``pil`` (``model.image_resize``).
        max_tokens: T (``model.text.max_tokens``).
        truncation: ``sep`` or ``cut`` (``model.text.truncation``).
        align_corners: the decoder's upsampling convention (``model.decoder.align_corners``), used when
            logits are brought to another size.
        pad_multiple: the model pads its input (bottom/right) to a multiple of this
            (``RefSegModel.pad_multiple``): its logits cover that padded extent. None: the logits are
            taken to cover 4x their size (set from the model when it is saved or wrapped).
        no_target_threshold: a sample whose no-target probability (sigmoid of the model's
            ``no_target_logits``) is above this gets an empty mask (``model.no_target.threshold``; taken
            from the model's config, not saved in ``processor_config.json``).
    """

    def __init__(self, tokenizer, image_size: int, image_resize: str = "opencv", max_tokens: int = 20,
                 truncation: str = "sep", align_corners: bool = False, pad_multiple: Optional[int] = None,
                 no_target_threshold: float = 0.5):
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.image_resize = image_resize
        self.max_tokens = int(max_tokens)
        self.truncation = truncation
        self.align_corners = bool(align_corners)
        self.pad_multiple = None if pad_multiple is None else int(pad_multiple)
        self.no_target_threshold = float(no_target_threshold)

    # -- construction and files -----------------------------------------------------------------
    @classmethod
    def from_config(cls, model_config, tokenizer=None, pad_multiple: Optional[int] = None) -> "RefSegProcessor":
        """The processor of a ``ModelConfig``; the tokenizer is ``model.text.name``'s unless given."""
        if tokenizer is None:
            from .models.text import load_tokenizer
            tokenizer = load_tokenizer(model_config.text.name)
        return cls(tokenizer, image_size=model_config.image_size, image_resize=model_config.image_resize,
                   max_tokens=model_config.text.max_tokens, truncation=model_config.text.truncation,
                   align_corners=model_config.decoder.align_corners, pad_multiple=pad_multiple,
                   no_target_threshold=model_config.no_target.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"processor_class": type(self).__name__, "image_size": self.image_size,
                "image_resize": self.image_resize, "max_tokens": self.max_tokens, "truncation": self.truncation,
                "align_corners": self.align_corners, "pad_multiple": self.pad_multiple, "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225]}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``processor_config.json`` and the tokenizer's files into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        self.tokenizer.save_pretrained(str(directory))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, model_config=None) -> "RefSegProcessor":
        """The processor saved in a checkpoint directory.

        A checkpoint written before processors existed has no ``processor_config.json``: its tokenizer
        is in ``tokenizer/`` and the settings come from ``model_config`` (its config.yaml's ``model``).
        The no-target threshold is ``model_config``'s (default 0.5).
        """
        from .models.text import load_tokenizer

        directory = Path(directory)
        spec = directory / PROCESSOR_FILE
        try:
            if spec.is_file():
                settings = json.loads(spec.read_text())
                if not isinstance(settings, dict):
                    raise ValueError("expected a JSON object")
                tokenizer = load_tokenizer(str(directory))
                return cls(tokenizer, image_size=settings["image_size"],
                           image_resize=settings.get("image_resize", "opencv"),
                           max_tokens=settings.get("max_tokens", 20), truncation=settings.get("truncation", "sep"),
                           align_corners=settings.get("align_corners", False),
                           pad_multiple=settings.get("pad_multiple"),
                           no_target_threshold=0.5 if model_config is None else model_config.no_target.threshold)
            if model_config is None:
                raise CheckpointError(f"{directory}: missing {PROCESSOR_FILE}")
            return cls.from_config(model_config, load_tokenizer(str(directory / LEGACY_TOKENIZER_DIR)))
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - json, KeyError and each tokenizer backend's own errors
            raise CheckpointError(f"{directory}: cannot load the processor ({type(e).__name__}: "
                                  f"{first_line(e)})") from None

    # -- CPU side -------------------------------------------------------------------------------
    clean_text = staticmethod(clean_text)

    def encode_text(self, texts: Union[str, Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Expressions -> input_ids, attention_mask (K, max_tokens) long (cleaned here, once)."""
        return encode_text(self.tokenizer, [texts] if isinstance(texts, str) else list(texts), self.max_tokens,
                           self.truncation)

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Whether each expression has more word pieces than the model reads (``max_tokens``)."""
        return [len(ids) > self.max_tokens
                for ids in self.tokenizer([clean_text(t) for t in texts], verbose=False)["input_ids"]]

    def image_to_uint8(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> uint8 (3, S, S) planes (the square resize of ``image_resize``)."""
        return image_to_uint8(image, self.image_size, self.image_resize)

    def __call__(self, images: Optional[Images] = None, text: Union[str, Sequence[str], None] = None
                 ) -> dict[str, torch.Tensor]:
        """CPU tensors for the model: ``pixel_values`` uint8 (B, 3, S, S), ``input_ids`` and
        ``attention_mask`` (B, T) long.

        One image with K expressions gives B = K (the image's planes are shared, not copied); otherwise
        images and expressions pair one to one.
        """
        out: dict[str, torch.Tensor] = {}
        texts = None if text is None else ([text] if isinstance(text, str) else list(text))
        if texts is not None:
            out["input_ids"], out["attention_mask"] = self.encode_text(texts)
        if images is not None:
            single = isinstance(images, np.ndarray)
            planes = torch.stack([self.image_to_uint8(im) for im in ([images] if single else images)])
            if texts is not None and planes.shape[0] != len(texts):
                if planes.shape[0] != 1:
                    raise ValueError(f"{planes.shape[0]} images for {len(texts)} expressions: give one image, "
                                     f"or one image per expression")
                planes = planes.expand(len(texts), -1, -1, -1)
            out["pixel_values"] = planes
        return out

    # -- device side ----------------------------------------------------------------------------
    @staticmethod
    def normalize(pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float32 ImageNet-normalised, on the tensor's device."""
        return normalize_pixels(pixel_values)

    def to_device(self, batch: dict[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
        """A processor output or collated loader batch -> the model's keyword arguments on ``device``.

        ``pixel_values`` float32 (B, 3, S, S), normalised on the device after a non-blocking copy of the
        uint8 planes (from pinned memory in a loader); ``input_ids`` / ``attention_mask`` (B, T) long;
        ``labels`` (B, S, S) long when the batch has them.
        """
        out = {"pixel_values": self.normalize(batch["pixel_values"].to(device, non_blocking=True)),
               "input_ids": batch["input_ids"].to(device, non_blocking=True),
               "attention_mask": batch["attention_mask"].to(device, non_blocking=True)}
        if "labels" in batch:
            out["labels"] = batch["labels"].to(device, non_blocking=True).long()
        return out

    # -- back to the image ----------------------------------------------------------------------
    def post_process_logits(self, logits: torch.Tensor, size: Sequence[int],
                            input_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """The object-minus-background margin at ``size`` (H, W): (B, H, W) float32.

        ``logits``: the model's (B, 2, h, w) at stride 4 over the (padded) input; ``input_size``: the
        input's (H_in, W_in) before padding (default S x S). One bilinear resize, straight from the
        stride-4 map to ``size``, with the decoder's convention (the margin is resized, not both
        classes: resizing is linear, so it is the margin of the resized logits with half the work).
        """
        margin = (logits[:, 1:] - logits[:, :1]).float()
        return self.resample(margin, size, input_size)[:, 0]

    def resample(self, maps: torch.Tensor, size: Sequence[int], input_size: Optional[Sequence[int]] = None
                 ) -> torch.Tensor:
        """(B, K, h, w) maps over the model's padded input -> (B, K, H, W) at ``size``, one resize."""
        input_size = tuple(input_size or (self.image_size, self.image_size))
        padded = None
        if self.pad_multiple:
            padded = [-(-int(n) // self.pad_multiple) * self.pad_multiple for n in input_size]
        return resample_from_stride(maps, input_size, size, self.align_corners, padded)

    def post_process_masks(self, logits: torch.Tensor, size: Sequence[int],
                           input_size: Optional[Sequence[int]] = None,
                           no_target_logits: Optional[torch.Tensor] = None,
                           no_target_threshold: Optional[float] = None) -> torch.Tensor:
        """(B, H, W) bool masks at ``size``: object logit above background (ties go to background).

        ``no_target_logits``: the model's (B,) ``RefSegOutput.no_target_logits`` (None: the model has no
        no-target head, and the masks are the decoder's as they are). A sample whose no-target
        probability is above ``no_target_threshold`` (default ``self.no_target_threshold``) gets an
        all-False mask: "no object matches". Several objects come as one mask, their union.
        """
        masks = self.post_process_logits(logits, size, input_size) > 0
        if no_target_logits is not None:
            masks &= ~self.no_target(no_target_logits, no_target_threshold).to(masks.device).view(-1, 1, 1)
        return masks

    def no_target(self, no_target_logits: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
        """(B,) bool: the no-target probability is above ``threshold`` (default ``self.no_target_threshold``)."""
        t = self.no_target_threshold if threshold is None else float(threshold)
        return torch.sigmoid(no_target_logits.float()) > t

    def __repr__(self) -> str:
        return (f"RefSegProcessor(image_size={self.image_size}, image_resize={self.image_resize!r}, "
                f"max_tokens={self.max_tokens}, truncation={self.truncation!r}, "
                f"align_corners={self.align_corners}, tokenizer={type(self.tokenizer).__name__})")
