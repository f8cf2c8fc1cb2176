"""Predictor: one RGB image + an expression -> a boolean mask at the image's own size.

    pred = Predictor.from_pretrained("runs/x/best")
    mask = pred.predict(image_rgb_uint8, "the man on the left")     # (H, W) bool
    prob = pred.predict_proba(image_rgb_uint8, "the man on the left")  # (H, W) float32 in [0, 1]

Preprocessing is the training one (``image_to_uint8`` square resize to the model's
``config.image_size``, ``normalize_pixels`` on the model's device, ``encode_text`` to ``config.text.max_tokens``); logits are upsampled
bilinearly to (H, W).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from .data.transforms import encode_text, image_to_uint8, normalize_pixels
from .ops import autocast, object_margin, resize


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """Wraps a RefSegModel and its tokenizer for single-image inference.

    Args:
        model: a ``RefSegModel`` (put in eval mode and moved to ``device``).
        tokenizer: the matching tokenizer.
        device: "cpu", "cuda", a torch.device or None (CUDA when available).
    """

    def __init__(self, model, tokenizer, device: Optional[Union[str, torch.device]] = None):
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.config = model.config  # the ModelConfig
        self.image_size = self.config.image_size
        self.max_tokens = self.config.text.max_tokens

    @classmethod
    def from_pretrained(cls, path, device: Optional[Union[str, torch.device]] = None) -> "Predictor":
        """A checkpoint directory (``save_pretrained``) -> Predictor."""
        from .models import load_checkpoint

        model, tokenizer = load_checkpoint(path)
        return cls(model, tokenizer, device=device)

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

    def _inputs(self, image: np.ndarray, text: Union[str, Sequence[str]]):
        """The model's inputs for K expressions: pixels (K, 3, S, S), input_ids and attention_mask (K, T)."""
        image = self._check_image(image)
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("text: expected a non-empty expression")
        # uint8 to the device, normalised there (as the loader's batches): a quarter of the bytes to copy
        pixels = normalize_pixels(image_to_uint8(image, self.image_size, self.config.image_resize)
                                  .unsqueeze(0).to(self.device))
        ids, mask = encode_text(self.tokenizer, texts, self.max_tokens, self.config.text.truncation)
        return pixels.expand(len(texts), -1, -1, -1), ids.to(self.device), mask.to(self.device)

    def _model_logits(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> torch.Tensor:
        """(K, 2, S, S) float32 logits at the model's input size S, on the model's device."""
        inputs = self._inputs(image, text)
        with torch.inference_mode(), autocast(self.device):
            return self.model(*inputs).logits.float()

    def explain(self, image: np.ndarray, text: str):
        """One forward pass that also keeps the PWAMs' word attentions and the gates' magnitudes:
        a ``refseg.explain.Explanation`` (per-word maps per stage, and that forward's mask)."""
        from .explain import from_model_output

        pixels, ids, mask = self._inputs(image, text)
        with torch.inference_mode(), autocast(self.device):
            out = self.model(pixels, ids, mask, output_attentions=True)
            pred = (object_margin(out.logits.float(), image.shape[:2])[0] > 0).cpu().numpy()
        return from_model_output(out, ids, mask, self.tokenizer, text, pixels.shape[-2:], self.model.pad_multiple,
                                 pred)

    def predict_logits(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> torch.Tensor:
        """Logits at the image size: (2, H, W) for one expression, (K, 2, H, W) for K expressions. float32, CPU."""
        with torch.inference_mode():
            logits = resize(self._model_logits(image, text), image.shape[:2]).cpu()
        return logits[0] if isinstance(text, str) else logits

    def _margin(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> torch.Tensor:
        """Object-minus-background logit at the image size, (H, W) or (K, H, W), CPU."""
        with torch.inference_mode():
            margin = object_margin(self._model_logits(image, text), image.shape[:2]).cpu()
        return margin[0] if isinstance(text, str) else margin

    def predict_proba(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> np.ndarray:
        """Object probability (softmax over the 2 classes = sigmoid of the margin), float32 (H, W) or (K, H, W)."""
        return torch.sigmoid(self._margin(image, text)).numpy()

    def predict(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> np.ndarray:
        """Boolean mask (H, W) (object logit above background), or (K, H, W) for a list of expressions."""
        return (self._margin(image, text) > 0).numpy()
