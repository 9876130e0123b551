"""The browser client (clients/js) against the real service, with Node's test runner.

The Node tests publish through the sidecar, mint tokens with the test secret, and ask this
module (over a small HTTP control endpoint) to restart the service.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.conftest import SECRET, ServiceProcess, running_stack

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "js"
REQUIRED = os.environ.get("REALTIME_SYNC_REQUIRE_E2E") == "1"  # set by `make test`


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (CLIENT_DIR / "node_modules" / "ws").is_dir():
        if REQUIRED:
            pytest.fail("node and clients/js/node_modules are required (make test runs npm ci)")
        pytest.skip("node or clients/js/node_modules missing (make test installs them)")
    return node


@pytest.fixture
def restartable_stack() -> Iterator[tuple[ServiceProcess, str]]:
    extra = {"JWT_LEEWAY_S": "0", "DRAIN_S": "0.3", "HEARTBEAT_S": "5"}
    with running_stack("client-js", service_env_extra=extra) as service:

        class Control(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != "/restart":
                    self.send_error(404)
                    return
                service.stop()
                service.start()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        control = ThreadingHTTPServer(("127.0.0.1", 0), Control)
        thread = threading.Thread(target=control.serve_forever, daemon=True)
        thread.start()
        try:
            yield service, f"http://127.0.0.1:{control.server_address[1]}"
        finally:
            control.shutdown()
            control.server_close()


def test_the_browser_client_passes_its_node_tests(
    restartable_stack: tuple[ServiceProcess, str],
) -> None:
    node = _node()
    service, control_url = restartable_stack
    env = {
        **os.environ,
        "RS_WS_URL": service.ws_url,
        "RS_PUBLISH_URL": f"{service.sidecar.base_url}/v1.0/publish/pubsub/task-updates",
        "RS_JWT_SECRET": SECRET,
        "RS_CONTROL_URL": control_url,
    }
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", "test/"],
        cwd=CLIENT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert re.search(r"\bfail 0\b", report), report
    assert re.search(r"\bskipped 0\b", report), report  # the live tests ran too
    assert "pass 46" in report, report
