"""The two workload shapes: who owns and shares each task, and the events sent.

team board: users in teams of 100; every task of a team is shared with the whole team,
so an event reaches 100 users x 2 connections = 200 frames.
personal: each user owns a task shared with 2 other users: 3 users x 2 connections =
6 frames per event. Probe users own tasks too (same shape), so the probe sees a steady
sample of ordinary deliveries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from realtime_sync.core.shares import ShareOrder, ShareRecord, share_key

CONNS_PER_USER = 2
TEAM_SIZE = 100
TASKS_PER_TEAM = 10
PROBE_PREFIX = "probe"


def user(i: int) -> str:
    return f"u{i}"


def probe_user(i: int) -> str:
    return f"{PROBE_PREFIX}{i}"


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    owner: str
    shares: tuple[str, ...]


def team_tasks(connections: int) -> list[Task]:
    users = connections // CONNS_PER_USER
    teams = max(1, users // TEAM_SIZE)
    tasks: list[Task] = []
    for k in range(teams):
        members = [user(i) for i in range(k * TEAM_SIZE, min(users, (k + 1) * TEAM_SIZE))]
        for j in range(TASKS_PER_TEAM):
            owner = members[j % len(members)]
            tasks.append(Task(f"team{k}-{j}", owner, tuple(m for m in members if m != owner)))
    # Interleave teams so consecutive events go to different teams.
    return sorted(tasks, key=lambda t: (int(t.task_id.split("-")[1]), t.task_id))


def personal_tasks(connections: int) -> list[Task]:
    users = max(3, connections // CONNS_PER_USER)
    return [
        Task(f"p{i}", user(i), (user((i + 1) % users), user((i + 2) % users))) for i in range(users)
    ]


def probe_tasks(probes: int) -> list[Task]:
    return [
        Task(f"{PROBE_PREFIX}-task{k}", probe_user(k), (user(2 * k), user(2 * k + 1)))
        for k in range(probes)
    ]


def seed_items(tasks: list[Task]) -> list[dict[str, Any]]:
    """Share-list records (`shares:["owner",task_id]`, see realtime_sync.core.shares) for
    the Dapr state API (POST /v1.0/state/{store})."""
    return [
        {
            "key": share_key(t.owner, t.task_id),
            "value": orjson.loads(
                ShareRecord(t.owner, t.shares, ShareOrder(0, 0, "seed")).encode()
            ),
        }
        for t in tasks
    ]


class EventSource:
    """Deterministic task events: a stride over the tasks, every `probe_every`-th event
    on a probe task. Each carries its send time (µs since the epoch) in data.sent_us."""

    def __init__(
        self, tasks: list[Task], run_id: str, probes: list[Task] | None = None, probe_every: int = 0
    ) -> None:
        self._tasks = tasks
        self._probes = probes or []
        self._probe_every = probe_every if self._probes else 0
        self._run = run_id
        self._stride = _coprime_stride(len(tasks))
        self.seq = 0

    def next_data(self) -> bytes:
        seq = self.seq
        self.seq += 1
        if self._probe_every and seq % self._probe_every == 0:
            task = self._probes[(seq // self._probe_every) % len(self._probes)]
        else:
            task = self._tasks[(seq * self._stride) % len(self._tasks)]
        now = time.time()
        payload = {
            "type": "TASK_CHANGED",
            "id": f"{self._run}-{seq}",
            "user_id": task.owner,
            "task_id": task.task_id,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "data": {
                "title": f"Benchmark task {task.task_id}",
                "status": "in_progress",
                "priority": 2,
                "assignee": task.owner,
                "tags": ["bench", "realtime"],
                "seq": seq,
                "sent_us": int(now * 1e6),
            },
        }
        # daprd hands JSON data to the app re-serialised with sorted keys (Go json.Marshal);
        # for these ASCII strings and integers below 2**53 orjson's output is identical.
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def sample_frame() -> bytes:
    """A frame of the size the service sends for one of these events (ceiling, peer)."""
    return orjson.dumps(
        {
            "type": "task_update",
            "action": "task_updated",
            "event_type": "TASK_CHANGED",
            "event_id": "bench-0000000-123456",
            "task_id": "team0-1",
            "user_id": "u1",
            "data": {
                "assignee": "u1",
                "priority": 2,
                "seq": 123456,
                "sent_us": int(time.time() * 1e6),
                "status": "in_progress",
                "tags": ["bench", "realtime"],
                "title": "Benchmark task team0-1",
            },
            "timestamp": "2025-01-01T00:00:00Z",
            "metadata": {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},
        }
    )


def _coprime_stride(n: int) -> int:
    for candidate in (7919, 104729, 1299709, 15485863):
        if n % candidate:
            return candidate
    return 1
