"""The dev sidecar refuses what a web page makes the browser send it (headless chromium).

A page served from another local origin posts a "simple" cross-site request (no-cors,
``text/plain``, no preflight) to the sidecar's publish API: it must not be published,
unless the sidecar was told to allow that origin.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bench.common import free_port
from tests.integration.harness import SidecarProcess, running_sidecar

TOPIC = "task-updates"
PAGE = b"<!doctype html><title>some other site</title><p>hello</p>"


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def page_server() -> Iterator[str]:
    """A local web site on its own port; yields its origin (as the browser names it)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[str, str]]:
    """(a site the sidecar allows, a site it does not)."""
    with page_server() as allowed, page_server() as other:
        yield allowed, other


@pytest.fixture(scope="module")
def sidecar(sites: tuple[str, str]) -> Iterator[SidecarProcess]:
    allowed, _ = sites
    # No app listens on the app port: published events are still retained on the topic.
    with running_sidecar(
        app_ports=[free_port()], extra_args=["--allowed-origins", allowed]
    ) as process:
        yield process


def browser_publish(browser: Any, site: str, sidecar: SidecarProcess, body: str) -> None:
    """From a page of `site`, the cross-site publish any page can make without a preflight;
    returns once the browser has the (opaque) answer."""
    page = browser.new_page()
    try:
        page.goto(site + "/")
        page.evaluate(
            """async ([url, body]) => {
                await fetch(url, {
                    method: "POST", mode: "no-cors",
                    headers: {"Content-Type": "text/plain"}, body,
                });
            }""",
            [f"{sidecar.base_url}/v1.0/publish/pubsub/{TOPIC}", body],
        )
    finally:
        page.close()


def published(sidecar: SidecarProcess) -> list[object]:
    return [message.get("data") for message in sidecar.topic_messages(TOPIC)]


def test_a_page_of_another_origin_cannot_publish_through_the_dev_sidecar(
    browser: Any, sites: tuple[str, str], sidecar: SidecarProcess
) -> None:
    _, other = sites
    browser_publish(browser, other, sidecar, "from-a-foreign-page")
    # A program (no Origin, no Sec-Fetch-Site) still publishes; published in order, so
    # once the control message is retained the browser's would be too.
    assert sidecar.publish(TOPIC, b"control-1", content_type="text/plain") == 204
    assert published(sidecar)[-1] == "control-1"
    assert "from-a-foreign-page" not in published(sidecar)
    assert "refused" in sidecar.logs()


def test_a_page_of_an_allowed_origin_can_publish(
    browser: Any, sites: tuple[str, str], sidecar: SidecarProcess
) -> None:
    allowed, _ = sites
    browser_publish(browser, allowed, sidecar, "from-an-allowed-page")
    assert sidecar.publish(TOPIC, b"control-2", content_type="text/plain") == 204
    assert published(sidecar)[-2:] == ["from-an-allowed-page", "control-2"]
