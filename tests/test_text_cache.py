"""The frozen text encoder's feature cache: the same losses and weights as without it, bounded, off when text trains."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY_OVERRIDES

TEXTS = ["the red circle", "a big blue square on the left", "green", "the small triangle at the top", "circle"]


def _batches(processor, steps: int = 4, batch: int = 3, size: int = 64):
    """Batches whose expressions recur (at the same padded length: cache hits) among new companions."""
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(steps):
        texts = [TEXTS[(s + k) % len(TEXTS)] for k in range(batch - 1)] + [TEXTS[1]]  # TEXTS[1] sets T
        ids, mask = processor.encode_text(texts)
        T = int(mask.sum(1).max())
        out.append({"pixel_values": torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8),
                    "input_ids": ids[:, :T], "attention_mask": mask[:, :T],
                    "labels": (torch.rand(batch, size, size, generator=g) > 0.5).to(torch.uint8)})
    return out


def _train(cache_mb: int, *extra: str):
    from accelerate.state import AcceleratorState

    from refseg.config import load_config
    from refseg.engine.trainer import Trainer

    AcceleratorState._reset_state(True)
    cfg = load_config(overrides=[*TINY_OVERRIDES, "train.mixed_precision=no", "train.warmup_steps=0",
                                 f"train.text_feature_cache_mb={cache_mb}", *extra])
    trainer = Trainer(cfg, cpu=True, progress=False).setup(data=False)
    losses = [trainer.train_step(b) for b in _batches(trainer.processor)]
    weights = {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}
    return losses, weights, trainer.unwrapped.text_encoder.cache


@pytest.fixture(autouse=True)
def _fresh_state():
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def test_cache_gives_the_same_losses_and_weights():
    ref_losses, ref_weights, off = _train(0)
    losses, weights, cache = _train(64)
    assert off.hits == off.misses == 0  # 0 MiB: never consulted
    assert cache.hits >= 4 and 0 < len(cache) <= cache.misses
    assert losses == ref_losses
    for k in ref_weights:
        assert torch.equal(weights[k], ref_weights[k]), k


def test_cache_is_off_while_text_layers_train():
    _, _, cache = _train(64, "model.text.trainable_layers=[0]")
    assert cache.hits == cache.misses == 0 and len(cache) == 0


def test_cache_is_bounded_least_recently_used():
    from refseg.models.text import FeatureCache

    cache = FeatureCache(3 * 4 * 10)  # three (10,) float32 rows
    for k in range(3):
        cache.put(("k", k), torch.zeros(10))
    assert cache.get(("k", 0)) is not None  # 0 is now the most recent
    cache.put(("k", 3), torch.zeros(10))
    assert len(cache) == 3 and cache.bytes == 120
    assert cache.get(("k", 1)) is None and cache.get(("k", 0)) is not None
