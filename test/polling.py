"""Waiting for something a node does in another thread or process, with a named timeout."""
from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(cond: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """Poll `cond` every 10 ms; AssertionError naming `what` when `timeout` s pass first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
