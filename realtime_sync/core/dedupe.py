"""Remembering recently routed event ids, bounded by count and by age."""

from __future__ import annotations

from collections import OrderedDict


class SeenIds:
    """An id is 'seen' from when it was routed until it is older than the window or
    pushed out by newer ids past the count bound."""

    def __init__(self, *, window_s: float, max_ids: int) -> None:
        self._window = window_s
        self._max = max_ids
        self._ids: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def seen(self, event_id: str, now: float) -> bool:
        self.expire(now)
        return event_id in self._ids

    def add(self, event_id: str, now: float) -> None:
        self._ids[event_id] = now
        self._ids.move_to_end(event_id)
        while len(self._ids) > self._max:
            self._ids.popitem(last=False)

    def expire(self, now: float) -> None:
        cutoff = now - self._window
        while self._ids:
            oldest_id, at = next(iter(self._ids.items()))
            if at >= cutoff:
                break
            del self._ids[oldest_id]
