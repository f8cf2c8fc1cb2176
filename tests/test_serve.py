"""The HTTP API (refseg.serve) in-process through FastAPI's TestClient, and the dynamic batcher:
API = Predictor, batched = unbatched, the 400/413/503 paths and health."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_OVERRIDES

pytest.importorskip("fastapi", reason="the app extra is not installed: pip install -e \".[app]\"")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")


def _scene(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 200 // w + 30, y * 180 // h + 40, np.full_like(x, 120)], -1).astype(np.uint8)
    r = np.random.default_rng(seed)
    cy, cx = int(r.integers(h // 4, 3 * h // 4)), int(r.integers(w // 4, 3 * w // 4))
    img[(y - cy) ** 2 + (x - cx) ** 2 < (min(h, w) // 5) ** 2] = (220, 30, 30)
    return img


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor():
    """A tiny untrained model whose masks are neither empty nor full (classifier bias shifted by the
    median margin on a test image)."""
    import torch

    from refseg.config import load_config
    from refseg.models import build_model
    from refseg.predictor import Predictor
    from refseg.processing import RefSegProcessor

    torch.manual_seed(0)
    model = build_model(load_config(overrides=list(TINY_OVERRIDES)))
    pred = Predictor(model, RefSegProcessor.from_config(model.config), device="cpu")
    margin = pred._margin(_scene(), "the red disc")
    with torch.no_grad():
        model.decoder.classifier.bias[1] -= float(margin.median())
    return pred


class _Gated:
    """A predictor whose forwards wait until ``gate`` is set (to hold the worker busy in a test)."""

    def __init__(self, predictor):
        self.inner, self.gate, self.started = predictor, threading.Event(), threading.Event()
        self.device, self.backend, self.checkpoint_path = predictor.device, predictor.backend, None

    def forward_many(self, requests):
        self.started.set()
        self.gate.wait(30)
        return self.inner.forward_many(requests)


def _client(predictor, max_body_bytes=2_000_000, **batcher_kw):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from refseg.app import Segmenter
    from refseg.serve import Batcher, api_router

    batcher = Batcher(predictor, **{"window_ms": 2, "max_batch": 8, "max_queue": 8, "timeout": 30, **batcher_kw})
    seg = Segmenter(predictor, max_megapixels=1.0, batcher=batcher)
    app = FastAPI()
    app.include_router(api_router(seg, batcher, max_body_bytes=max_body_bytes, model_name="tiny"))
    return TestClient(app, raise_server_exceptions=False), batcher


@pytest.fixture(scope="module")
def api(predictor):
    client, batcher = _client(predictor)
    yield client
    batcher.close()


def test_png_is_the_predictors_union_mask(api, predictor):
    img = _scene(90, 130, seed=1)
    r = api.post("/api/segment", files={"image": ("p.png", _png(img), "image/png")},
                 data={"text": "the red disc\nthe background"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    want = predictor.predict(img, ["the red disc", "the background"]).any(axis=0)
    assert got.shape == want.shape == (90, 130) and set(np.unique(got)) <= {0, 255}
    assert 0.02 < want.mean() < 0.98
    assert np.array_equal(got == 255, want)


def test_json_rle_per_expression_equals_the_predictor(api, predictor):
    from pycocotools import mask as mask_utils

    img = _scene(100, 70, seed=2)
    texts = ["the red disc", "the left part", "the top"]
    r = api.post("/api/segment", files={"image": ("p.png", _png(img), "image/png")},
                 data={"text": "\n".join(texts), "format": "json"})
    assert r.status_code == 200, r.text
    out = r.json()
    want = predictor.predict(img, texts)
    assert (out["width"], out["height"]) == (70, 100) and [e["expression"] for e in out["results"]] == texts
    for res, m in zip(out["results"], want):
        decoded = mask_utils.decode({"size": res["rle"]["size"], "counts": res["rle"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), m) and res["area"] == int(m.sum())
        assert res["no_target"] is None  # the model has no no-target head
    assert out["model_ms"] > 0


def test_batched_equals_unbatched(predictor, capsys):
    """Requests of different image sizes and expression counts share one forward; each gets its own
    result, equal to its one-request prediction up to float rounding."""
    from refseg.serve import Batcher

    reqs = [(_scene(120, 160, 0), ["the red disc"]), (_scene(64, 200, 1), ["the left part", "the red disc"]),
            (_scene(150, 90, 2), ["the top"])]
    gated = _Gated(predictor)
    batcher = Batcher(gated, window_ms=50, max_batch=8, max_queue=8, timeout=60)
    try:
        blocker = batcher.submit(_scene(30, 30, 3), ["x"])  # holds the worker: the next three queue up together
        assert gated.started.wait(30)
        futures = [batcher.submit(img, t) for img, t in reqs]
        gated.gate.set()
        blocker.result(60)
        results = [f.result(60) for f in futures]
    finally:
        gated.gate.set()
        batcher.close()
    assert [r.batch_requests for r in results] == [3, 3, 3]  # one forward for the three
    worst = 0.0
    for (img, texts), r in zip(reqs, results):
        alone = predictor._margin(img, texts).numpy()
        assert r.margins.shape == alone.shape == (len(texts), *img.shape[:2])
        delta = np.abs(r.margins - alone)
        worst = max(worst, float(delta.max()))
        assert delta.max() < 1e-3
        sure = np.abs(alone) > 1e-3  # away from the decision boundary the masks agree exactly
        assert np.array_equal(r.masks[sure], (alone > 0)[sure])
    with capsys.disabled():
        print(f"\nbatched vs unbatched: largest |delta logit| {worst:.3g}")


@pytest.mark.parametrize("case", ["empty_text", "empty_image", "not_an_image", "too_many_pixels", "no_image", "bad_format",
                                  "not_multipart", "long_text"])
def test_bad_input_is_400_json(api, case):
    files = {"image": ("p.png", _png(_scene()), "image/png")}
    data = {"text": "the red disc"}
    expect = ""
    if case == "empty_text":
        data, expect = {"text": "  \n "}, "expression is empty"
    elif case == "empty_image":
        files, expect = {"image": ("e.jpg", b"", "image/jpeg")}, "e.jpg"
    elif case == "not_an_image":
        files, expect = {"image": ("notes.png", b"this is not a picture", "image/png")}, "notes.png"
    elif case == "too_many_pixels":
        buf = io.BytesIO()
        Image.new("1", (2000, 1000)).save(buf, format="PNG")  # 2 megapixels, the limit here is 1
        files, expect = {"image": ("big.png", buf.getvalue(), "image/png")}, "megapixels"
    elif case == "no_image":
        files, data, expect = {"text": (None, "the red disc")}, {}, "no image"  # multipart without a file
    elif case == "bad_format":
        data, expect = {"text": "x", "format": "gif"}, "format must be png or json"
    elif case == "long_text":
        data, expect = {"text": "dog " * 200}, "the limit is 300"
    if case == "not_multipart":
        r = api.post("/api/segment", data=data)
        expect = "multipart/form-data"
    else:
        r = api.post("/api/segment", files=files or None, data=data)
    assert r.status_code == 400, (r.status_code, r.text)
    assert expect in r.json()["error"] and "Traceback" not in r.text


def test_body_over_the_limit_is_413_from_content_length_and_from_the_stream(predictor):
    client, batcher = _client(predictor, max_body_bytes=20_000)
    try:
        big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)  # ~120 KB PNG
        r = client.post("/api/segment", files={"image": ("p.png", _png(big), "image/png")}, data={"text": "x"})
        assert r.status_code == 413 and "larger than the limit" in r.json()["error"]
        # No Content-Length (chunked): the stream is cut at the limit.
        boundary = "xyz"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nx\r\n--{boundary}\r\n"
                "Content-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\nContent-Type: image/png"
                "\r\n\r\n").encode() + _png(big) + f"\r\n--{boundary}--\r\n".encode()
        sent = []

        def chunks():
            for i in range(0, len(body), 4096):
                sent.append(i)
                yield body[i:i + 4096]

        r = client.post("/api/segment", content=chunks(),
                        headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413, r.text
        # a body under the limit still works
        r = client.post("/api/segment", files={"image": ("p.png", _png(_scene(40, 40)), "image/png")},
                        data={"text": "x"})
        assert r.status_code == 200
    finally:
        batcher.close()


def test_full_queue_is_503_with_retry_after_and_then_serves(predictor):
    gated = _Gated(predictor)
    client, batcher = _client(gated, max_queue=1, window_ms=0)
    files = {"image": ("p.png", _png(_scene()), "image/png")}
    try:
        running = batcher.submit(_scene(), ["x"])  # the worker holds this one
        assert gated.started.wait(30)
        waiting = batcher.submit(_scene(), ["y"])  # the queue's one place
        r = client.post("/api/segment", files=files, data={"text": "z"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["error"]
        h = client.get("/api/health").json()
        assert h["queue_depth"] == 1 and h["max_queue"] == 1
        gated.gate.set()
        running.result(60), waiting.result(60)
        r = client.post("/api/segment", files=files, data={"text": "z"})
        assert r.status_code == 200
    finally:
        gated.gate.set()
        batcher.close()


def test_request_timeout_is_503_and_leaves_the_queue(predictor):
    gated = _Gated(predictor)
    client, batcher = _client(gated, timeout=0.3, window_ms=0)
    try:
        running = batcher.submit(_scene(), ["x"])
        assert gated.started.wait(30)
        other = batcher.submit(_scene(), ["y"])  # waits ahead of the request that times out
        t0 = time.monotonic()
        r = client.post("/api/segment", files={"image": ("p.png", _png(_scene()), "image/png")}, data={"text": "z"})
        assert r.status_code == 503 and "timed out" in r.json()["error"] and "retry-after" in r.headers
        assert time.monotonic() - t0 < 20
        assert batcher.depth == 1  # the timed-out request left the queue; the other one waits on
        gated.gate.set()
        running.result(60), other.result(60)
    finally:
        gated.gate.set()
        batcher.close()


def test_health_and_openapi(api):
    h = api.get("/api/health")
    assert h.status_code == 200
    body = h.json()
    assert body["model"] == "tiny" and body["device"] == "cpu" and body["queue_depth"] == 0
    assert body["backend"] == "channels_last"  # the CPU default
    spec = api.get("/openapi.json").json()
    assert "/api/segment" in spec["paths"] and "/api/health" in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/api/segment"]["post"]["requestBody"]["content"]
    assert api.get("/docs").status_code == 200
