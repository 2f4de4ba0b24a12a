"""Screenshot an HTML report as a reader at 1280 px sees it (refreshes docs/report.png).

Usage: .venv/bin/python scripts/screenshot-report.py REPORT.html OUT.png [HEIGHT]
Uses the system's Chromium through Playwright (the `dev` extra); no browser download.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    page_path, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    height = int(sys.argv[3]) if len(sys.argv) > 3 else 2400
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        sys.exit("screenshot-report: chromium not found (scripts/install-servers.sh)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": height})
        tab.goto(page_path.as_uri())
        tab.screenshot(path=str(out))
        browser.close()


if __name__ == "__main__":
    main()
