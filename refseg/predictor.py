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

``backend`` chooses how the forward runs (``BACKENDS``): ``fp32`` eager; ``bf16`` (CPU or CUDA) and
``fp16`` (CUDA) autocast; ``channels_last`` memory format; ``compile`` (``torch.compile``, its first
calls at each batch size compile); ``int8`` (dynamic int8 quantisation of the Linear layers, CPU);
``onnx`` (ONNX Runtime on an export, ``python -m refseg.export onnx``). ``auto``: bf16 on CUDA,
channels_last on the CPU: the fastest CPU backend whose masks agree with fp32 (mean IoU 1.0000) that
needs no warm-up (``compile`` was faster per call but its first call compiles for about a minute;
bf16 and int8 changed the masks: RESULTS.md). ``benchmarks/inference_backends.py`` measures them.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from .ops import autocast


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


BACKENDS = ("auto", "fp32", "bf16", "fp16", "channels_last", "compile", "int8", "onnx")


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, channels_last elsewhere; ValueError for an unknown name or one the device lacks."""
    backend = (backend or "auto").lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "bf16" if device.type == "cuda" else "channels_last"
    if backend == "fp16" and device.type != "cuda":
        raise ValueError("backend fp16 needs a CUDA device (on the CPU use bf16)")
    if backend in ("int8", "onnx") and device.type != "cpu":
        raise ValueError(f"backend {backend} runs on the CPU only (use --device cpu)")
    return backend


def in_backend_layout(model, backend: str):
    """``model`` in the memory layout ``backend`` runs it in (channels_last: NHWC weights; else as it is).
    evaluate.py scores the default backend's kernels through this, as the Predictor runs them."""
    return model.to(memory_format=torch.channels_last) if backend == "channels_last" else model


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
        backend: one of ``BACKENDS`` (see the module's docstring); default ``auto``.
        onnx_path: the exported model for ``backend="onnx"`` (default: exported now into a temporary file).
    """

    def __init__(self, model, processor, device: Optional[Union[str, torch.device]] = None, run_config=None,
                 no_target_threshold: Optional[float] = None, backend: Optional[str] = "auto", onnx_path=None):
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
        self.backend = resolve_backend(backend, self.device)
        self._precision = {"bf16": "bf16", "fp16": "fp16"}.get(self.backend, "no")
        self._run = self.model  # the forward of the backend: kwargs -> an object with .logits
        self._setup_backend(onnx_path)

    def _setup_backend(self, onnx_path) -> None:
        self.model = self._run = in_backend_layout(self.model, self.backend)
        if self.backend == "compile":
            self._run = torch.compile(self.model)
        elif self.backend == "int8":
            from torch.ao.quantization import quantize_dynamic

            self.model = self._run = quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        elif self.backend == "onnx":
            from .export import OnnxRunner

            self._run = OnnxRunner.for_model(self.model, self.processor, onnx_path)

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
    def from_pretrained(cls, path, device: Optional[Union[str, torch.device]] = None, backend: Optional[str] = "auto",
                        onnx_path=None) -> "Predictor":
        """A checkpoint directory (``save_pretrained``) or Hub id ``org/name[@revision]`` -> Predictor."""
        from .models import load_checkpoint

        ckpt = load_checkpoint(path)
        pred = cls(ckpt.model, ckpt.processor, device=device, run_config=ckpt.run_config, backend=backend,
                   onnx_path=onnx_path)
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
        return self._to_device(self.processor(images=image, text=texts))

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = self.processor.to_device(batch, self.device)
        if self.backend == "channels_last":
            inputs["pixel_values"] = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
        return inputs

    def _forward(self, image: np.ndarray, text: Union[str, Sequence[str]], output_attentions: bool = False):
        """(model inputs, RefSegOutput) for K expressions of one image."""
        inputs = self._inputs(image, text)
        with torch.inference_mode(), autocast(self.device, self._precision):
            if output_attentions:  # the eager model: compiled and exported forwards return logits only
                return inputs, self.model(**inputs, output_attentions=True)
            return inputs, self._run(**inputs)

    def forward_many(self, requests: Sequence[tuple[np.ndarray, Sequence[str]]]) -> list[tuple]:
        """Several requests, each (image, its K expressions), in ONE forward -> per request (the
        object-minus-background margin (K, H, W) float32 on the CPU at that image's own size, the
        no-target probabilities (K,) float32 or None without a no-target head).

        The images may differ in size: each is resized to the processor's uint8 planes, the planes and
        token ids of all requests are stacked into one batch, and each request's rows of the logits are
        brought back to its own image (the dynamic batcher of ``refseg.serve`` runs this).
        """
        images, counts, parts = [], [], []
        for image, texts in requests:
            texts = [texts] if isinstance(texts, str) else list(texts)
            if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
                raise ValueError("text: expected a non-empty expression")
            image = self._check_image(image)
            images.append(image)
            counts.append(len(texts))
            parts.append(self.processor(images=image, text=texts))
        if not parts:
            return []
        batch = {k: torch.cat([p[k] for p in parts]) for k in ("pixel_values", "input_ids", "attention_mask")}
        inputs = self._to_device(batch)
        with torch.inference_mode():
            with autocast(self.device, self._precision):
                out = self._run(**inputs)
            margins = [self.processor.post_process_logits(chunk, image.shape[:2]).cpu()
                       for chunk, image in zip(out.logits.split(counts), images)]
        nt = getattr(out, "no_target_logits", None)
        if nt is None:
            return [(m, None) for m in margins]
        probs = torch.sigmoid(nt.float()).cpu().numpy()
        return list(zip(margins, np.split(probs, np.cumsum(counts)[:-1])))

    def margins_many(self, requests: Sequence[tuple[np.ndarray, Sequence[str]]]) -> list[torch.Tensor]:
        """``forward_many``'s margins alone (the decoder's, before any no-target decision)."""
        return [m for m, _ in self.forward_many(requests)]

    def _margin(self, image: np.ndarray, text: Union[str, Sequence[str]]) -> torch.Tensor:
        """Object-minus-background logit at the image size, (H, W) or (K, H, W), float32 on the CPU."""
        margin = self.margins_many([(image, text)])[0]
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
