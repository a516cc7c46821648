"""Rolling counters for diagnostics: rate, latency percentiles, drops."""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class RollingStats:
    """Keeps the last `window` latency samples and event times; cheap to update per frame.

    Thread-safe: worker threads update it while the diagnostics timer reads it, and
    iterating a deque that another thread appends to raises (stopping the executor).
    `lock` is re-entrant so callers can group several updates."""

    def __init__(self, window: int = 1000, clock=time.monotonic):
        self._lat: deque[float] = deque(maxlen=window)
        self._times: deque[float] = deque(maxlen=window)
        self._clock = clock
        self.count = 0
        self.counters: dict[str, int] = {}
        self.lock = threading.RLock()

    def add(self, latency_ms: float | None = None) -> None:
        with self.lock:
            self.count += 1
            self._times.append(self._clock())
            if latency_ms is not None:
                self._lat.append(float(latency_ms))

    def incr(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def rate_hz(self) -> float:
        with self.lock:
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0

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
