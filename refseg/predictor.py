"""Predictor: one RGB image + an expression -> a boolean mask at the image's own size.

    pred = Predictor.from_pretrained("runs/x/best")          # or a Hub id: "org/name[@revision]"
    mask = pred.predict(image_rgb_uint8, "the man on the left")     # (H, W) bool
    prob = pred.predict_proba(image_rgb_uint8, "the man on the left")  # (H, W) float32 in [0, 1]
    p_none = pred.no_target_proba(image_rgb_uint8, "the purple star")  # float, or None without a head

With a no-target head (``model.no_target.enabled``) ``predict`` returns an all-False mask when the
model's no-target probability is above ``no_target_threshold`` (``model.no_target.threshold``): "no
object matches". An expression that names several objects gets one mask, their union.

Everything between the image and the model is the checkpoint's ``RefSegProcessor`` (the training
preprocessing, normalisation on the model's device, and one resize from the model's stride-4 logits
to the image's size).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from .ops import autocast


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """Wraps a RefSegModel and its processor for single-image inference.

    Args:
        model: a ``RefSegModel`` (put in eval mode and moved to ``device``).
        processor: its ``RefSegProcessor`` (a tokenizer is accepted too: the processor of the model's
            config is built around it).
        device: "cpu", "cuda", a torch.device or None (CUDA when available).
        run_config: the checkpoint's RunConfig, when known (``from_pretrained`` sets it).
        no_target_threshold: the no-target probability above which a mask is emptied (default: the
            model's ``model.no_target.threshold``); ignored by a model without a no-target head.
    """

    def __init__(self, model, processor, device: Optional[Union[str, torch.device]] = None, run_config=None,
                 no_target_threshold: Optional[float] = None):
        from .processing import RefSegProcessor

        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device).eval()
        if not isinstance(processor, RefSegProcessor):
            processor = RefSegProcessor.from_config(model.config, processor)
        if processor.pad_multiple is None:
            processor.pad_multiple = model.pad_multiple
        self.processor = processor
        self.config = model.config  # the ModelConfig
        self.no_target_threshold = (model.config.no_target.threshold if no_target_threshold is None
                                    else no_target_threshold)
        self.run_config = run_config
        self.checkpoint_path = None

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def max_tokens(self) -> int:
        return self.processor.max_tokens

    @property
    def has_no_target_head(self) -> bool:
        """Whether the model decides "no object matches" itself (``model.no_target.enabled``)."""
        return getattr(self.model, "no_target_head", None) is not None

    @property
    def no_target_threshold(self) -> float:
        """The no-target probability above which ``predict`` returns an empty mask (the processor's)."""
        return self.processor.no_target_threshold

    @no_target_threshold.setter
    def no_target_threshold(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"no_target_threshold: expected a probability in [0, 1], got {value}")
        self.processor.no_target_threshold = float(value)

    @classmethod
    def from_pretrained(cls, path, device: Optional[Union[str, torch.device]] = None) -> "Predictor":
        """A checkpoint directory (``save_pretrained``) or Hub id ``org/name[@revision]`` -> Predictor."""
        from .models import load_checkpoint

        ckpt = load_checkpoint(path)
        pred = cls(ckpt.model, ckpt.processor, device=device, run_config=ckpt.run_config)
        pred.checkpoint_path = ckpt.path
        return pred

    @staticmethod
    def _check_image(image) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            raise ValueError(f"image: expected a numpy array (H, W, 3) uint8, got {type(image).__name__}")
        if image.ndim == 2:  # grayscale
            image = np.repeat(image[:, :, None], 3, axis=2)
        elif image.ndim == 3 and image.shape[2] == 4:  # RGBA: drop alpha
            image = image[:, :, :3]
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"image: expected shape (H, W, 3), got {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"image: expected dtype uint8, got {image.dtype}")
        return image

    def _inputs(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> dict[str, torch.Tensor]:
        """The model's keyword arguments for K expressions on the device (pixels (K, 3, S, S) float32)."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("text: expected a non-empty expression")
        # uint8 to the device, normalised there (as the loader's batches): a quarter of the bytes to copy
        return self.processor.to_device(self.processor(images=image, text=texts), self.device)

    def _forward(self, image: np.ndarray, text: Union[str, Sequence[str]], output_attentions: bool = False):
        """(model inputs, RefSegOutput) for K expressions of one image."""
        inputs = self._inputs(image, text)
        with torch.inference_mode(), autocast(self.device):
            return inputs, self.model(**inputs, output_attentions=output_attentions)

    def _margin(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> torch.Tensor:
        """Object-minus-background logit at the image size, (H, W) or (K, H, W), float32 on the CPU."""
        image = self._check_image(image)
        _, out = self._forward(image, text)
        with torch.inference_mode():
            margin = self.processor.post_process_logits(out.logits, image.shape[:2]).cpu()
        return margin[0] if isinstance(text, str) else margin

    def _no_target_proba(self, out, single: bool):
        """The forward's no-target probabilities: a float (one expression) or (K,) float32, or None."""
        if out.no_target_logits is None:
            return None
        p = torch.sigmoid(out.no_target_logits.float()).cpu().numpy()
        return float(p[0]) if single else p

    def explain(self, image: np.ndarray, text: str):
        """The mask and, from the same forward pass, the PWAMs' word attentions and the gates'
        magnitudes: a ``refseg.explain.Explanation`` (per-word maps per stage, and that forward's mask)."""
        from .explain import from_model_output

        image = self._check_image(image)
        inputs, out = self._forward(image, text, output_attentions=True)
        with torch.inference_mode():
            mask = self.processor.post_process_masks(out.logits, image.shape[:2],
                                                     no_target_logits=out.no_target_logits)[0].cpu().numpy()
        return from_model_output(out, inputs["input_ids"], inputs["attention_mask"], self.tokenizer, text,
                                 inputs["pixel_values"].shape[-2:], self.model.pad_multiple, mask)

    def predict_logits(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> torch.Tensor:
        """Logits at the image size: (2, H, W) for one expression, (K, 2, H, W) for K expressions.
        float32, CPU; one resize from the model's stride-4 logits (both classes)."""
        image = self._check_image(image)
        inputs, out = self._forward(image, text)
        with torch.inference_mode():
            logits = self.processor.resample(out.logits.float(), image.shape[:2], inputs["pixel_values"].shape[-2:]).cpu()
        return logits[0] if isinstance(text, str) else logits

    def predict_proba(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> np.ndarray:
        """Object probability (softmax over the 2 classes = sigmoid of the margin), float32 (H, W) or (K, H, W).
        The decoder's per-pixel probability: the no-target decision does not change it (see
        ``no_target_proba``)."""
        return torch.sigmoid(self._margin(image, text)).numpy()

    def predict(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> np.ndarray:
        """Boolean mask (H, W) (object logit above background), or (K, H, W) for a list of expressions;
        all False where the no-target head (if the model has one) says nothing matches."""
        return self.predict_with_no_target(image, text)[0]

    def predict_with_no_target(self, image: np.ndarray, text: Union[str, Sequence[str]]):
        """(mask as ``predict``, no-target probability as ``no_target_proba``) from one forward pass."""
        image = self._check_image(image)
        _, out = self._forward(image, text)
        with torch.inference_mode():
            masks = self.processor.post_process_masks(out.logits, image.shape[:2],
                                                      no_target_logits=out.no_target_logits).cpu().numpy()
        single = isinstance(text, str)
        return (masks[0] if single else masks), self._no_target_proba(out, single)

    def no_target_proba(self, image: np.ndarray, text: Union[str, Sequence[str]]):
        """The model's probability that the expression names no object in the image: a float for one
        expression, (K,) float32 for a list; None when the model has no no-target head."""
        image = self._check_image(image)
        _, out = self._forward(image, text)
        return self._no_target_proba(out, isinstance(text, str))
