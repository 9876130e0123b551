"""`realtime-sync demo`: a small team working through its tasks, published through Dapr.

A deterministic-enough story (seedable) of task lifecycles for a few users: tasks are
created, edited, moved through the statuses, shared with teammates (``metadata.shared_with``),
removed and restored. Every event is published with Dapr's HTTP publish API
(``POST /v1.0/publish/{pubsub}/{topic}``), so the same command feeds the dev sidecar or a
real daprd (``DAPR_HTTP_PORT``, ``DAPR_API_TOKEN``; ``dapr.yaml`` runs it as a second app).
"""

from __future__ import annotations

import logging
import random
import time
import urllib.error
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from realtime_sync.publisher import Publisher

log = logging.getLogger(__name__)

STATUSES: Final = ("todo", "in_progress", "review", "done")
PRIORITIES: Final = ("low", "medium", "high")
TITLES: Final = (
    "Draft the Q3 roadmap",
    "Fix login redirect loop",
    "Review pull request #482",
    "Write onboarding guide",
    "Migrate billing to the new API",
    "Plan the team offsite",
    "Triage support inbox",
    "Update dependency versions",
    "Design the settings page",
    "Prepare sprint demo",
    "Investigate slow dashboard query",
    "Add dark mode to the mobile app",
    "Refresh the pricing page copy",
    "Set up error alerting",
    "Interview backend candidate",
    "Archive old project boards",
    "Benchmark the search index",
    "Clean up feature flags",
    "Write release notes for 2.4",
    "Localise checkout into German",
)
EDITS: Final = (
    "Added acceptance criteria",
    "Linked the design doc",
    "Split into two smaller steps",
    "Clarified the scope with product",
    "Noted the open questions",
    "Attached screenshots",
)
LABELS: Final = ("frontend", "backend", "design", "ops", "docs", "research")


@dataclass
class DemoTask:
    task_id: int
    owner: str
    title: str
    status: str = "todo"
    priority: str = "medium"
    assignee: str | None = None
    labels: list[str] = field(default_factory=list)
    description: str = ""
    shared_with: list[str] = field(default_factory=list)
    removed: bool = False

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.task_id,
            "title": self.title,
            "status": self.status,
            "priority": self.priority,
            "assignee": self.assignee,
            "labels": list(self.labels),
            "description": self.description,
        }


class Story:
    """An endless, plausible stream of task events for `users`."""

    def __init__(
        self,
        users: Sequence[str],
        *,
        rng: random.Random,
        max_tasks: int = 14,
        first_task_id: int | None = None,
    ) -> None:
        if not users:
            raise ValueError("the demo needs at least one user")
        self.users = list(users)
        self.rng = rng
        self.max_tasks = max_tasks
        self.next_id = first_task_id if first_task_id is not None else rng.randint(100, 899) * 10
        self.tasks: dict[int, DemoTask] = {}

    def events(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.step()

    def step(self) -> dict[str, Any]:
        live = [t for t in self.tasks.values() if not t.removed]
        active = [t for t in live if t.status != "done"]
        removed = [t for t in self.tasks.values() if t.removed]
        unshared = [t for t in live if len(t.shared_with) < len(self.users) - 1]
        choices: list[tuple[str, float]] = [
            ("create", 6.0 if len(live) < self.max_tasks // 2 else 1.5),
            ("status", 5.0 if active else 0.0),
            ("edit", 2.0 if active else 0.0),
            ("share", 1.5 if unshared else 0.0),
            ("remove", 1.0 if len(live) > 4 else 0.0),
            ("restore", 1.2 if removed else 0.0),
        ]
        if len(self.tasks) >= self.max_tasks:
            choices[0] = ("create", 0.0)
            choices.append(
                ("forget", 2.0 if removed or any(t.status == "done" for t in live) else 0)
            )
        names = [c[0] for c in choices]
        weights = [c[1] for c in choices]
        match self.rng.choices(names, weights)[0]:
            case "create":
                return self._create()
            case "status":
                return self._advance(self.rng.choice(active))
            case "edit":
                return self._edit(self.rng.choice(active))
            case "share":
                return self._share(self.rng.choice(unshared))
            case "remove":
                return self._remove(self.rng.choice(live))
            case "restore":
                return self._restore(self.rng.choice(removed))
            case _:
                return self._forget()

    def _event(self, kind: str, task: DemoTask) -> dict[str, Any]:
        event: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "type": kind,
            "user_id": task.owner,
            "task_id": task.task_id,
            "data": task.snapshot(),
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        if task.shared_with:
            event["metadata"] = {"shared_with": list(task.shared_with), "source": "demo"}
        return event

    def _create(self) -> dict[str, Any]:
        used = {t.title for t in self.tasks.values()}
        fresh = [t for t in TITLES if t not in used] or list(TITLES)
        owner = self.rng.choice(self.users)
        task = DemoTask(
            task_id=self.next_id,
            owner=owner,
            title=self.rng.choice(fresh),
            priority=self.rng.choice(PRIORITIES),
            assignee=owner,
            labels=self.rng.sample(LABELS, self.rng.randint(1, 2)),
        )
        others = [u for u in self.users if u != owner]
        if others and self.rng.random() < 0.4:
            task.shared_with = [self.rng.choice(others)]
        self.next_id += 1
        self.tasks[task.task_id] = task
        return self._event("TASK_ADDED", task)

    def _advance(self, task: DemoTask) -> dict[str, Any]:
        index = STATUSES.index(task.status)
        if task.status == "review" and self.rng.random() < 0.25:
            task.status = "in_progress"  # changes requested
        else:
            task.status = STATUSES[min(index + 1, len(STATUSES) - 1)]
        if task.status == "in_progress" and task.shared_with and self.rng.random() < 0.5:
            task.assignee = self.rng.choice(task.shared_with)
        return self._event("TASK_STATUS_CHANGED", task)

    def _edit(self, task: DemoTask) -> dict[str, Any]:
        match self.rng.randrange(3):
            case 0:
                task.priority = self.rng.choice([p for p in PRIORITIES if p != task.priority])
            case 1:
                task.description = self.rng.choice(EDITS)
            case _:
                task.labels = self.rng.sample(LABELS, self.rng.randint(1, 3))
        return self._event("TASK_CHANGED", task)

    def _share(self, task: DemoTask) -> dict[str, Any]:
        candidates = [u for u in self.users if u != task.owner and u not in task.shared_with]
        task.shared_with = [*task.shared_with, self.rng.choice(candidates)]
        return self._event("TASK_CHANGED", task)

    def _remove(self, task: DemoTask) -> dict[str, Any]:
        task.removed = True
        return self._event("TASK_REMOVED", task)

    def _restore(self, task: DemoTask) -> dict[str, Any]:
        task.removed = False
        return self._event("TASK_RESTORED", task)

    def _forget(self) -> dict[str, Any]:
        """Keep the board tidy: remove a finished (or already removed) task for good."""
        done = [t for t in self.tasks.values() if t.status == "done" and not t.removed]
        gone = [t for t in self.tasks.values() if t.removed]
        if gone:
            del self.tasks[self.rng.choice(gone).task_id]
        if done:
            task = self.rng.choice(done)
            del self.tasks[task.task_id]
            return self._event("TASK_REMOVED", task)
        return self._create()


def run_demo(
    publisher: Publisher,
    story: Story,
    *,
    rate: float,
    count: int | None = None,
    verbose: bool = False,
    give_up_after_s: float = 60.0,
) -> int:
    """Publish `count` events (forever when None) at `rate` per second; returns how many."""
    interval = 1.0 / rate
    published = 0
    failing_since: float | None = None
    next_at = time.monotonic()
    events = story.events()
    event = next(events)
    while count is None or published < count:
        try:
            publisher.publish(event)
        except (urllib.error.URLError, OSError) as exc:
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > give_up_after_s:
                raise
            log.info("demo: sidecar not reachable yet (%s); retrying", type(exc).__name__)
            time.sleep(min(2.0, 0.2 + (now - failing_since) / 4))
            continue
        failing_since = None
        published += 1
        if verbose:
            shared = event.get("metadata", {}).get("shared_with", [])
            with_whom = f" shared with {','.join(shared)}" if shared else ""
            print(
                f"{event['type']:<20} task {event['task_id']} of {event['user_id']}"
                f" ({event['data']['status']}){with_whom}",
                flush=True,
            )
        event = next(events)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at, time.monotonic() - interval)
    return published
