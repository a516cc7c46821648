"""Start node processes, merge their output into one prefixed stream, and stop them cleanly.

ROS-free: it only runs commands. Children get their own session so a terminal Ctrl-C
reaches the supervisor alone, which then stops them in order (SIGINT, then SIGTERM, then
SIGKILL after timeouts); on Linux they also get SIGTERM if the supervisor dies abruptly.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

_COLOURS = ("36", "33", "35", "32", "34", "31")
_PR_SET_PDEATHSIG = 1


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # runs in the child between fork and exec: no locks, no allocation
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen
    started: float
    tail: deque = field(default_factory=lambda: deque(maxlen=20))
    reader: threading.Thread | None = None
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    """Runs children; `poll()` reports the ones that exited; `stop_all()` ends the rest."""

    def __init__(self, out: TextIO | None = None, env: dict[str, str] | None = None,
                 colour: bool | None = None):
        self.out = out or sys.stdout
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.env.setdefault("RCUTILS_CONSOLE_OUTPUT_FORMAT", "[{severity}] {message}")
        self.colour = self.out.isatty() if colour is None else colour
        self.children: list[Child] = []
        self.hurry = threading.Event()  # set (e.g. by a second Ctrl-C) to skip the polite waits
        self._lock = threading.Lock()
        self._width = 8

    def reserve(self, names: list[str]) -> None:
        """Align the prefixes for these source names from the first line on."""
        self._width = max([self._width, *map(len, names)])

    def emit(self, source: str, line: str) -> None:
        """One line of the merged stream, prefixed with its source."""
        prefix = f"[{source}]".ljust(self._width + 2)
        if self.colour:
            colour = _COLOURS[sum(map(ord, source)) % len(_COLOURS)]
            prefix = f"\033[{colour}m{prefix}\033[0m"
        with self._lock:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()

    def start(self, name: str, argv: list[str]) -> Child:
        self._width = max(self._width, len(name))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True, text=True,
                                errors="replace", bufsize=1,
                                preexec_fn=_die_with_parent if _LIBC is not None else None)
        child = Child(name, list(argv), proc, time.monotonic())
        child.reader = threading.Thread(target=self._read, args=(child,), name=f"log-{name}", daemon=True)
        child.reader.start()
        self.children.append(child)
        return child

    def _read(self, child: Child) -> None:
        assert child.proc.stdout is not None
        for raw in child.proc.stdout:
            line = raw.rstrip("\n")
            child.tail.append(line)
            self.emit(child.name, line)

    def poll(self) -> list[Child]:
        """Children that exited since the last call (returncode set, output fully read)."""
        done = []
        for c in self.children:
            if c.returncode is None and c.proc.poll() is not None:
                if c.reader is not None:
                    c.reader.join(timeout=2.0)
                c.returncode = c.proc.returncode
                done.append(c)
        return done

    def running(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is None]

    def stop_all(self, timeout: float = 5.0, term_timeout: float = 3.0) -> dict[str, str]:
        """SIGINT to every running child, wait `timeout`; then SIGTERM, then SIGKILL.
        Returns child name -> how it ended, for the ones that needed escalation."""
        escalated: dict[str, str] = {}
        for sig, wait_s, label in ((signal.SIGINT, timeout, None), (signal.SIGTERM, term_timeout, "SIGTERM"),
                                   (signal.SIGKILL, 5.0, "SIGKILL")):
            alive = self.running()
            if not alive:
                break
            for c in alive:
                if label:
                    escalated[c.name] = label
                    self.emit("line", f"{c.name} did not stop in time: sending {label}")
                try:
                    os.kill(c.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and any(c.proc.poll() is None for c in alive):
                if self.hurry.is_set() and sig != signal.SIGKILL:
                    break  # a second Ctrl-C: go straight on to the next signal
                time.sleep(0.02)
        self.poll()
        return escalated


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
