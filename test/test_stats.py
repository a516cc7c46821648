"""Diagnostics rate: it must fall to 0 when events stop, not keep the last value."""
from __future__ import annotations

import time

import pytest

from defect_perception.core.stats import RollingStats


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_rate_is_exact_while_running_and_decays_to_zero_when_events_stop():
    c = Clock()
    s = RollingStats(window=1000, clock=c, now=c, rate_window_s=10.0)
    for i in range(50):  # 10 Hz for 5 s
        c.t = i * 0.1
        s.add(1.0)
    assert s.rate_hz() == pytest.approx(10.0)
    for i in range(50, 300):  # 10 Hz for 30 s: the rate is over the last 10 s
        c.t = i * 0.1
        s.add(1.0)
    c.t += 0.05
    assert s.rate_hz() == pytest.approx(10.0, rel=0.02)
    c.t += 5.0  # the camera stopped: the rate falls ...
    assert 4.0 < s.rate_hz() < 6.0
    c.t += 5.0  # ... to 0 once no event is left in the window
    assert s.rate_hz() == 0.0 and s.summary()["rate_hz"] == "0.00" and s.summary()["frames"] == "300"


def test_rate_with_a_full_buffer_and_the_real_clock():
    c = Clock()
    s = RollingStats(window=100, clock=c, now=c, rate_window_s=10.0)
    for i in range(3000):  # 1 kHz: the 100-event buffer covers 0.1 s of the window
        c.t = i * 0.001
        s.add()
    assert s.rate_hz() == pytest.approx(1000.0, rel=0.02)
    c.t += 2.0
    assert s.rate_hz() < 100.0
    c.t += 10.0
    assert s.rate_hz() == 0.0

    real = RollingStats(rate_window_s=0.2)  # default clock: time.monotonic, read when asked
    real.add()
    time.sleep(0.01)
    real.add()
    assert real.rate_hz() > 0
    time.sleep(0.3)
    assert real.rate_hz() == 0.0
