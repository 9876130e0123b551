"""The package as a user installs it: the built wheel (not an editable install) in a fresh
virtualenv, `realtime-sync dev` run from it outside the source tree, the board loaded in
headless Chromium until it shows connected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ARTIFACTS, http_get
from tests.integration.devrun import running_dev
from tests.integration.harness import PROJECT_ROOT

CLIENT_SOURCE = PROJECT_ROOT / "clients" / "js" / "realtime-sync.js"
INSTALL_TIMEOUT_S = 300  # pip's cache makes it ~10 s; a cold cache downloads the deps

playwright_sync = pytest.importorskip("playwright.sync_api")


def _run(*command: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `realtime-sync` script of a fresh virtualenv holding only the built wheel and
    its dependencies (pip's cache stays on; no system site-packages)."""
    root = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", "dist", PROJECT_ROOT, cwd=root)
    [wheel] = (root / "dist").glob("realtime_sync-*.whl")
    _run(sys.executable, "-m", "venv", "venv", cwd=root)
    python = root / "venv" / "bin" / "python"
    _run(python, "-m", "pip", "install", "--no-compile", wheel, cwd=root)
    where = _run(python, "-c", "import realtime_sync; print(realtime_sync.__file__)", cwd=root)
    assert Path(where.strip()).is_relative_to(root / "venv"), where
    return root / "venv" / "bin" / "realtime-sync"


def test_the_installed_wheel_serves_a_board_that_connects(
    installed: Path, browser: Any, tmp_path: Path
) -> None:
    log = ARTIFACTS / "dev-installed-wheel.log"
    with running_dev([str(installed)], log, "--no-demo", cwd=tmp_path) as dev:
        dev.wait_for_banner()
        page = browser.new_page()
        page.goto(dev.board_url.replace("localhost", "127.0.0.1"))
        connection = page.locator("#connection")
        playwright_sync.expect(connection).to_have_attribute(
            "data-state", "connected", timeout=15_000
        )
        base = f"http://127.0.0.1:{dev.ports['WS_PORT']}"
        assert http_get(f"{base}/client/realtime-sync.js") == (200, CLIENT_SOURCE.read_bytes())
        for other in ("package.json", "package-lock.json", "test/client.test.mjs"):
            assert http_get(f"{base}/client/{other}")[0] == 404
        page.close()
