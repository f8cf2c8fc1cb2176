"""Predictor backends against fp32 eager on a tiny model: the same masks (up to each backend's
rounding), the ONNX export's logits equal to PyTorch's, and the export's command line."""
from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_OVERRIDES, run_script

TEXTS = ["the red disc", "the thing on the left"]


@pytest.fixture(scope="module")
def tiny():
    from refseg.config import load_config
    from refseg.models import build_model
    from refseg.processing import RefSegProcessor

    torch.manual_seed(0)
    model = build_model(load_config(overrides=list(TINY_OVERRIDES)))
    return model, RefSegProcessor.from_config(model.config)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(tiny, image):
    from refseg.predictor import Predictor

    model, processor = tiny
    return Predictor(copy.deepcopy(model), processor, device="cpu", backend="fp32")._margin(image, TEXTS)


def _margin(tiny, image, backend, **kw):
    from refseg.predictor import Predictor

    model, processor = tiny
    pred = Predictor(copy.deepcopy(model), processor, device="cpu", backend=backend, **kw)
    assert pred.backend == backend
    return pred._margin(image, TEXTS)


# (backend, largest |delta logit| allowed against fp32)
@pytest.mark.parametrize("backend, tol", [("channels_last", 1e-4), ("bf16", 0.1), ("int8", 0.5)])
def test_backend_agrees_with_fp32(tiny, image, reference, backend, tol):
    got = _margin(tiny, image, backend)
    assert got.shape == reference.shape
    delta = float((got - reference).abs().max())
    assert delta < tol
    sure = reference.abs() > tol
    assert torch.equal((got > 0)[sure], (reference > 0)[sure])


def test_auto_is_channels_last_on_the_cpu_and_unknown_backends_are_refused():
    from refseg.predictor import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "channels_last"
    assert resolve_backend(None, torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("tensorrt", torch.device("cpu"))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_backend("fp16", torch.device("cpu"))


def test_app_refuses_a_backend_in_one_line(tmp_path, tiny):
    model, _ = tiny
    model.save_pretrained(tmp_path / "ck")
    r = run_script([REPO / "app.py", "--checkpoint", tmp_path / "ck", "--backend", "tensorrt", "--port", "1"],
                   cwd=tmp_path, timeout=300)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--backend tensorrt: unknown backend" in lines[0], r.stderr


_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None


@pytest.mark.skipif(not _ONNX, reason="onnx/onnxruntime not installed: pip install -e \".[onnx]\"")
def test_onnx_export_matches_pytorch_logits(tiny, image, reference, tmp_path):
    """``python -m refseg.export onnx`` writes a file whose ONNX Runtime logits equal PyTorch's, for a
    batch size other than the one it was traced with."""
    model, processor = tiny
    model.save_pretrained(tmp_path / "ck")
    r = run_script(["-m", "refseg.export", "onnx", tmp_path / "ck", tmp_path / "m.onnx"], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "m.onnx").is_file() and "wrote" in r.stdout
    got = _margin(tiny, image, "onnx", onnx_path=tmp_path / "m.onnx")
    assert float((got - reference).abs().max()) < 1e-4
    from refseg.export import OnnxRunner

    batch = processor.to_device(processor(images=image, text=TEXTS + ["a third one"]), "cpu")
    with torch.inference_mode():
        want = model.eval()(**batch).logits
    assert float((OnnxRunner(tmp_path / "m.onnx")(**batch).logits - want).abs().max()) < 1e-4


@pytest.mark.skipif(not _ONNX, reason="onnx/onnxruntime not installed: pip install -e \".[onnx]\"")
def test_onnx_export_carries_the_no_target_logit(image, tmp_path):
    """A model with the no-target head: the export has its logit as a second output, and the Predictor's
    onnx backend empties the mask exactly where the PyTorch one does."""
    from refseg.config import load_config
    from refseg.export import OnnxRunner, export_onnx
    from refseg.models import build_model
    from refseg.predictor import Predictor
    from refseg.processing import RefSegProcessor

    torch.manual_seed(0)
    model = build_model(load_config(overrides=[*TINY_OVERRIDES, "model.no_target.enabled=true"])).eval()
    processor = RefSegProcessor.from_config(model.config)
    path = export_onnx(copy.deepcopy(model), processor, tmp_path / "m.onnx")
    batch = processor.to_device(processor(images=image, text=TEXTS), "cpu")
    with torch.inference_mode():
        want = model(**batch).no_target_logits
    got = OnnxRunner(path)(**batch).no_target_logits
    assert got is not None and got.shape == want.shape
    assert float((got - want).abs().max()) < 1e-4
    eager = Predictor(copy.deepcopy(model), processor, device="cpu", backend="fp32")
    onnx = Predictor(copy.deepcopy(model), processor, device="cpu", backend="onnx", onnx_path=path)
    for text in TEXTS:
        assert onnx.no_target_proba(image, text) == pytest.approx(eager.no_target_proba(image, text), abs=1e-4)


def test_export_without_onnx_is_one_line(tmp_path, monkeypatch):
    if _ONNX:
        pytest.skip("onnx is installed here: the missing-extra message cannot be shown")
    r = run_script(["-m", "refseg.export", "onnx", tmp_path / "ck", tmp_path / "m.onnx"], timeout=120)
    assert r.returncode == 2 and "pip install -e \".[onnx]\"" in r.stderr


@pytest.mark.slow
def test_torch_compile_agrees_with_fp32(tiny, image, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # not shared with other runs
    got = _margin(tiny, image, "compile")
    assert float((got - reference).abs().max()) < 1e-3
