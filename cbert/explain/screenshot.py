"""The explanation page rendered to a PNG by a real headless Chromium, driven by Playwright with the
system's browser (Playwright's own browser download is not needed). Requests leaving the page's own
file are refused and counted: the page must need none."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UsageError
from ..extras import need

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str:
    """$CBERT_CHROMIUM, else the first Chromium on PATH (Debian's /usr/bin/chromium)."""
    given = os.environ.get("CBERT_CHROMIUM")
    if given:
        if not Path(given).is_file():
            raise UsageError(f"CBERT_CHROMIUM={given}: no such file")
        return given
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise UsageError("--png needs a Chromium browser and none is installed; install it (Debian/Ubuntu: "
                     "apt-get install chromium) or set CBERT_CHROMIUM to its path")


def screenshot(html_file: str | Path, width: int = 1400, inspect=None) -> tuple[bytes, list[str]]:
    """(the full page as PNG bytes, the URLs it tried to fetch beyond its own file, all refused).
    ``inspect(page)``, when given, is called with the loaded Playwright page before the screenshot."""
    sync_api = need("playwright.sync_api", "--png (a screenshot of the page)")
    url = Path(html_file).absolute().as_uri()
    refused: list[str] = []

    def route(r):
        if r.request.url == url or r.request.url.startswith("data:"):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    # Chromium refuses to run as root inside its sandbox (containers, CI).
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=args, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.route("**/*", route)
            page.goto(url, wait_until="load")
            if inspect is not None:
                inspect(page)
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    return png, refused
