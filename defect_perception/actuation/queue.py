"""Persistent, bounded, ordered delivery queue for one actuator (SQLite, WAL).

Every command is written here before delivery and removed only after the machine
acknowledged it, so a PLC outage or a sorter crash never loses a decision: on restart the
queue is delivered in order. Each command gets its handshake counter when queued, so a
resend after a crash carries the same counter and the PLC can recognise it.

Full-queue policy (never silently drop a reject):
1. a new `pass` is refused (QueueFull raised; the caller reports it);
2. a new reject/review/stop-line evicts the OLDEST queued pass (reported via `evicted`);
3. if the queue holds only rejects/reviews/stop-lines, the new one is refused with QueueFull.
Refusals are loud: the caller logs an error, counts it and records it in the audit log.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from defect_perception.core.audit import Checkpointer


class QueueFull(RuntimeError):
    """The bounded queue cannot take this command (message says what was refused)."""


@dataclass
class Command:
    """What a machine is told about one part."""

    stamp_ns: int
    action: str  # pass | review | reject | stop-line
    bin: int = 0
    reason: str = ""
    counter: int = 0  # handshake counter, assigned by the queue
    queued_ns: int = field(default_factory=time.time_ns)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Command:
        return cls(**json.loads(text))


class DeliveryQueue:
    def __init__(self, path: str | Path, capacity: int = 10_000, counter_modulo: int = 65536):
        if capacity < 1:
            raise ValueError(f"queue capacity {capacity} must be >= 1")
        self.path = Path(path)
        self.capacity = capacity
        self._mod = counter_modulo
        self._lock = threading.Lock()
        self.evicted: list[Command] = []  # passes evicted to make room (caller drains and reports)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._con.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints off the submit path
            self._con.executescript(
                "CREATE TABLE IF NOT EXISTS q (seq INTEGER PRIMARY KEY AUTOINCREMENT, stamp_ns INTEGER,"
                " action TEXT, cmd TEXT);"
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER);")
        except sqlite3.Error as e:
            raise RuntimeError(f"delivery queue {self.path}: {e}") from None
        self._checkpointer = Checkpointer(self.path)

    def _next_counter(self) -> int:
        row = self._con.execute("SELECT value FROM meta WHERE key='counter'").fetchone()
        value = (row[0] if row else 0) % (self._mod - 1) + 1  # 1..mod-1; 0 means "nothing yet"
        self._con.execute("INSERT OR REPLACE INTO meta VALUES ('counter', ?)", (value,))
        return value

    def put(self, cmd: Command) -> Command:
        """Queue `cmd` (assigns its counter, commits). Raises QueueFull per the policy."""
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                n = self._con.execute("SELECT COUNT(*) FROM q").fetchone()[0]
                if n >= self.capacity:
                    if cmd.action == "pass":
                        raise QueueFull(f"queue {self.path.name} full ({n}/{self.capacity}): "
                                        f"refused pass for part {cmd.stamp_ns}")
                    row = self._con.execute("SELECT seq, cmd FROM q WHERE action='pass' "
                                            "ORDER BY seq LIMIT 1").fetchone()
                    if row is None:
                        raise QueueFull(f"queue {self.path.name} full ({n}/{self.capacity}) of "
                                        f"rejects/reviews: REFUSED {cmd.action} for part {cmd.stamp_ns}")
                    self._con.execute("DELETE FROM q WHERE seq=?", (row[0],))
                    self.evicted.append(Command.from_json(row[1]))
                cmd.counter = self._next_counter()
                self._con.execute("INSERT INTO q (stamp_ns, action, cmd) VALUES (?,?,?)",
                                  (cmd.stamp_ns, cmd.action, cmd.to_json()))
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        return cmd

    def peek(self) -> tuple[int, Command] | None:
        """The oldest queued command and its sequence number (not removed)."""
        with self._lock:
            row = self._con.execute("SELECT seq, cmd FROM q ORDER BY seq LIMIT 1").fetchone()
        return (row[0], Command.from_json(row[1])) if row else None

    def done(self, seq: int) -> None:
        """Remove a delivered command."""
        with self._lock:
            self._con.execute("DELETE FROM q WHERE seq=?", (seq,))

    def __len__(self) -> int:
        with self._lock:
            return self._con.execute("SELECT COUNT(*) FROM q").fetchone()[0]

    def items(self) -> list[Command]:
        with self._lock:
            return [Command.from_json(r[0]) for r in self._con.execute("SELECT cmd FROM q ORDER BY seq")]

    def close(self) -> None:
        with self._lock:
            self._con.close()
        self._checkpointer.close()
