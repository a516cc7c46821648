"""Rolling counters for diagnostics: rate, latency percentiles, drops."""
from __future__ import annotations

import time
from collections import deque

import numpy as np


class RollingStats:
    """Keeps the last `window` latency samples and event times; cheap to update per frame."""

    def __init__(self, window: int = 1000, clock=time.monotonic):
        self._lat: deque[float] = deque(maxlen=window)
        self._times: deque[float] = deque(maxlen=window)
        self._clock = clock
        self.count = 0
        self.counters: dict[str, int] = {}

    def add(self, latency_ms: float | None = None) -> None:
        self.count += 1
        self._times.append(self._clock())
        if latency_ms is not None:
            self._lat.append(float(latency_ms))

    def incr(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def rate_hz(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def percentiles(self, qs=(50, 99)) -> dict[str, float]:
        if not self._lat:
            return {f"p{q}": float("nan") for q in qs}
        arr = np.fromiter(self._lat, float)
        return {f"p{q}": float(np.percentile(arr, q)) for q in qs}

    def summary(self) -> dict[str, str]:
        out = {"frames": str(self.count), "rate_hz": f"{self.rate_hz():.2f}"}
        out.update({f"latency_{k}_ms": f"{v:.2f}" for k, v in self.percentiles().items()})
        out.update({k: str(v) for k, v in self.counters.items()})
        return out
