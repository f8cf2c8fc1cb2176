"""The plain HTTP API beside the page, and the dynamic batcher both use.

    curl -F image=@photo.jpg -F text="the dog" http://127.0.0.1:7860/api/segment -o mask.png
    curl -F image=@photo.jpg -F $'text=the dog\\nthe ball' -F format=json http://127.0.0.1:7860/api/segment

``Batcher``: one worker thread owns the model. Requests wait in a bounded queue; the worker takes the
first and whatever queued while the last forward ran, and, under load (more waiting, or the last
forward served several), waits up to ``window_ms`` for more, up to ``max_batch`` expressions, and
runs them in ONE forward (``Predictor.forward_many``: each request's image resized to the processor's
uint8 planes, all stacked; each request's logits brought back to its own image). A full queue refuses
at once (``ServerBusy``); a request waiting longer than its timeout is dropped from the queue.

``api_router``: ``POST /api/segment`` (multipart ``image`` + ``text``; ``format`` png or json),
``GET /api/health``; errors are JSON ``{"error": ...}``: 400 bad input, 413 body over the limit
(refused from Content-Length, and the streamed body is cut at the limit), 503 + Retry-After when busy.
"""
# (no ``from __future__ import annotations``: FastAPI reads the handlers' annotations at run time)
import asyncio
import collections
import concurrent.futures
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import UserError

log = logging.getLogger("refseg.serve")

BATCH_WINDOW_MS = 5.0
MAX_BATCH = 8
MAX_QUEUE = 32
REQUEST_TIMEOUT = 60.0
INLINE_PIXELS = 1 << 20  # images up to a megapixel are decoded and encoded in the event loop (api_router)
MAX_BODY_MB = 100.0  # as the page's upload limit (refseg.app.MAX_UPLOAD)


class ServerBusy(UserError):
    """The queue is full or the request waited past its timeout: try again later (HTTP 503).

    A UserError only so that the page shows its message as it shows bad input (one line)."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)  # identity: comparing jobs must not compare their images
class _Job:
    image: np.ndarray
    expressions: list[str]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class Result:
    """One request's answer: ``margins`` (K, H, W) float32 object-minus-background logits at the
    image's size (mask = margin > 0), the forward's milliseconds and how many requests shared it."""

    margins: np.ndarray
    model_ms: float
    batch_requests: int
    no_target_proba: Optional[np.ndarray] = None  # (K,) with a no-target head, else None
    no_target_threshold: float = 0.5

    @property
    def no_target(self) -> Optional[np.ndarray]:
        """(K,) bool: the model's "nothing matches" decision per expression (None without a head)."""
        return None if self.no_target_proba is None else self.no_target_proba > self.no_target_threshold

    @property
    def masks(self) -> np.ndarray:
        """(K, H, W) bool, as ``Predictor.predict``: empty where the no-target head says nothing matches."""
        masks = self.margins > 0
        if self.no_target_proba is not None:
            masks[self.no_target] = False
        return masks


class Batcher:
    """Dynamic batching over one ``Predictor`` (see the module's docstring).

    Args:
        predictor: a loaded ``refseg.Predictor``; only the worker thread runs its forward.
        window_ms: how long the worker waits for more requests after the first of a batch.
        max_batch: the most expressions in one forward (a request with more runs alone).
        max_queue: the most requests waiting; beyond it ``submit`` raises ``ServerBusy``.
        timeout: seconds a request may wait for its result (``predict``).
    """

    def __init__(self, predictor, window_ms: float = BATCH_WINDOW_MS, max_batch: int = MAX_BATCH,
                 max_queue: int = MAX_QUEUE, timeout: float = REQUEST_TIMEOUT, start: bool = True):
        if window_ms < 0 or max_batch < 1 or max_queue < 1 or timeout <= 0:
            raise ValueError("window_ms >= 0, max_batch >= 1, max_queue >= 1 and timeout > 0 are required")
        self.predictor = predictor
        self.window = window_ms / 1000.0
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self.timeout = float(timeout)
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._forward_s = 0.1  # running estimate of one forward, for Retry-After
        self.batches = 0  # forwards run
        self._last_jobs = 0  # requests in the last forward
        self.requests = 0  # requests answered
        self._worker = None
        if start:
            self._worker = threading.Thread(target=self._loop, name="refseg-batcher", daemon=True)
            self._worker.start()

    def run(self) -> None:
        """Serve in the calling thread until ``close()`` (a Batcher made with ``start=False``).

        app.py runs it in the main thread, the web server in another: the model's OpenMP threads then
        belong to the one thread that ever runs torch. A second thread running the model beside a main
        thread that has run torch ops makes two OpenMP teams on the same cores, and libgomp then
        barely spins between parallel regions: every operator waits on a futex wake-up, and the default
        model's forward took 51-60 ms in a worker thread against 26-31 ms in the main thread
        (2-core EPYC VM)."""
        self._loop()

    # -- clients -----------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a forward)."""
        return len(self._queue)

    def retry_after(self) -> int:
        """Seconds after which a refused client may expect room: the queue's drain time, at least 1."""
        per_batch = max(self._forward_s, 1e-3)
        return max(1, math.ceil(per_batch * (self.depth / max(self.max_batch, 1) + 1)))

    def submit(self, image: np.ndarray, expressions: Sequence[str]) -> concurrent.futures.Future:
        """Queue one request; its future gives a ``Result``. ServerBusy at once when the queue is full."""
        job = _Job(image, list(expressions))
        with self._cond:
            if self._closed:
                raise ServerBusy("the server is shutting down", retry_after=5)
            if len(self._queue) >= self.max_queue:
                raise ServerBusy(f"the server is busy ({len(self._queue)} requests waiting): try again shortly",
                                 retry_after=self.retry_after())
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def predict(self, image: np.ndarray, expressions: Sequence[str], timeout: Optional[float] = None) -> Result:
        """Blocking: queue, wait (at most ``timeout``, default the batcher's), return the ``Result``."""
        future = self.submit(image, expressions)
        try:
            return future.result(timeout=self.timeout if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            raise self._timed_out(future) from None

    async def predict_async(self, image: np.ndarray, expressions: Sequence[str]) -> Result:
        """As ``predict``, awaiting without holding a thread."""
        future = self.submit(image, expressions)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout)
        except asyncio.TimeoutError:
            raise self._timed_out(future) from None

    def _timed_out(self, future) -> ServerBusy:
        future.cancel()  # still queued: the worker skips it; already running: its result is dropped
        with self._cond:
            for job in list(self._queue):
                if job.future is future:
                    self._queue.remove(job)
        return ServerBusy(f"timed out after {self.timeout:g} s waiting for the model: the server is busy",
                          retry_after=self.retry_after())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30)

    # -- the worker --------------------------------------------------------------------------------
    def _take(self) -> list[_Job]:
        """The next batch: the first waiting job, then more arriving within the window."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return []
            batch = [self._queue.popleft()]
            rows = len(batch[0].expressions)
            # The window is waited only under load: when more requests are already waiting, or the last
            # forward served several. A lone request (one client at a time) goes at once, where the
            # window would only add to its latency; under load the requests that queued while the last
            # forward ran, and those arriving within the window, share the next one.
            busy = bool(self._queue) or self._last_jobs > 1
            deadline = time.monotonic() + (self.window if busy else 0.0)
            while rows < self.max_batch:
                while not self._queue and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._queue or rows + len(self._queue[0].expressions) > self.max_batch:
                    break
                job = self._queue.popleft()
                batch.append(job)
                rows += len(job.expressions)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            jobs = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            t0 = time.perf_counter()
            try:
                answers = self.predictor.forward_many([(j.image, j.expressions) for j in jobs])
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM while serving in the main thread (run)
                for j in jobs:
                    j.future.set_exception(ServerBusy("the server is shutting down", retry_after=5))
                raise
            except Exception as e:  # noqa: BLE001 - handed to each waiting request, the worker lives on
                for j in jobs:
                    j.future.set_exception(e)
                continue
            seconds = time.perf_counter() - t0
            self._forward_s = 0.8 * self._forward_s + 0.2 * seconds
            self.batches += 1
            self.requests += len(jobs)
            self._last_jobs = len(jobs)
            threshold = getattr(self.predictor, "no_target_threshold", 0.5)
            for j, (m, p) in zip(jobs, answers):
                j.future.set_result(Result(m.numpy(), 1000.0 * seconds, len(jobs), p, threshold))


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


class BodyTooLarge(Exception):
    pass


def encode_png(mask: np.ndarray) -> bytes:
    """bool or 0/255 (H, W) -> PNG bytes (8-bit, one channel, 0/255).

    No row filter and zlib's run-length strategy: a mask is long runs of one value, for which this is
    as small as level-1 deflate after libpng's adaptive filtering (which tries every filter on every
    row) and 5x faster (0.3 against 1.6 ms at 640x480, 2-core EPYC VM)."""
    import cv2

    arr = mask.astype(np.uint8) * 255 if mask.dtype == bool else mask.astype(np.uint8)
    params = [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, buf = cv2.imencode(".png", arr, params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def rle(mask: np.ndarray) -> dict:
    """bool (H, W) -> COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools)."""
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}


def no_target(result, index: int) -> Optional[bool]:
    """The model's no-target decision for expression ``index`` of a request, when the model makes one
    (``model.no_target.enabled``); None without a no-target head (an empty mask is then the answer)."""
    decided = result.no_target
    return None if decided is None else bool(decided[index])


_SEGMENT_DOC = """Segment the object each line of `text` names in `image`.

`format=png` (default): the union of the masks as a 0/255 PNG at the image's size.
`format=json`: per expression its mask as COCO RLE, its area in pixels, the no-target decision
(null when the model has no no-target head) and the model's milliseconds."""

_SEGMENT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image", "text"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "the photo (JPEG, PNG, WebP, ...)"},
        "text": {"type": "string", "description": "one expression, or several, one per line"},
        "format": {"type": "string", "enum": ["png", "json"], "default": "png"}}}}}},
    "responses": {"200": {"content": {"image/png": {}, "application/json": {}},
                          "description": "the mask PNG, or the JSON of format=json"},
                  "400": {"description": "bad image or text: {\"error\": ...}"},
                  "413": {"description": "body over the limit"},
                  "503": {"description": "busy (queue full or timed out); see Retry-After"}}}


def api_router(segmenter, batcher: Batcher, max_body_bytes: int = int(MAX_BODY_MB * 1e6), model_name: str = ""):
    """The FastAPI router of ``/api/segment`` and ``/api/health`` around ``segmenter`` (its validation
    and image reading) and ``batcher`` (the model)."""
    from fastapi import APIRouter, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response
    from starlette.formparsers import MultiPartException, MultiPartParser

    from .app import parse_expressions
    from .data.io import read_image_size

    router = APIRouter()

    def error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def read_form(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise UserError("invalid Content-Length header") from None
            if n > max_body_bytes:
                raise BodyTooLarge(n)
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            raise UserError("expected a multipart/form-data body with an image file and text "
                            "(curl -F image=@photo.jpg -F text=\"the dog\")")

        async def capped():
            seen = 0
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > max_body_bytes:
                    raise BodyTooLarge(seen)
                yield chunk

        try:
            return await MultiPartParser(request.headers, capped(), max_files=1, max_fields=8,
                                         max_part_size=1024 * 1024).parse()
        except MultiPartException as e:
            raise UserError(f"bad multipart body: {e.message}") from None

    def read_image(upload) -> np.ndarray:
        """The uploaded file -> RGB uint8, through the page's reader (megapixel limit from the header),
        decoded where the multipart parser left it (memory, or its spooled file past 1 MB): no copy."""
        return segmenter.read(upload.file, name=Path(upload.filename or "image").name)

    async def decode(upload) -> np.ndarray:
        """``read_image`` in the event loop for a photo of up to ``INLINE_PIXELS`` (2 ms at
        640x480: less than the hop to a worker thread and back, 0.45 ms of a one-client request here),
        in a worker thread for larger ones or an unreadable header, which must not hold the loop."""
        try:
            upload.file.seek(0)
            height, width = read_image_size(upload.file)
        except Exception:  # noqa: BLE001 - the reader, in a thread, says what is wrong with it
            height = width = None
        if height is not None and height * width <= INLINE_PIXELS:
            return read_image(upload)
        return await run_in_threadpool(read_image, upload)

    @router.post("/api/segment", summary="Segment by expression", description=_SEGMENT_DOC,
                 openapi_extra=_SEGMENT_BODY, response_class=Response)
    async def segment(request: Request):
        t_start = time.perf_counter()
        form = None
        try:
            form = await read_form(request)
            upload, text, fmt = form.get("image"), form.get("text"), form.get("format") or "png"
            if not isinstance(text, (str, type(None))) or not isinstance(fmt, str):
                raise UserError("text and format must be form fields, not files")
            fmt = fmt.strip().lower()
            if fmt not in ("png", "json"):
                raise UserError(f"format must be png or json, got {fmt[:20]!r}")
            expressions = parse_expressions(text)
            if upload is None or isinstance(upload, str):
                raise UserError("no image: send the photo as a file field named image (-F image=@photo.jpg)")
            image = await decode(upload)
            result = await batcher.predict_async(image, expressions)
        except BodyTooLarge:
            return error(413, f"the request body is larger than the limit of {max_body_bytes / 1e6:g} MB",
                         headers={"Connection": "close"})
        except ServerBusy as e:
            return error(503, str(e), headers={"Retry-After": str(int(e.retry_after))})
        except UserError as e:
            return error(400, str(e))
        except MemoryError:
            return error(413, "out of memory on this image: try a smaller one")
        except Exception:  # noqa: BLE001 - not the user's input: logged, answered 500 without details
            log.exception("/api/segment failed")
            return error(500, "internal error (logged on the server)")
        finally:
            if form is not None:
                await form.close()
        masks = result.masks
        timing = {"X-Model-Ms": f"{result.model_ms:.1f}", "X-Batch-Requests": str(result.batch_requests)}
        if fmt == "png":
            union = masks.any(axis=0)
            # Encoding takes 0.3 ms at 640x480: in the event loop that is less than the hop to a worker
            # thread and back; a large image's would hold the loop, so it goes to the thread pool.
            body = encode_png(union) if union.size <= INLINE_PIXELS else await run_in_threadpool(encode_png, union)
            return Response(body, media_type="image/png", headers=timing)
        h, w = masks.shape[1:]
        out = {"width": w, "height": h, "model_ms": round(result.model_ms, 2), "batch_requests": result.batch_requests,
               "total_ms": round(1000 * (time.perf_counter() - t_start), 2),
               "results": [{"expression": e, "area": int(m.sum()), "no_target": no_target(result, i),
                            "rle": rle(m)} for i, (e, m) in enumerate(zip(expressions, masks))]}
        return JSONResponse(out, headers=timing)

    @router.get("/api/health", summary="Model, device and queue")
    async def health():
        p = batcher.predictor
        return {"status": "ok", "model": model_name or str(getattr(p, "checkpoint_path", "") or ""),
                "device": str(p.device), "backend": getattr(p, "backend", "fp32"), "queue_depth": batcher.depth,
                "max_queue": batcher.max_queue, "max_batch": batcher.max_batch,
                "batch_window_ms": 1000 * batcher.window, "request_timeout_s": batcher.timeout,
                "max_body_mb": max_body_bytes / 1e6, "batches": batcher.batches, "requests": batcher.requests}

    api_routes = list(router.routes)

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi():
        from fastapi.openapi.utils import get_openapi

        return get_openapi(title="refseg", version="1", routes=api_routes,
                           description="Referring image segmentation over HTTP: POST /api/segment")

    @router.get("/docs", include_in_schema=False)
    async def docs():
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="refseg API")

    return router


def app_kwargs(router) -> dict:
    """Keyword arguments for Gradio's FastAPI app (``launch(app_kwargs=...)``): the API's routes ahead
    of Gradio's. /openapi.json describes only the API's routes (not Gradio's own); /docs shows it."""
    return {"routes": list(router.routes)}

