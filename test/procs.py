"""Stopping node processes the way an operator does: Ctrl-C first, kill only if it hangs."""
from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGINT (the nodes' clean shutdown path), then SIGKILL after `timeout`; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
