"""app.py as a user meets it: a server started on a free port, its /segment API called through
gradio_client, bad input sent, and the page driven in headless Chromium."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY_OVERRIDES, run_script

gradio_client = pytest.importorskip("gradio_client", reason="the app extra is not installed: pip install -e \".[app]\"")
pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e \".[app]\"")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scene(h: int = 120, w: int = 160) -> np.ndarray:
    """A small photo-like RGB image: a gradient with a red disc and a blue square."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 200 // w + 30, y * 180 // h + 40, np.full_like(x, 120)], -1).astype(np.uint8)
    img[(y - 60) ** 2 + (x - 45) ** 2 < 22 ** 2] = (220, 30, 30)
    img[40:80, 100:140] = (30, 60, 220)
    return img


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained checkpoint whose masks are neither empty nor full: the classifier's bias is
    shifted by the median object margin on a test image, so comparisons are not trivially equal."""
    import torch

    from refseg.config import load_config
    from refseg.models import build_model
    from refseg.predictor import Predictor
    from refseg.processing import RefSegProcessor

    torch.manual_seed(0)
    model = build_model(load_config(overrides=list(TINY_OVERRIDES)))
    pred = Predictor(model, RefSegProcessor.from_config(model.config), device="cpu")
    margin = pred.predict_logits(_scene(), "the red disc")
    with torch.no_grad():
        model.decoder.classifier.bias[1] -= float((margin[1] - margin[0]).median())
    path = tmp_path_factory.mktemp("app") / "ckpt"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """(url, Popen) of ``python app.py`` serving ``checkpoint`` on 127.0.0.1; stopped at the end."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--checkpoint", str(checkpoint), "--port", str(port),
                                 "--max-megapixels", "20"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"app.py did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
    yield url, proc
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    from refseg.predictor import Predictor

    return Predictor.from_pretrained(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("photo") / "scene.png"
    Image.fromarray(_scene()).save(p)
    return p


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_segment_api_mask_equals_the_predictor(client, predictor, photo):
    overlay_png, mask_png = client.predict(gradio_client.handle_file(str(photo)), "the red disc", api_name="/segment")
    mask = _read(mask_png)
    want = predictor.predict(_scene(), "the red disc")
    assert mask.shape == want.shape == (120, 160) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert 0.05 < want.mean() < 0.95  # a real comparison: neither empty nor full
    assert np.array_equal(mask == 255, want)
    overlay = _read(overlay_png)
    assert overlay.shape == (120, 160, 3)
    assert not np.array_equal(overlay[-1], _scene()[-1]) or not want[-1].any()  # the tint shows where the mask is


def test_several_expressions_one_request(client, predictor, photo):
    texts = ["the red disc", "the blue square"]
    overlay_png, mask_png = client.predict(gradio_client.handle_file(str(photo)), "\n".join(texts) + "\n\n",
                                           api_name="/segment")
    want = predictor.predict(_scene(), texts)  # (2, H, W): one batched forward, as the app does
    assert np.array_equal(_read(mask_png) == 255, want.any(axis=0))
    assert _read(overlay_png).shape == (120, 160, 3)


def test_http_api_beside_the_page(server, predictor, photo):
    """/api/segment and /api/health are served by the page's own server (mounted on Gradio's app)."""
    import httpx

    url = server[0]
    health = httpx.get(url + "api/health", timeout=30).json()
    assert health["device"] == "cpu" and health["queue_depth"] == 0 and health["model"]
    with open(photo, "rb") as f:
        r = httpx.post(url + "api/segment", files={"image": ("scene.png", f, "image/png")},
                       data={"text": "the red disc"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(__import__("io").BytesIO(r.content)))
    assert np.array_equal(mask == 255, predictor.predict(_scene(), "the red disc"))
    r = httpx.post(url + "api/segment", files={"image": ("scene.png", b"not a picture", "image/png")},
                   data={"text": "the red disc"}, timeout=60)
    assert r.status_code == 400 and "not an image" in r.json()["error"]
    assert "/api/segment" in httpx.get(url + "openapi.json", timeout=30).json()["paths"]


@pytest.mark.parametrize("case", ["not_an_image", "empty", "whitespace", "huge", "long_text", "too_many"])
def test_bad_input_gets_a_message_and_the_server_keeps_serving(client, server, photo, tmp_path, case):
    image, text = str(photo), "the red disc"
    if case == "not_an_image":
        image = tmp_path / "notes.png"
        image.write_text("this is not a picture")
        expect = "not an image file.*notes.png"
    elif case == "empty":
        text, expect = "", "expression is empty"
    elif case == "whitespace":
        text, expect = " \n\t ", "expression is empty"
    elif case == "huge":
        image = tmp_path / "huge.png"
        Image.new("1", (10_000, 10_000)).save(image)  # 100 megapixels, 12 KB on disk
        expect = "too large: 10000x10000 is 100.0 megapixels, the limit is 20"
    elif case == "long_text":
        text, expect = ("the big dog on the left " * 100)[:1999] + ".", "2,000 characters long; the limit is 300"
    else:
        text, expect = "\n".join(f"thing {i}" for i in range(20)), "20 expressions: at most"
    peak_before = _peak_rss(server[1].pid)
    with pytest.raises(Exception) as e:  # gradio_client raises AppError with the page's message
        client.predict(gradio_client.handle_file(str(image)), text, api_name="/segment")
    assert re.search(expect, str(e.value)), str(e.value)
    assert "Traceback" not in str(e.value)
    # Refused before decoding: the 300 MB a 100-megapixel image takes in RGB was never allocated.
    assert _peak_rss(server[1].pid) - peak_before < 100e6
    # ... and the next request is served as usual.
    _, mask_png = client.predict(gradio_client.handle_file(str(photo)), "the red disc", api_name="/segment")
    assert _read(mask_png).shape == (120, 160)


def _peak_rss(pid: int) -> float:
    """Peak resident memory of process ``pid`` in bytes (Linux), or 0 where /proc is not there."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


@pytest.mark.parametrize("case", ["missing", "none_found", "broken", "threads"])
def test_app_cli_errors_are_one_line(tmp_path, case):
    if case == "threads":
        args, expect = ["--threads", "0"], "--threads must be at least 1"
    elif case == "missing":
        args, expect = ["--checkpoint", tmp_path / "nope"], "checkpoint directory not found"
    elif case == "none_found":
        args, expect = [], "no checkpoint found under runs"
    else:
        (tmp_path / "ck").mkdir()
        (tmp_path / "ck" / "config.yaml").write_text("model: [\n")
        args, expect = ["--checkpoint", tmp_path / "ck"], "missing model.safetensors"
    r = run_script([REPO / "app.py", *args, "--port", str(_free_port())], cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("app.py: error:") and expect in lines[0], r.stderr


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_page_in_a_real_browser(server, photo, tmp_path):
    """Upload an image and type an expression in headless Chromium; the overlay appears at the image's
    size, the summary reports the area, Explain shows a map per (token, stage), and the page fetched
    nothing from outside this machine."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e \".[dev]\")")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no system Chromium (apt-get install chromium); the browser test needs one")
    url = server[0]
    requests = []
    shot = tmp_path / "app_page.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            box = page.locator("#expression textarea")
            box.wait_for(timeout=30_000)
            page.locator("#image-input input[type=file]").set_input_files(str(photo))
            page.locator("#image-input img").wait_for(timeout=15_000)
            box.fill("the red disc")
            box.press("Enter")
            result = page.locator("#overlay img")
            result.wait_for(timeout=30_000)
            page.wait_for_function("document.querySelector('#overlay img').naturalWidth > 0", timeout=15_000)
            size = page.evaluate("[document.querySelector('#overlay img').naturalWidth, "
                                 "document.querySelector('#overlay img').naturalHeight]")
            page.locator("#summary table").wait_for(timeout=15_000)
            summary = page.locator("#summary").inner_text()
            page.locator("#explain").click()  # the word-attention gallery: 5 tokens x 4 stages
            page.wait_for_function("document.querySelectorAll('#attention img').length >= 20", timeout=30_000)
            tiles = page.locator("#attention img").count()
            explanation = page.locator("#explanation").inner_text()
        finally:
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    print(f"screenshot: {shot}")
    assert size == [160, 120]
    assert "the red disc" in summary and re.search(r"[\d,]+ px \(\d+\.\d%\)", summary) and "160x120 image" in summary
    assert tiles == 20 and "stage 3:" in explanation
    outside = sorted({u for u in requests if not u.startswith(url) and not u.startswith(("data:", "blob:"))})
    assert not outside, f"the page fetched from outside the server: {outside[:5]}"
