"""Screenshot of the chat page answering side by side, for docs/chat_page.png.

    python scripts/chat_page_screenshot.py runs/demo/world/model_world_1.12M.safetensors docs/chat_page.png \
        --question "What does json.dumps do?" --question "And os.path.join?"

Starts `textjepa serve MODEL` on a free port of 127.0.0.1, opens its page in headless Chromium (Debian's
chromium through Playwright, as the tests do), asks the questions with the conditioning switch on "side by
side" and saves a screenshot of the window.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model_world_*.safetensors")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--question", action="append", help="a question to ask (repeatable)")
    parser.add_argument("--mode", default="both", choices=["conditioned", "ablated", "both"])
    parser.add_argument("--size", default="1180x820", help="window WIDTHxHEIGHT (default %(default)s)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    questions = args.question or ["What does `json.dumps` do?", "And `os.path.join`?"]
    width, height = (int(n) for n in args.size.split("x"))

    from playwright.sync_api import sync_playwright

    server = subprocess.Popen(
        [sys.executable, "-m", "textjepa", "serve", args.model, "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline()
        if "listening on http://" not in line:
            print(f"error: the server did not start: {line.strip()}", file=sys.stderr)
            return 1
        base = line.split("listening on ")[1].split()[0].removesuffix("/v1")
        while httpx.get(f"{base}/health").status_code != 200:
            if server.poll() is not None:
                print("error: the server stopped while loading the model", file=sys.stderr)
                return 1
            time.sleep(0.2)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('status').textContent === 'ready'")
            page.check(f'input[name="mode"][value="{args.mode}"]')
            for count, question in enumerate(questions, start=1):
                page.fill("#prompt", question)
                page.press("#prompt", "Enter")
                page.wait_for_function(
                    """(count) => document.querySelectorAll("article.turn").length === count
                        && document.getElementById("status").textContent === "ready" """,
                    arg=count,
                    timeout=300_000,
                )
            args.out.write_bytes(page.screenshot())
            browser.close()
    finally:
        server.terminate()
        server.wait(20)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
