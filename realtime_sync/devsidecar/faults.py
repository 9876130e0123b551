"""The state-store fault switch behind ``POST /dev/faults``.

``unavailable``: every state call fails at once, as daprd does when it cannot reach the
store. ``hang``: every state call waits until the caller's deadline (at most 30 s, or until
the fault is cleared) and then fails the same way. ``slow``: every state call takes
``delay_s`` (or until the fault is cleared) and then works. ``None``: the store works.
"""

from __future__ import annotations

import logging
import threading
from enum import StrEnum

import grpc

from .errors import ApiError

log = logging.getLogger(__name__)

MAX_HANG_S = 30.0
DEFAULT_SLOW_S = 3.0


class StateFault(StrEnum):
    UNAVAILABLE = "unavailable"
    HANG = "hang"
    SLOW = "slow"


class StateFaults:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._fault: StateFault | None = None
        self._delay_s = DEFAULT_SLOW_S
        self._waiting = 0

    @property
    def current(self) -> StateFault | None:
        with self._cond:
            return self._fault

    @property
    def waiting(self) -> int:
        """State calls being slowed down right now."""
        with self._cond:
            return self._waiting

    def set(self, fault: StateFault | None, delay_s: float = DEFAULT_SLOW_S) -> None:
        with self._cond:
            self._fault = fault
            self._delay_s = delay_s
            self._cond.notify_all()
        log.warning("state store fault set to %s", fault.value if fault else "none")

    def check(self, reason: str, timeout_s: float | None = None) -> None:
        """Return if the store works; else wait (for ``hang``) and raise UNAVAILABLE."""
        with self._cond:
            if self._fault is StateFault.SLOW:
                self._waiting += 1
                try:
                    self._cond.wait_for(lambda: self._fault is not StateFault.SLOW, self._delay_s)
                finally:
                    self._waiting -= 1
                return
            if self._fault is StateFault.HANG:
                # A little past the deadline, so the caller sees its own deadline expire first.
                limit = MAX_HANG_S if timeout_s is None else min(timeout_s + 0.25, MAX_HANG_S)
                self._cond.wait_for(lambda: self._fault is not StateFault.HANG, timeout=limit)
            if self._fault is None:
                return
        raise ApiError(grpc.StatusCode.UNAVAILABLE, 500, reason, "failed to connect to state store")
