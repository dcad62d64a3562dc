"""One log line per key per interval: a flood of the same event (a source retrying, a switch
refusing the same rule, a process out of descriptors) becomes a line every few seconds that
says how many were left out, and the memory it takes stays bounded."""

from __future__ import annotations

import threading
import time
from collections import Counter

LOG_EVERY_S = 10.0
MAX_KEYS = 4096


class Throttle:
    """One log line per key per interval, saying how many were suppressed meanwhile."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> int | None:
        """None: stay quiet; else the number of lines suppressed since the last one."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.every_s) < self.every_s:
                self._skipped[key] += 1
                return None
            if len(self._last) >= MAX_KEYS:  # keys are source addresses: bounded
                self._forget(now)
            self._last.pop(key, None)  # moved to the end: the table is in logging order
            self._last[key] = now
            return self._skipped.pop(key, 0)

    def _forget(self, now: float) -> None:
        """Drop keys whose interval is over and, while more than half the table is left,
        the longest since logged (their suppressed counts go unreported).

        Why not only the keys whose interval is over: under a flood of distinct keys (sources)
        within one interval none is over, so the table grew past MAX_KEYS and every new key
        scanned all of it under the lock (50,000 sources in 10 s: 20,000 keys kept, 20 s of
        CPU).  Halving it keeps it at most MAX_KEYS and a scan per MAX_KEYS / 2 new keys."""
        for key, at in list(self._last.items()):  # oldest line first
            if now - at < self.every_s and len(self._last) <= MAX_KEYS // 2:
                return
            del self._last[key]
            self._skipped.pop(key, None)
