"""Headless Chromium for the board tests: Debian's /usr/bin/chromium driven by Playwright
(never `playwright install`), one browser per test module."""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REQUIRED = os.environ.get("REALTIME_SYNC_REQUIRE_E2E") == "1"  # set by `make test`


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_sync = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        if REQUIRED:
            pytest.fail(f"{CHROMIUM} is required (make test installs it with apt-get)")
        pytest.skip(f"{CHROMIUM} missing (make test installs it)")
    pw = playwright_sync.sync_playwright().start()
    try:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        yield browser
        browser.close()
    finally:
        # Playwright stops its driver without waiting for the process to exit, so the
        # driver's Popen may be collected "still running": not ours to fix, keep it quiet.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            pw.stop()
            gc.collect()
