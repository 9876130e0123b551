"""The live task board in a real browser (Debian's chromium, headless, driven by Playwright).

The board is served by the service (BOARD=true) and built on the browser client: events
published through the dev sidecar must show up as cards, and after the service restarts the
board must reconnect and catch up with what happened while it was away.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from realtime_sync.demo import Story
from tests.integration.conftest import ARTIFACTS, ServiceProcess, running_stack

TIMEOUT_MS = 10_000

playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def board_stack() -> Iterator[ServiceProcess]:
    extra = {"BOARD": "true", "DRAIN_S": "0.3"}
    with running_stack("board", service_env_extra=extra) as service:
        yield service


def event(kind: str, user: str, task: int, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "type": kind, "user_id": user, "task_id": task, "data": data}


def card(page: Any, task: int) -> Any:
    return page.locator(f'.card[data-task-id="{task}"]')


def column_of(page: Any, task: int) -> Any:
    return page.locator(f'.column:has(.card[data-task-id="{task}"])')


def test_the_board_shows_live_changes_and_catches_up_after_a_restart(
    board_stack: ServiceProcess, browser: Any
) -> None:
    expect = playwright_sync.expect
    service = board_stack
    token = service.token("alice")
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{service.base}/#token={token}")
    connection = page.locator("#connection")
    expect(connection).to_have_attribute("data-state", "connected", timeout=TIMEOUT_MS)
    assert token not in page.url  # the fragment is read, then removed from the address bar

    # Appear, move, change, disappear, come back.
    service.publish(
        event(
            "TASK_ADDED",
            "alice",
            1,
            {"title": "Write the launch post", "status": "todo", "priority": "high"},
        )
    )
    expect(card(page, 1)).to_contain_text("Write the launch post", timeout=TIMEOUT_MS)
    expect(column_of(page, 1)).to_have_attribute("data-status", "todo")
    service.publish(
        event(
            "TASK_STATUS_CHANGED",
            "alice",
            1,
            {"title": "Write the launch post", "status": "in_progress", "priority": "high"},
        )
    )
    expect(column_of(page, 1)).to_have_attribute("data-status", "in_progress", timeout=TIMEOUT_MS)
    shared = event("TASK_ADDED", "bob", 2, {"title": "Review the budget", "status": "review"})
    shared["metadata"] = {"shared_with": ["alice"]}
    service.publish(shared)
    expect(card(page, 2)).to_contain_text("shared by bob", timeout=TIMEOUT_MS)
    service.publish(event("TASK_ADDED", "carol", 3, {"title": "Not for alice", "status": "todo"}))
    service.publish(
        event(
            "TASK_CHANGED",
            "alice",
            1,
            {"title": "Write and send the launch post", "status": "in_progress"},
        )
    )
    expect(card(page, 1)).to_contain_text("Write and send the launch post", timeout=TIMEOUT_MS)
    service.publish(event("TASK_REMOVED", "alice", 1, {}))
    expect(card(page, 1)).to_have_count(0, timeout=TIMEOUT_MS)
    service.publish(event("TASK_RESTORED", "alice", 1, {}))
    expect(card(page, 1)).to_contain_text("Write and send the launch post", timeout=TIMEOUT_MS)
    expect(column_of(page, 1)).to_have_attribute("data-status", "in_progress")
    expect(card(page, 3)).to_have_count(0)  # carol's task never reaches alice
    expect(page.locator("#update-count")).to_have_text("6")

    # The service restarts (SIGTERM, as a deploy does); changes made meanwhile must appear.
    service.stop()
    expect(connection).to_have_attribute("data-state", "reconnecting", timeout=TIMEOUT_MS)
    service.publish(event("TASK_ADDED", "alice", 4, {"title": "Made while away", "status": "todo"}))
    service.publish(event("TASK_STATUS_CHANGED", "alice", 1, {"status": "done"}))
    service.start()
    expect(connection).to_have_attribute("data-state", "connected", timeout=15_000)
    expect(card(page, 4)).to_contain_text("Made while away", timeout=15_000)
    expect(column_of(page, 1)).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    service.publish(
        event("TASK_ADDED", "alice", 5, {"title": "After the restart", "status": "todo"})
    )
    expect(card(page, 5)).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#update-count")).to_have_text("9")  # nothing twice

    # A lived-in board for the screenshot: a short, seeded demo story.
    story = Story(["alice", "bob", "carol"], rng=random.Random(4), first_task_id=100)
    for _, item in zip(range(45), story.events(), strict=False):
        service.publish(item)
    expect(page.locator(".card").first).to_be_visible()
    page.wait_for_timeout(1500)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "board.png"), full_page=True)
    assert page.locator(".card").count() >= 5
    assert errors == []
    page.close()


def test_without_a_token_the_board_asks_for_one(board_stack: ServiceProcess, browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"{board_stack.base}/")
    playwright_sync.expect(page.locator("#signin")).to_be_visible(timeout=TIMEOUT_MS)
    playwright_sync.expect(page.locator("#connection")).to_have_attribute("data-state", "closed")
    page.close()


def test_a_task_no_longer_shared_leaves_the_board_and_its_cached_copy(
    board_stack: ServiceProcess, browser: Any
) -> None:
    expect = playwright_sync.expect
    service = board_stack
    page = browser.new_page()
    page.goto(f"{service.base}/#token={service.token('erin')}")
    connection = page.locator("#connection")
    expect(connection).to_have_attribute("data-state", "connected", timeout=TIMEOUT_MS)
    shared = event("TASK_ADDED", "frank", 70, {"title": "Shared for a while", "status": "todo"})
    shared["metadata"] = {"shared_with": ["erin"]}
    shared["timestamp"] = "2026-12-01T10:00:00Z"
    service.publish(shared)
    service.publish(event("TASK_ADDED", "erin", 71, {"title": "Erin's own", "status": "todo"}))
    expect(card(page, 70)).to_contain_text("Shared for a while", timeout=TIMEOUT_MS)
    expect(card(page, 71)).to_be_visible(timeout=TIMEOUT_MS)
    unshared = event("TASK_CHANGED", "frank", 70, {"title": "Private now"})
    unshared["metadata"] = {"shared_with": []}
    unshared["timestamp"] = "2026-12-01T10:00:01Z"
    service.publish(unshared)
    expect(card(page, 70)).to_have_count(0, timeout=TIMEOUT_MS)
    expect(page.locator("#activity")).to_contain_text("no longer shared with you")
    page.reload()  # the board restores its sessionStorage copy: the task must not come back
    expect(connection).to_have_attribute("data-state", "connected", timeout=TIMEOUT_MS)
    expect(card(page, 71)).to_be_visible(timeout=TIMEOUT_MS)
    expect(card(page, 70)).to_have_count(0)
    assert "Shared for a while" not in page.evaluate(
        "sessionStorage.getItem('realtime-sync-board:state')"
    )
    page.close()
