"""The browser application: a Gradio page and HTTP API over one loaded ``Predictor``.

    python app.py --checkpoint runs/x/best            # http://127.0.0.1:7860

    from gradio_client import Client, handle_file
    overlay_png, mask_png = Client("http://127.0.0.1:7860/").predict(
        handle_file("photo.jpg"), "the dog", api_name="/segment")

``Segmenter`` holds the logic without Gradio (validate the input, predict, draw); ``build_demo`` lays
out the page around it. The model is loaded once, before the server starts; with a batcher
(``refseg.serve``, as app.py runs it) one worker thread runs it for the page and ``/api/segment``
alike, so memory stays bounded by the batch and queue limits and the size limits below.
"""
from __future__ import annotations

import contextlib
import html
import ipaddress
import os
import re
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Sequence

import numpy as np

from .data.io import read_image, write_image
from .errors import UserError
from .visualize import PALETTE, captions, no_match_message, overlay, printable_line

MAX_MEGAPIXELS = 50.0  # a 48-megapixel phone photo fits; decoding it takes 150 MB, its masks 50 MB each
MAX_EXPRESSION_CHARS = 300  # RefCOCOg's longest expressions are far shorter; the model reads max_tokens
MAX_EXPRESSIONS = len(PALETTE)  # one colour each
MAX_UPLOAD = "100mb"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def parse_expressions(text: Optional[str]) -> list[str]:
    """The box's text -> one expression per non-empty line (spaces collapsed); UserError if unusable."""
    if text is None or not str(text).strip():
        raise UserError("the expression is empty: type what to segment, e.g. \"the man on the left\"")
    # Lines are what the box's Enter / Shift+Enter make (\n, \r\n, \r); each becomes one plain line:
    # U+2028 and the other separators str.splitlines() honours are spaces, bidi overrides and other
    # control characters are dropped (printable_line), so one expression stays one, in reading order.
    lines = [printable_line(line) for line in re.split(r"\r\n|\r|\n", str(text))]
    lines = [line for line in lines if line]
    if len(lines) > MAX_EXPRESSIONS:
        raise UserError(f"{len(lines)} expressions: at most {MAX_EXPRESSIONS} at a time (one per line)")
    for i, line in enumerate(lines):
        if len(line) > MAX_EXPRESSION_CHARS:
            which = f"expression {i + 1}" if len(lines) > 1 else "the expression"
            raise UserError(f"{which} is {len(line):,} characters long; the limit is {MAX_EXPRESSION_CHARS} "
                            "(a referring expression names one object in a few words)")
    return lines


@dataclass
class Segmentation:
    """One request's result. overlay RGB uint8 (H, W, 3); masks bool (K, H, W); mask uint8 (H, W) in
    {0, 255}, the union of the K masks (the mask itself for one expression; all 0 when nothing matches).
    An expression that names several objects has one mask, their union."""

    expressions: list[str]
    overlay: np.ndarray
    masks: np.ndarray
    model_seconds: float
    total_seconds: float
    truncated: list[bool] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        return (self.masks.any(axis=0) * 255).astype(np.uint8)

    def summary(self) -> str:
        """Markdown: the area of each mask and the time taken."""
        h, w = self.masks.shape[1:]
        rows = ["| | expression | mask area |", "|---|---|---|"]
        for k, (expr, m) in enumerate(zip(self.expressions, self.masks)):
            r, g, b = PALETTE[k]
            area = int(m.sum())
            note = " (read up to the model's token limit)" if self.truncated and self.truncated[k] else ""
            cell = f"{area:,} px ({100.0 * area / (h * w):.1f}%)" if area else _escape(no_match_message(expr))
            rows.append(f"| <span style=\"color:rgb({r},{g},{b})\">&#9632;</span> | {_escape(expr)}{note} | {cell} |")
        return "\n".join(rows) + (f"\n\n{w}x{h} image; model {1000 * self.model_seconds:.0f} ms, "
                                  f"total {1000 * self.total_seconds:.0f} ms")


def _escape(text: str) -> str:
    return html.escape(text).replace("|", "&#124;")


class Segmenter:
    """Validated image file + expression text -> ``Segmentation``, with one ``Predictor``.

    Args:
        predictor: a loaded ``refseg.Predictor``.
        max_megapixels: larger images are refused from their header, before decoding.
    """

    def __init__(self, predictor, max_megapixels: float = MAX_MEGAPIXELS, batcher=None):
        self.predictor = predictor
        self.max_pixels = int(max_megapixels * 1e6)
        self.batcher = batcher  # a refseg.serve.Batcher: the page's forwards batched with the API's

    def read(self, path: str | os.PathLike | BinaryIO, name: Optional[str] = None) -> np.ndarray:
        """An uploaded file (a path, or the open file itself) -> RGB uint8 (H, W, 3); ImageReadError
        naming ``name`` (not the server path)."""
        shown = name or ("image" if hasattr(path, "read") else Path(path).name)
        return read_image(path, orientation="exif", max_pixels=self.max_pixels, name=shown)

    def segment(self, path: str | os.PathLike, text: Optional[str], name: Optional[str] = None) -> Segmentation:
        start = time.perf_counter()
        expressions = parse_expressions(text)  # before the image: cheap checks first
        image = self.read(path, name)
        t0 = time.perf_counter()
        if self.batcher is not None:
            masks = self.batcher.predict(image, expressions).masks
        else:
            masks = self.predictor.predict(image, expressions)  # (K, H, W) bool, one batched forward
        model_seconds = time.perf_counter() - t0
        texts = captions(expressions, masks)  # "no object matches ..." where a mask is empty
        drawn = overlay(image, masks, texts if len(texts) > 1 else texts[0])
        return Segmentation(expressions, drawn, masks, model_seconds, time.perf_counter() - start,
                            truncated=self._truncated(expressions))

    def explain(self, path: str | os.PathLike, text: Optional[str], name: Optional[str] = None):
        """(Explanation of the first expression, the image): the PWAMs' word attention, one forward."""
        expression = parse_expressions(text)[0]
        image = self.read(path, name)
        return self.predictor.explain(image, expression), image

    def _truncated(self, expressions: Sequence[str]) -> list[bool]:
        """Whether each expression has more tokens than the model reads (``model.text.max_tokens``)."""
        return self.predictor.processor.truncated(expressions)


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------


def dataset_examples(run_config, limit: int = 8) -> list[tuple[str, str]]:
    """(image path, expression) pairs from the val split of the dataset a checkpoint was trained on
    (its ``run_config.data``), one per image; [] when that dataset is not on this machine."""
    from .data.sources import open_source

    try:
        data = run_config.data
        samples = open_source(data).samples(data.val_split)
    except (UserError, OSError, ValueError):
        return []
    out, seen = [], set()
    for s in samples:
        if s.image_id in seen or not Path(s.image_path).is_file():
            continue
        seen.add(s.image_id)
        out.append((str(s.image_path), s.sentence))
        if len(out) == limit:
            break
    return out


def folder_examples(folder: str | os.PathLike, limit: int = 24) -> list[str]:
    """The photos under ``folder`` (recursively, sorted by path), as resolved paths; UserError if it is
    not a folder. These exact files are all the page serves from it (see ``app.py``), so only real
    images are listed: regular files with an image suffix that PIL identifies as an image, none whose
    path (below ``folder``) has a part beginning with a dot, and symlinks only when they resolve to
    such a file inside ``folder`` (listed once, by their target)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"--examples: not a directory: {root}")
    real_root = root.resolve()
    found: list[str] = []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts) or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            target = p.resolve(strict=True)
            inside = target.relative_to(real_root)
        except (OSError, ValueError, RuntimeError):  # dangling, a loop, or pointing outside the folder
            continue
        if (any(part.startswith(".") for part in inside.parts) or target.suffix.lower() not in IMAGE_SUFFIXES
                or not target.is_file() or str(target) in found or not _is_image(target)):
            continue
        found.append(str(target))
        if len(found) == limit:
            break
    return found


def _is_image(path: Path) -> bool:
    """Whether PIL recognises ``path`` as an image from its header (nothing is decoded)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return bool(im.format) and im.width > 0 and im.height > 0
    except Exception:  # noqa: BLE001 - not an image, whatever PIL says about it
        return False


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def offline_gradio():
    """Import gradio with its telemetry and version check off (they would call out on every start)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError:
        raise UserError("the app needs Gradio: pip install -e \".[app]\"") from None
    return gr


def _payload_path(payload) -> tuple[str, Optional[str]]:
    """Gradio's un-preprocessed image value (a FileData dict) -> (server path, the user's file name)."""
    if payload is None:
        raise UserError("no image: upload, paste or drop a photo first")
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
    if not path:
        raise UserError("no image: upload, paste or drop a photo first")
    name = payload.get("orig_name") if isinstance(payload, dict) else getattr(payload, "orig_name", None)
    return str(path), name


class _Scratch:
    """A private temporary folder for result files. Gradio copies a returned file into its cache when
    the request ends, so files older than a few minutes are no longer needed and are removed."""

    def __init__(self, keep_seconds: float = 300.0):
        self._dir = tempfile.TemporaryDirectory(prefix="refseg-app-")
        self.keep_seconds = keep_seconds
        self._count = 0

    def new(self) -> str:
        """A fresh path stem in the folder (after removing the stale files)."""
        now = time.time()
        for f in Path(self._dir.name).iterdir():
            with contextlib.suppress(OSError):
                if now - f.stat().st_mtime > self.keep_seconds:
                    f.unlink()
        self._count += 1
        return str(Path(self._dir.name) / f"{self._count:06d}")


SYNTHETIC_NOTE = ("**This checkpoint was trained on refshapes, synthetic coloured shapes:** it knows shapes, "
                  "not people or objects, and on a photo it will mark something arbitrary. For photos, use a "
                  "checkpoint trained on RefCOCO or converted from LAVT's published weights (see the README).")


def build_demo(segmenter: Segmenter, examples: Sequence[tuple[str, str]] = (), photos: Sequence[str] = (),
               title: str = "refseg", note: str = "", concurrency: int = 1):
    """The Gradio Blocks page around ``segmenter``; its segment event is the API ``/segment``.
    ``note``: Markdown shown under the title (e.g. ``SYNTHETIC_NOTE``); ``concurrency``: segment events
    run at once (the dynamic batcher's largest batch when the page shares it)."""
    gr = offline_gradio()
    scratch = _Scratch()

    def _refuse(message: str):
        """The page shows ``message`` (escaped: it may quote a file name, which the pop-up would render
        as HTML); the server's console gets one line, not a traceback."""
        print(f"refused a request: {message}", flush=True)
        return gr.Error(html.escape(message), title="Cannot segment", print_exception=False)

    def segment(image, text):
        """Segment the object that each line of ``text`` names: (overlay, mask as 0/255) at the image's size."""
        try:
            path, name = _payload_path(image)
            result = segmenter.segment(path, text, name=name)
        except UserError as e:
            raise _refuse(str(e)) from None
        except MemoryError:
            raise _refuse("out of memory on this image: try a smaller one") from None
        # PNGs written here with OpenCV's fast setting: Gradio's own PNG encoder took longer than the model.
        stem = scratch.new()
        return (str(write_image(f"{stem}_overlay.png", result.overlay)),
                str(write_image(f"{stem}_mask.png", result.mask)), result.summary())

    def explain(image, text):
        """Where each token of the first expression looked at each stage, and the gates' mean |S|."""
        try:
            path, name = _payload_path(image)
            exp, rgb = segmenter.explain(path, text, name=name)
        except UserError as e:
            raise _refuse(str(e)) from None
        gates = " · ".join(f"stage {i + 1}: {g:.3f}" for i, g in enumerate(exp.gate_means))
        note = (f"**{_escape(exp.text)}**: each tile is the softmax weight every pixel gives one token in "
                f"the PWAM of one stage (bright: high, scaled to the tile's maximum). Language gate mean "
                f"|S| (how much of the fused language each stage lets through): {gates}.")
        return exp.tiles(rgb), note

    # Uploads and results in Gradio's cache are deleted after an hour, so a long-running server's disk
    # use stays bounded.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"# {title}: segment by expression\n"
                    "Give a photo, type which object to segment and press Enter. Shift+Enter starts "
                    "another line: several expressions, one per line, give one coloured mask each.")
        if note:
            gr.Markdown(note, elem_id="note")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="image", sources=["upload", "clipboard", "webcam"], type="filepath",
                                 elem_id="image-input")
                text = gr.Textbox(label="expression", placeholder="the man on the left", lines=1,
                                  max_lines=MAX_EXPRESSIONS, submit_btn="Segment", elem_id="expression")
                explain_button = gr.Button("Explain: where each word looked", elem_id="explain", size="sm")
            with gr.Column():
                drawn = gr.Image(label="overlay", show_label=False, format="png", interactive=False,
                                 elem_id="overlay", buttons=["download", "fullscreen"])
                summary = gr.Markdown(elem_id="summary")
                mask = gr.Image(label="mask (PNG, 0/255)", format="png", interactive=False, image_mode="L", height=260,
                                elem_id="mask", buttons=["download"])
        if examples:
            gr.Examples([list(e) for e in examples], inputs=[image, text], label="validation images of the "
                        "checkpoint's dataset", examples_per_page=4)
        if photos:
            gr.Examples([[p, None] for p in photos], inputs=[image, text], label="photos",
                        examples_per_page=min(len(photos), 12))
        with gr.Accordion("Word attention (rows: tokens, columns: stages 1-4)", open=True):
            explanation = gr.Markdown(elem_id="explanation")
            gallery = gr.Gallery(columns=4, height="auto", object_fit="contain", show_label=False,
                                 elem_id="attention", format="png", interactive=False)
        details = gr.State()
        event = gr.on([text.submit], fn=segment, inputs=[image, text], outputs=[drawn, mask, details],
                      api_name="segment", preprocess=False, concurrency_limit=concurrency)
        event.then(lambda md: md, inputs=details, outputs=summary, api_visibility="private")
        explain_button.click(explain, inputs=[image, text], outputs=[gallery, explanation], api_name="explain",
                             api_visibility="undocumented", preprocess=False, concurrency_limit=1)
    return demo


# ---------------------------------------------------------------------------------------------
# Serving: who may call, which headers go out, the address, the exit
# ---------------------------------------------------------------------------------------------

# The page's own needs: Gradio's inline start-up script and styles, its images/uploads as data:/blob:
# URLs, its API and event stream on the same origin. Nothing from elsewhere; never inside a frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _split_host(value: str) -> str:
    """A Host header or URL netloc (``name``, ``name:port``, ``[v6]:port``) -> the lower-case name."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def allowed_host_names(host: str) -> tuple[set[str], bool]:
    """(names a request's Host may carry, whether any IP address is also fine) for a server on ``host``.

    Always this machine's loopback names and ``host`` itself. Bound to every interface (0.0.0.0, ::),
    also this machine's host names and any IP address: a DNS-rebinding page reaches the server under
    a name of its own, never under an address, so addresses are safe to accept.
    """
    names = set(LOCAL_NAMES) | {_split_host(host)}
    wildcard = host.strip() in WILDCARD_HOSTS
    if wildcard:
        with contextlib.suppress(OSError):
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return names - {""}, wildcard


class RequestGuard:
    """ASGI middleware around the Gradio app: refuses (403) a request whose ``Host`` is not one of this
    server's names (DNS rebinding) or whose ``Origin`` is another site (a cross-site upload or call;
    clients without a browser send no Origin), and adds ``SECURITY_HEADERS`` to every response."""

    def __init__(self, app, host: str = "127.0.0.1"):
        self.app = app
        self.names, self.any_address = allowed_host_names(host)

    def host_allowed(self, value: str) -> bool:
        name = _split_host(value)
        if not value or name in self.names:
            return True
        if self.any_address:
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(name)
                return True
        return False

    def refusal(self, headers: dict[str, str]) -> Optional[str]:
        host = headers.get("host", "")
        if not self.host_allowed(host):
            return f"Host {host!r} is not a name of this server"
        origin = headers.get("origin")
        if origin is not None:
            from urllib.parse import urlsplit

            netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
            if not netloc or netloc != host.strip().lower():
                return f"a request from another site ({origin}) to {host}"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        reason = self.refusal(headers)
        if reason is not None:
            print(f"refused a request: {reason}", flush=True)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = f"refused: {reason}\n".encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()),
                                    *[(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]]})
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def check_port(host: str, port: int) -> None:
    """UserError (one line) if ``host:port`` cannot be listened on: checked before the model load."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no obstacle
        try:
            s.bind(address)
        except OSError as e:
            what = "is in use by another program" if e.errno == 98 else f"cannot be used ({e.strerror})"
            raise UserError(f"cannot serve on {host}:{port}: the port {what}; choose another with --port") from None


PAGE_QUEUE_POLL_S = 0.02


def _calm_queue(demo):
    """The page's Gradio queue polls for work every ``PAGE_QUEUE_POLL_S`` instead of every millisecond.

    Gradio's queue loop sleeps 1 ms between looks on Linux (50 ms on Windows), and its progress loop
    10 ms: the server's event-loop thread then wakes about 850 times a second, 4 % of a core while idle,
    and under load takes the GIL from the model's forward in the main thread between every two of
    its operators. A page event waits at most 20 ms more for its turn; the HTTP API does not use this
    queue. Gradio's attributes are read where they are and left alone where they are not."""
    queue = getattr(demo, "_queue", None)
    for name in ("sleep_when_free", "progress_update_sleep_when_free"):
        if isinstance(getattr(queue, name, None), (int, float)):
            setattr(queue, name, max(getattr(queue, name), PAGE_QUEUE_POLL_S))
    return demo


def _stop_like_ctrl_c(signum, frame):
    raise KeyboardInterrupt


def launch(demo, host: str, port: int, allowed_paths: Sequence[str] = (), app_kwargs: Optional[dict] = None,
           main_loop: Optional[Callable[[], None]] = None) -> None:
    """Serve ``demo`` until interrupted (Ctrl-C or SIGTERM: the same clean shutdown, temporary files
    removed); UserError (one line) if the address cannot be used. ``allowed_paths``: the only files
    outside Gradio's cache it may serve (the example photos, listed one by one). ``app_kwargs``: more
    for Gradio's FastAPI app (``refseg.serve.app_kwargs``: the HTTP API's routes); ``RequestGuard``
    always wraps the whole app, API included. ``main_loop``: run in this (the main) thread while the
    server runs in its own (``Batcher.run``: the model's forward in the main thread); None: wait."""
    gr = offline_gradio()
    from starlette.middleware import Middleware

    # System fonts: the default theme's web fonts would be one more thing to serve or fetch.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    previous = signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        _calm_queue(demo.queue(default_concurrency_limit=1)).launch(
            server_name=host, server_port=port, share=False, show_error=False, ssr_mode=False,
            max_file_size=MAX_UPLOAD, allowed_paths=list(allowed_paths), footer_links=["api"], theme=theme,
            pwa=False, mcp_server=False, quiet=True, prevent_thread_lock=True,
            app_kwargs={**(app_kwargs or {}), "middleware": [Middleware(RequestGuard, host=host),
                                                             *(app_kwargs or {}).get("middleware", [])]})
        shown = f"[{host}]" if ":" in host else host
        print(f"serving on http://{shown}:{port}/ (Ctrl-C stops it)", flush=True)
        if main_loop is None:
            demo.block_thread()  # returns on Ctrl-C or SIGTERM, after closing the server
        else:
            try:
                main_loop()  # Ctrl-C or SIGTERM raise KeyboardInterrupt in it
            except KeyboardInterrupt:
                print("stopping: closing the server")
            finally:
                if demo.server:
                    demo.server.close()
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port}: {e.strerror or e}; choose another --port") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_cached_files(demo)


def remove_cached_files(demo) -> int:
    """Delete the files this page put in Gradio's cache (uploads, results) and the folders that held
    only them; returns how many files. Gradio's own clean-up at shutdown runs in its server thread and
    may not finish before the process exits. Copies of the example images stay, as Gradio keeps them
    (another server with the same examples shares them); our result folder (``_Scratch``) is removed
    when the process exits."""
    files: set[str] = set()
    for group in getattr(demo, "temp_file_sets", []):
        files |= {str(f) for f in group}
    for component in getattr(demo, "blocks", {}).values():
        files -= {str(f) for f in getattr(component, "keep_in_cache", set())}
    removed = 0
    for f in files:
        with contextlib.suppress(OSError):
            os.remove(f)
            removed += 1
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(f))  # only if it is now empty
    return removed
