"""On a CUDA GPU: bf16 training steps of the shipped configs, DDP over NCCL, the pinned uint8 loader.

Run with ``pytest -m cuda`` (benchmarks/gpu_check.sh does); without CUDA every test here is skipped.
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")]

CONFIGS = {"default": None, "refcoco": REPO / "configs" / "refcoco.yaml"}


def _config(name: str, *overrides: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _common import offline_model

    from refseg.config import load_config

    cfg = load_config(CONFIGS[name], list(overrides))
    offline_model(cfg)  # no downloads: random BERT-base / vision weights where not cached
    return cfg


def _batch(cfg, B: int, device: str = "cuda") -> dict:
    S, T = cfg.model.image_size, cfg.model.text.max_tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    mask[:, :8] = 1
    return {"pixel_values": torch.randint(0, 256, (B, 3, S, S), generator=g, dtype=torch.uint8).pin_memory(),
            "input_ids": ids.pin_memory(), "attention_mask": mask.pin_memory(),
            "labels": (torch.rand(B, S, S, generator=g) > 0.8).to(torch.uint8).pin_memory()}


def _step(model, batch, device="cuda"):
    from refseg.processing import RefSegProcessor

    config = getattr(model, "module", model).config
    x = RefSegProcessor.from_config(config).to_device(batch, device)  # the processor's device side
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(**x)
    out.loss.backward()
    return out, out.loss


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bf16_forward_backward(name):
    from refseg.models import build_model

    cfg = _config(name)
    torch.manual_seed(0)
    model = build_model(cfg.model, load_pretrained=False).cuda().train()
    out, loss = _step(model, _batch(cfg, 2))
    S = -(-cfg.model.image_size // model.pad_multiple) * model.pad_multiple // 4
    assert out.logits.shape == (2, 2, S, S) and torch.isfinite(out.logits.float()).all()
    assert torch.isfinite(loss) and loss.item() > 0
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_device_normalisation_bit_identical_on_cuda():
    """normalize_pixels on the GPU gives the CPU's numbers exactly."""
    from refseg.data.transforms import image_to_uint8, normalize_pixels

    rng = np.random.default_rng(0)
    for shape in ((480, 640), (640, 427), (37, 53)):
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        cpu = normalize_pixels(image_to_uint8(image, 480))
        gpu = normalize_pixels(image_to_uint8(image, 480).cuda()).cpu()
        assert torch.equal(gpu, cpu)


def test_ddp_one_process_nccl():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from refseg.models import build_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        cfg = _config("default")
        torch.manual_seed(0)
        model = DistributedDataParallel(build_model(cfg.model, load_pretrained=False).cuda().train(), device_ids=[0])
        _, loss = _step(model, _batch(cfg, 2))
        torch.cuda.synchronize()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()


def test_pinned_uint8_loader(tmp_path):
    """Persistent workers, pinned uint8 batches, non-blocking copies, normalisation on the GPU."""
    from test_refer import make_refer_dataset
    from torch.utils.data import DataLoader

    from refseg.data.dataset import RefSegDataset, collate, worker_init
    from refseg.data.sources.refer import ReferSource
    from refseg.models.text import load_tokenizer

    make_refer_dataset(tmp_path)
    tok = load_tokenizer("bundled-minilm")
    ds = RefSegDataset(ReferSource(tmp_path, "toy", "unc"), "train", tok, 48, 12, train=False)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate, pin_memory=True,
                        persistent_workers=True, worker_init_fn=worker_init)
    for _epoch in range(2):
        for batch in loader:
            assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].is_pinned()
            x = ds.processor.to_device(batch, "cuda")
            assert x["pixel_values"].is_cuda and x["labels"].dtype == torch.long
            want = ds.processor.to_device(collate([ds[i] for i in batch["index"].tolist()]), "cpu")  # normalised on the CPU
            assert torch.equal(x["pixel_values"].cpu(), want["pixel_values"])
            assert torch.equal(x["labels"].cpu(), want["labels"])


def test_train_py_on_cuda(tmp_path):
    """train.py end to end on the GPU (bf16, two persistent pinned loader workers), a few steps."""
    from conftest import run_script, tiny_train_args

    out = tmp_path / "run"
    r = run_script(["train.py", "--no-progress", "--output-dir", out,
                    *tiny_train_args(tmp_path / "data", "train.max_steps=6", "train.eval_every=3",
                                     "data.num_workers=2", "train.mixed_precision=bf16")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "last" / "model.safetensors").is_file() and "done: 6 steps" in r.stdout
