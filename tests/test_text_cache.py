"""The frozen text encoder's precomputed features: the encoder's own output, bounded, off when text trains."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import TINY_OVERRIDES

TEXTS = ["the red circle", "a big blue square on the left", "green", "the small triangle at the top", "circle"]


def _batches(processor, steps: int = 4, batch: int = 3, size: int = 64):
    """Batches padded to their longest expression, as the loader gives them."""
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(steps):
        texts = [TEXTS[(s + k) % len(TEXTS)] for k in range(batch)]
        ids, mask = processor.encode_text(texts)
        T = int(mask.sum(1).max())
        out.append({"pixel_values": torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8),
                    "input_ids": ids[:, :T], "attention_mask": mask[:, :T],
                    "labels": (torch.rand(batch, size, size, generator=g) > 0.5).to(torch.uint8)})
    return out


def _trainer(cache_mb: int, *extra: str):
    from accelerate.state import AcceleratorState

    from refseg.config import load_config
    from refseg.engine.trainer import Trainer

    AcceleratorState._reset_state(True)
    cfg = load_config(overrides=[*TINY_OVERRIDES, "train.mixed_precision=no", "train.warmup_steps=0",
                                 f"train.text_feature_cache_mb={cache_mb}", *extra])
    trainer = Trainer(cfg, cpu=True, progress=False).setup(data=False)
    # the training expressions the trainer reads from its dataset
    trainer.train_dataset = SimpleNamespace(samples=[SimpleNamespace(sentence=t) for t in TEXTS + TEXTS[:2]])
    trainer._precompute_text_features()
    return trainer


@pytest.fixture(autouse=True)
def _fresh_state():
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def test_rows_read_from_the_table_are_the_encoders_output():
    trainer = _trainer(64)
    text = trainer.unwrapped.text_encoder
    assert len(text.features) == len(TEXTS)  # each expression once
    text.train()
    for batch in _batches(trainer.processor):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        read = text(ids, mask)
        live = text._run(ids, mask)
        m = mask.bool()
        assert read.shape == live.shape
        # the same features at every word (computed at another padded length: the last bits may differ)
        torch.testing.assert_close(read[m], live[m], atol=1e-5, rtol=1e-5)
        assert (read[~m] == 0).all()  # padding words, which the fusion multiplies by the mask


def test_training_with_the_table_follows_the_encoder():
    """Same losses (to rounding) and the table is consulted; a row not in it runs the encoder with its batch."""
    def losses(cache_mb):
        trainer = _trainer(cache_mb)
        return [trainer.train_step(b) for b in _batches(trainer.processor)], trainer

    ref, _ = losses(0)
    got, trainer = losses(64)
    assert len(trainer.unwrapped.text_encoder.features) == len(TEXTS)
    assert got == pytest.approx(ref, rel=1e-4)

    text = trainer.unwrapped.text_encoder
    ids, mask = trainer.processor.encode_text(["the purple star nobody wrote", TEXTS[0]])
    T = int(mask.sum(1).max())
    ids, mask = ids[:, :T], mask[:, :T]
    text.train()
    out = text(ids, mask)
    live = text._run(ids, mask)
    assert torch.equal(out[0], text._run(ids[:1], mask[:1])[0])  # not in the table: the encoder ran on it
    torch.testing.assert_close(out[1][mask[1].bool()], live[1][mask[1].bool()], atol=1e-5, rtol=1e-5)


def test_table_is_off_while_text_layers_train():
    trainer = _trainer(64, "model.text.trainable_layers=[0]")
    text = trainer.unwrapped.text_encoder
    assert len(text.features) == 0 and not text.frozen


def test_table_is_bounded():
    from refseg.models.text import TextFeatureTable

    trainer = _trainer(0)
    text = trainer.unwrapped.text_encoder
    ids, mask = trainer.processor.encode_text(TEXTS)
    lengths = mask.sum(1).tolist()
    row = lambda n: n * text.hidden_size * 4  # noqa: E731 - bytes of an (n, Dt) float32 row
    short = sorted(range(len(TEXTS)), key=lambda i: lengths[i])  # precompute goes shortest first
    room = row(lengths[short[0]]) + row(lengths[short[1]])
    text.features = TextFeatureTable(room)  # room for the two shortest
    assert text.precompute(ids, mask, batch_size=2) == 2
    assert len(text.features) == 2 and text.features.bytes == room
    keys = TextFeatureTable.keys(ids, mask)
    assert keys[short[0]] in text.features and keys[short[1]] in text.features
    assert keys[short[-1]] not in text.features
