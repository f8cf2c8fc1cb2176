"""app.py as a user meets it: a server started on a free port, its /segment API called through
gradio_client, bad input sent, and the page driven in headless Chromium."""
from __future__ import annotations

import os
import re
import shutil
import signal
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
    base = tmp_path_factory.mktemp("app")
    # data.root: an empty folder, so that the page's dataset examples do not depend on whether the
    # repository's data/ holds a generated refshapes (a default run launched from it writes one)
    cfg = load_config(overrides=[*TINY_OVERRIDES, f"data.root={base / 'no-data'}"])
    model = build_model(cfg.model)
    pred = Predictor(model, RefSegProcessor.from_config(model.config), device="cpu")
    margin = pred.predict_logits(_scene(), "the red disc")
    with torch.no_grad():
        model.decoder.classifier.bias[1] -= float((margin[1] - margin[0]).median())
    path = base / "ckpt"
    model.save_pretrained(path, run_config=cfg)
    return path


def _hostile_examples(root: Path) -> Path:
    """An --examples folder with one photo among things that must never be served."""
    root.mkdir()
    Image.fromarray(_scene()).save(root / "photo.jpg")
    (root / "secret.txt").write_text("XSECRETX\n")
    (root / ".env").write_text("API_KEY=XSECRETX-1\n")
    (root / "sub").mkdir()
    (root / "sub" / ".env").write_text("API_KEY=XSECRETX-2\n")
    Image.fromarray(_scene()).save(root / "sub" / ".hidden.jpg")
    (root / "fake.jpg").write_text("XSECRETX, named like a photo\n")
    outside = root.parent / "outside.txt"
    outside.write_text("XSECRETX, outside the folder\n")
    (root / "link.jpg").symlink_to(outside)
    (root / "inside.jpg").symlink_to(root / "photo.jpg")
    return root


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """(url, Popen, log, temp) of ``python app.py`` serving ``checkpoint`` on 127.0.0.1 with a hostile
    --examples folder; its temporary files (Gradio's and ours) go under ``temp``; stopped at the end."""
    port = _free_port()
    base = tmp_path_factory.mktemp("server")
    log = base / "server.log"
    temp = base / "temp"
    (temp / "gradio").mkdir(parents=True)
    examples = _hostile_examples(base / "examples")
    env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(temp), GRADIO_TEMP_DIR=str(temp / "gradio"))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--checkpoint", str(checkpoint), "--port", str(port),
                                 "--max-megapixels", "20", "--examples", str(examples)], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, env=env)
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
    yield url, proc, log, temp
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


@pytest.mark.parametrize("case", ["missing", "none_found", "incomplete", "bad_config", "threads"])
def test_app_cli_errors_are_one_line(tmp_path, case, request):
    if case == "threads":
        args, expect = ["--threads", "0"], "--threads must be at least 1"
    elif case == "missing":
        args, expect = ["--checkpoint", tmp_path / "nope"], "checkpoint directory not found"
    elif case == "none_found":
        args, expect = [], "no checkpoint found under runs"
    elif case == "incomplete":
        (tmp_path / "ck").mkdir()
        (tmp_path / "ck" / "config.yaml").write_text("model: {}\n")
        args, expect = ["--checkpoint", tmp_path / "ck"], f"{tmp_path / 'ck'}: missing model.safetensors"
    else:  # a complete checkpoint whose config.yaml is not YAML: the config is read, and refused
        ck = tmp_path / "ck"
        shutil.copytree(request.getfixturevalue("checkpoint"), ck)
        (ck / "config.yaml").write_text("model: [\n")
        args, expect = ["--checkpoint", ck], f"{ck}: bad config.yaml: "
    r = run_script([REPO / "app.py", *args, "--port", str(_free_port())], cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("app.py: error:") and expect in lines[0], r.stderr


def _get(url: str, headers: dict | None = None, method: str = "GET", data: bytes | None = None):
    """(status, headers, body) of one request; HTTP errors are answers too."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_examples_are_the_only_files_served_from_their_folder(server):
    """--examples lists and serves the photos only: no other file, no dotfile, not what a symlink
    pointing outside the folder names, not a text file named like a photo."""
    from refseg.app import folder_examples

    url, examples = server[0], server[2].parent / "examples"
    assert folder_examples(examples) == [str((examples / "photo.jpg").resolve())]
    status, _, body = _get(f"{url}gradio_api/file={(examples / 'photo.jpg').resolve()}")
    assert status == 200 and body == (examples / "photo.jpg").read_bytes()
    for name in ["secret.txt", ".env", "sub/.env", "sub/.hidden.jpg", "fake.jpg", "link.jpg", "../outside.txt"]:
        status, _, body = _get(f"{url}gradio_api/file={examples / name}")
        assert status in (403, 404) and b"XSECRETX" not in body, (name, status, body[:200])
    config = _get(f"{url}config")[2].decode()
    assert "outside.txt" not in config and "secret.txt" not in config and ".hidden" not in config


def test_foreign_host_and_origin_are_refused(server):
    """DNS rebinding (a foreign Host) and cross-site calls (a foreign Origin) get 403; this machine's
    names with any port, and same-origin or Origin-less clients, are served."""
    url = server[0]
    port = url.rstrip("/").rsplit(":", 1)[1]
    for host in ["evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"]:
        status, _, body = _get(url, {"Host": host})
        assert status == 403 and b"refused" in body, (host, status)
    for host in [f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "LOCALHOST:1"]:
        assert _get(url, {"Host": host})[0] == 200, host
    upload = f"{url}gradio_api/upload"
    body = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.txt\"\r\n"
            b"Content-Type: text/plain\r\n\r\nwritten by another site\r\n--b--\r\n")
    form = {"Content-Type": "multipart/form-data; boundary=b"}
    for origin in ["http://evil.example", f"http://evil.example:{port}", "null", f"http://127.0.0.1:{int(port) + 1}"]:
        status, _, _ = _get(upload, {**form, "Origin": origin}, "POST", body)
        assert status == 403, (origin, status)
    status, _, answer = _get(upload, {**form, "Origin": url.rstrip("/")}, "POST", body)  # the page itself
    assert status == 200 and b"x.txt" in answer
    assert _get(upload, form, "POST", body)[0] == 200  # a client without a browser sends no Origin


def test_security_headers_on_every_response(server):
    url = server[0]
    for path in ["", "config", "gradio_api/info", "no/such/page"]:
        _, headers, _ = _get(url + path)
        csp = headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "object-src 'none'" in csp, path
        assert headers.get("X-Frame-Options") == "DENY" and headers.get("X-Content-Type-Options") == "nosniff", path


def test_a_file_name_is_shown_as_text_not_html(server):
    """The browser sends the file's own name (gradio_client would clean it): the error pop-up, which
    renders HTML, gets it escaped."""
    import json

    url = server[0]
    name = "<img src=x onerror=alert(1)>.png"
    body = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"notes.png\"\r\n"
            b"Content-Type: image/png\r\n\r\nnot a picture\r\n--b--\r\n")
    status, _, answer = _get(f"{url}gradio_api/upload", {"Content-Type": "multipart/form-data; boundary=b"},
                             "POST", body)
    assert status == 200, answer
    path = json.loads(answer)[0]
    payload = {"data": [{"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}, "the red disc"]}
    status, _, answer = _get(f"{url}gradio_api/call/segment", {"Content-Type": "application/json"}, "POST",
                             json.dumps(payload).encode())
    assert status == 200, answer
    event = json.loads(answer)["event_id"]
    stream = _get(f"{url}gradio_api/call/segment/{event}")[2].decode()
    assert "event: error" in stream and "not an image file" in stream, stream
    assert "<img" not in stream and "&lt;img src=x onerror=alert(1)&gt;.png" in stream, stream


def test_the_page_says_a_refshapes_checkpoint_knows_only_shapes(server):
    from refseg.app import SYNTHETIC_NOTE

    assert SYNTHETIC_NOTE in _get(server[0] + "config")[2].decode()  # the test checkpoint's data is refshapes


def test_a_port_in_use_is_refused_before_the_model_load(checkpoint, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_script([REPO / "app.py", "--checkpoint", checkpoint, "--port", port], cwd=tmp_path, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"cannot serve on 127.0.0.1:{port}: the port is in use" in lines[0] and "--port" in lines[0]
    assert "GRADIO_SERVER_PORT" not in r.stderr and "model " not in r.stdout  # refused before the load


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


# ---------------------------------------------------------------------------------------------
# The limits, at their boundaries
# ---------------------------------------------------------------------------------------------


def _expression(n: int) -> str:
    """A realistic expression of exactly ``n`` characters (single spaces, no space at either end)."""
    words = ("the big red disc on the left of the small blue square " * 40).split()
    text = ""
    for w in words:
        if len(text) + 1 + len(w) > n:
            break
        text = f"{text} {w}" if text else w
    text = text + "s" * (n - len(text))
    assert len(text) == n and "  " not in text
    return text


def test_the_page_queue_does_not_poll_every_millisecond():
    """Gradio's queue looks for work every 1 ms on Linux: the server thread then takes the GIL from
    the model's forward ~850 times a second. The page's queue polls every PAGE_QUEUE_POLL_S (this also
    fails if Gradio renames the attributes, which would silently bring the 1 ms polling back)."""
    from refseg.app import PAGE_QUEUE_POLL_S, _calm_queue, offline_gradio

    gr = offline_gradio()
    with gr.Blocks() as demo:
        gr.Textbox()
    queue = _calm_queue(demo.queue())._queue
    assert queue.sleep_when_free >= PAGE_QUEUE_POLL_S >= 0.01
    assert queue.progress_update_sleep_when_free >= PAGE_QUEUE_POLL_S


def test_expression_length_limit_at_the_boundary():
    """300 characters are read; 301 are refused with the count and the limit (also on one line of several)."""
    from refseg.app import MAX_EXPRESSION_CHARS, UserError, parse_expressions

    assert MAX_EXPRESSION_CHARS == 300
    ok, over = _expression(300), _expression(301)
    assert parse_expressions(ok) == [ok]
    assert parse_expressions(f"  {ok}\n\n") == [ok]  # surrounding spaces do not count
    with pytest.raises(UserError, match=r"^the expression is 301 characters long; the limit is 300 "):
        parse_expressions(over)
    with pytest.raises(UserError, match=r"^expression 2 is 301 characters long; the limit is 300 "):
        parse_expressions(f"the red disc\n{over}")


def test_expression_length_limit_through_the_api(client, predictor, photo):
    mask_png = client.predict(gradio_client.handle_file(str(photo)), _expression(300), api_name="/segment")[1]
    assert np.array_equal(_read(mask_png) == 255, predictor.predict(_scene(), _expression(300)))
    with pytest.raises(Exception) as e:
        client.predict(gradio_client.handle_file(str(photo)), _expression(301), api_name="/segment")
    assert "301 characters long; the limit is 300" in str(e.value), str(e.value)


def _png_header(width: int, height: int) -> bytes:
    """A 1-bit PNG that claims width x height pixels and holds 64 bytes of pixel data: its header is real,
    its pixels are not there, so it costs nothing until something decodes it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_megapixel_limit_at_the_boundary(tmp_path):
    """The default limit, 50 megapixels: 10000 x 5000 = 50,000,000 pixels passes the header check (and
    then fails to decode: its pixels are missing), 3 x 16,666,667 = 50,000,001 is refused from the header."""
    from refseg.app import MAX_MEGAPIXELS, Segmenter
    from refseg.errors import ImageReadError

    assert MAX_MEGAPIXELS == 50.0
    segmenter = Segmenter(predictor=None)  # never reached: both files fail before the model
    at, over = tmp_path / "at.png", tmp_path / "over.png"
    at.write_bytes(_png_header(10_000, 5_000))
    over.write_bytes(_png_header(3, 16_666_667))
    with pytest.raises(ImageReadError, match=r"^cannot decode image at\.png: image file is truncated"):
        segmenter.segment(at, "the red disc")
    with pytest.raises(ImageReadError, match=r"^image too large: 3x16666667 is 50\.0 megapixels, the limit is 50$"):
        segmenter.segment(over, "the red disc")


def test_sigterm_cleans_up_like_ctrl_c(server, client, photo):
    """Last in this file: it stops the module's server. `kill PID` (SIGTERM) leaves no result PNGs and
    no uploads in the temporary folders, as Ctrl-C; the start printed no share=True advice."""
    url, proc, log, temp = server
    client.predict(gradio_client.handle_file(str(photo)), "the red disc", api_name="/segment")
    files = [p for p in temp.rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in files), files  # results and uploads were there
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    example = (log.parent / "examples" / "photo.jpg").read_bytes()  # Gradio keeps its copies of the examples
    left = [str(p.relative_to(temp)) for p in temp.rglob("*") if p.is_file() and p.read_bytes() != example]
    assert not left, left
    text = log.read_text()
    assert "share=True" not in text and "Traceback" not in text, text[-3000:]
    assert f"serving on {url}" in text
