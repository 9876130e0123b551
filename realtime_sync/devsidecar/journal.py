"""An append-only JSON-lines journal that lets state and unacked messages survive a crash.

Each record is one line, written and ``fsync``'d before the call that produced it returns,
so a ``kill -9`` loses nothing that was acknowledged to a caller. A torn last line (the
process died mid-write) is skipped on replay. A clean stop rewrites the file with only what
is still live (compaction: write a temporary file, fsync it, rename it over the journal).

Record shapes (``op`` first):

* ``{"op": "state", "store": s, "writes": [{"key", "value" (base64 or null), "version",
  "expires_at"}]}`` — one atomic batch of state writes and deletes;
* ``{"op": "publish", "seq": n, "topic": t, "event": {...}}`` — a retained CloudEvent;
* ``{"op": "ack", "group": g, "seq": n}`` — consumer group ``g`` is done with message ``n``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

Record = dict[str, object]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def replay(self) -> Iterator[Record]:
        """Yield every complete record of an existing journal, oldest first."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as source:
            for number, line in enumerate(source, start=1):
                if not line.endswith("\n"):
                    log.warning("journal: ignoring a torn last record (line %d)", number)
                    return
                try:
                    record = json.loads(line)
                except ValueError:
                    log.warning("journal: ignoring an unreadable record (line %d)", number)
                    continue
                if isinstance(record, dict):
                    yield record

    def open(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def append(self, record: Record) -> None:
        """Write one record durably; a no-op once the journal is closed."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                return
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def compact(self, records: Iterable[Record]) -> None:
        """Replace the journal with ``records`` atomically (and keep appending to it)."""
        temporary = self.path.with_name(self.path.name + ".compact")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("w", encoding="utf-8") as target:
                for record in records:
                    target.write(json.dumps(record, separators=(",", ":")) + "\n")
                target.flush()
                os.fsync(target.fileno())
            reopen = self._file is not None
            if self._file is not None:
                self._file.close()
                self._file = None
            temporary.replace(self.path)
            self._fsync_directory()
            if reopen:
                self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _fsync_directory(self) -> None:
        try:
            descriptor = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(descriptor)
        except OSError:
            pass
        finally:
            os.close(descriptor)
