"""daprd's app health probe (dapr/dapr ``pkg/apphealth/health.go``), for one app instance.

The app starts *unhealthy* (the failure count starts at the threshold), is probed at once and
then every interval with the probe timeout; one success makes it healthy, ``threshold``
failures in a row make it unhealthy. Each change is reported once, as daprd's
``appHealthChanged`` is: healthy starts (or resumes) the app's subscriptions, unhealthy stops
them (``pkg/runtime/runtime.go``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class AppHealthProbe:
    def __init__(
        self,
        probe: Callable[[float], bool],
        *,
        interval_s: float,
        timeout_s: float,
        threshold: int,
        on_change: Callable[[bool], None],
    ) -> None:
        self._probe = probe
        self._interval = interval_s
        self._timeout = timeout_s
        self._threshold = threshold
        self._on_change = on_change
        self._failures = threshold  # unhealthy until the first successful probe

    def run(self, stop: threading.Event) -> None:
        """Probe until ``stop`` is set."""
        due = time.monotonic()
        while not stop.is_set():
            self._record(self._probe(self._timeout))
            due += self._interval
            if stop.wait(max(0.0, due - time.monotonic())):
                return

    def _record(self, ok: bool) -> None:
        if ok:
            previous, self._failures = self._failures, 0
            if previous >= self._threshold:
                log.info("app entered healthy status")
                self._on_change(True)
            return
        self._failures += 1
        if self._failures == self._threshold:
            log.warning("app entered un-healthy status: %d failed probes", self._failures)
            self._on_change(False)
