#!/usr/bin/env python
"""The README's picture of the web app (docs/app.png), taken as a user would see the page.

Starts ``python app.py`` with the checkpoint, opens it in headless Chromium (the system's, through
Playwright), uploads the image, types the expressions (one per line), presses Enter, clicks Explain
and saves a full-page screenshot. Prints the page's summary.

    python benchmarks/app_screenshot.py --checkpoint runs/x/best [--image data/refshapes/images/004004.jpg]
        [--text "the leftmost of the shapes" --text "the largest shape"] [--out docs/app.png]
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from _common import REPO, start_app


def main(argv=None) -> int:
    from refseg.cli import ArgumentParser
    from refseg.errors import UserError
    from refseg.hub import resolve_checkpoint

    ap = ArgumentParser(prog="app_screenshot.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="default: the newest runs/*/best")
    ap.add_argument("--image", default=None, help="default: the first val image of the checkpoint's dataset")
    ap.add_argument("--text", action="append", default=None, help="an expression (repeat for several)")
    ap.add_argument("--out", default=str(REPO / "docs" / "app.png"))
    ap.add_argument("--width", type=int, default=1280, help="browser window width (default: 1280)")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = ap.parse_args(argv)
    ckpt = resolve_checkpoint(args.checkpoint, runs_dir=REPO / "runs")
    browser_path = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if browser_path is None:
        raise UserError("no Chromium found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from refseg.app import dataset_examples

    from refseg.config import load_run_config

    examples = dataset_examples(load_run_config(ckpt))
    image = args.image or (examples[0][0] if examples else None)
    if image is None:
        raise UserError("the checkpoint's dataset is not on this machine: pass --image")
    texts = args.text or ([examples[0][1]] if examples and not args.image else ["the object in the middle"])
    with tempfile.NamedTemporaryFile("w", prefix="app-screenshot-", suffix=".log") as log:
        proc, url = start_app(ckpt, log)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": args.width, "height": 900})
                page.goto(url, wait_until="load")
                box = page.locator("#expression textarea")
                box.wait_for(timeout=60_000)
                page.locator("#image-input input[type=file]").set_input_files(str(image))
                page.locator("#image-input img").wait_for(timeout=30_000)
                for i, text in enumerate(texts):
                    if i:
                        box.press("Shift+Enter")
                    box.type(text)
                box.press("Enter")
                page.locator("#summary table").wait_for(timeout=60_000)
                page.locator("#explain").click()
                page.wait_for_function("document.querySelectorAll('#attention img').length >= 4", timeout=60_000)
                page.wait_for_timeout(1000)  # images finish decoding
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out, full_page=True)
                print(page.locator("#summary").inner_text())
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"screenshot of {url} ({ckpt}, {image}) written to {args.out}")
    return 0


if __name__ == "__main__":
    from refseg.cli import run

    run(main, prog="app_screenshot.py")
