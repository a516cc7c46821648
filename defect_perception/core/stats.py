"""Rolling counters for diagnostics: rate, latency percentiles, drops."""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class RollingStats:
    """Keeps the last `window` latency samples and event times; cheap to update per frame.

    `rate_hz()` counts the events of the last `rate_window_s` seconds, so it falls to 0 when
    events stop (a stalled camera must not show its last rate). It reads the time from `now`
    (default: `clock` when that is the real monotonic clock). With an injected `clock` and no
    `now` (a test stepping time per event) the rate is taken as of the last event.

    Thread-safe: worker threads update it while the diagnostics timer reads it, and
    iterating a deque that another thread appends to raises (stopping the executor).
    `lock` is re-entrant so callers can group several updates."""

    def __init__(self, window: int = 1000, clock=time.monotonic, rate_window_s: float = 10.0,
                 now=None):
        self._lat: deque[float] = deque(maxlen=window)
        self._times: deque[float] = deque(maxlen=window)
        self._clock = clock
        self._now = now if now is not None else (clock if clock is time.monotonic else None)
        self.rate_window_s = rate_window_s
        self._dropped_at: float | None = None  # newest event time pushed out of the bounded buffer
        self.count = 0
        self.counters: dict[str, int] = {}
        self.lock = threading.RLock()

    def add(self, latency_ms: float | None = None) -> None:
        with self.lock:
            self.count += 1
            if len(self._times) == self._times.maxlen:
                self._dropped_at = self._times[0]
            self._times.append(self._clock())
            if latency_ms is not None:
                self._lat.append(float(latency_ms))

    def incr(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def rate_hz(self) -> float:
        """Events per second over the last `rate_window_s` (or since the first event / since
        the oldest retained one, when that is shorter); 0 when none came in that window."""
        with self.lock:
            if not self._times:
                return 0.0
            now = self._now() if self._now is not None else self._times[-1]
            start = now - self.rate_window_s
            if self._dropped_at is not None and self._dropped_at > start:
                anchor, n = self._dropped_at, len(self._times)  # all retained are after it
            elif self._dropped_at is None and self._times[0] > start:
                anchor, n = self._times[0], len(self._times) - 1  # intervals since the first event
            else:
                anchor, n = start, 0
                for t in reversed(self._times):
                    if t <= start:
                        break
                    n += 1
            span = now - anchor
            return n / span if n > 0 and span > 0 else 0.0

    def percentiles(self, qs=(50, 99)) -> dict[str, float]:
        with self.lock:
            arr = np.fromiter(self._lat, float, count=len(self._lat))
        if not arr.size:
            return {f"p{q}": float("nan") for q in qs}
        return {f"p{q}": float(np.percentile(arr, q)) for q in qs}

    def summary(self) -> dict[str, str]:
        with self.lock:
            out = {"frames": str(self.count), "rate_hz": f"{self.rate_hz():.2f}"}
            out.update({f"latency_{k}_ms": f"{v:.2f}" for k, v in self.percentiles().items()})
            out.update({k: str(v) for k, v in self.counters.items()})
        return out
