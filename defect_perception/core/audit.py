"""Audit log of every sorter decision: SQLite in WAL mode, one commit per record.

Each decision is committed before it is published or sent to a machine, so a SIGKILL of the
sorter loses nothing that left it (WAL + synchronous=NORMAL survives a process crash; use
sync="full" to also survive a power cut, at the price of an fsync per decision).
Actuator acknowledgements and saved reject images are appended as they happen.

A stamp already in `decisions` (the same recording replayed into an existing audit file) keeps
its first decision there; the new one is committed to `duplicate_decisions` (same columns), so
every published decision is still on disk, and `record_decision` returns False so the caller
can say so.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

_DECISION_COLUMNS = """
    decided_ns INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    action TEXT NOT NULL,
    reason_code TEXT NOT NULL,
    reason TEXT,
    fail_safe INTEGER NOT NULL,
    label TEXT,
    score REAL,
    anomaly_score REAL,
    decision_ms REAL,
    sources TEXT NOT NULL,
    result TEXT NOT NULL
"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS decisions (
    stamp_ns INTEGER PRIMARY KEY,{_DECISION_COLUMNS});
CREATE INDEX IF NOT EXISTS decisions_decided ON decisions(decided_ns);
CREATE TABLE IF NOT EXISTS duplicate_decisions (
    stamp_ns INTEGER NOT NULL,{_DECISION_COLUMNS});
CREATE TABLE IF NOT EXISTS acks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stamp_ns INTEGER NOT NULL,
    actuator TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    latency_ms REAL,
    at_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS acks_stamp ON acks(stamp_ns);
CREATE TABLE IF NOT EXISTS images (
    stamp_ns INTEGER PRIMARY KEY,
    path TEXT NOT NULL
);
"""


class Checkpointer:
    """Runs WAL checkpoints on a thread of its own, so the fsync of a checkpoint never lands
    inside a decision's commit (SQLite's automatic checkpoint runs in the committing call and
    showed up as 10-30 ms spikes in the soak benchmark). Use with wal_autocheckpoint=0."""

    def __init__(self, path: str | Path, period_s: float = 1.0):
        self.path, self.period_s = str(path), period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        con = sqlite3.connect(self.path, check_same_thread=False, timeout=1)
        try:
            while not self._stop.wait(self.period_s):
                try:
                    con.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # busy: try again next period
                    pass
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:  # closing: a later open checkpoints anyway
            pass
        finally:
            con.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class AuditError(RuntimeError):
    """The audit database cannot be opened or written (names the file)."""


def connect(path: str | Path, sync: str = "normal") -> sqlite3.Connection:
    path = Path(path)
    if sync not in ("normal", "full"):
        raise AuditError(f"audit sync={sync!r} is not one of normal, full")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={sync.upper()}")
        con.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on the Checkpointer thread
        con.executescript(_SCHEMA)
    except (sqlite3.Error, OSError) as e:
        raise AuditError(f"audit log {path}: {e}") from None
    return con


class AuditLog:
    """Append-only decision log; safe to call from several threads."""

    def __init__(self, path: str | Path, sync: str = "normal"):
        self.path = Path(path)
        self._con = connect(self.path, sync)
        self._lock = threading.Lock()
        self._checkpointer = Checkpointer(self.path)
        self.duplicates = 0  # decisions for stamps already in `decisions` (see the module doc)

    def record_decision(self, result: dict, *, action: str, reason_code: str, fail_safe: bool,
                        sources: dict, decision_ms: float | None = None) -> bool:
        """Commit one decision (the sorter/decision JSON plus per-source details). False when
        its stamp already had a decision: this one is then committed to `duplicate_decisions`."""
        row = (int(result["stamp_ns"]), time.time_ns(), result["verdict"], action, reason_code,
               result.get("reason"), int(bool(fail_safe)), result.get("label"), result.get("score"),
               result.get("anomaly_score"), decision_ms, json.dumps(sources, default=str),
               json.dumps(result))
        with self._lock:
            try:
                cur = self._con.execute("INSERT OR IGNORE INTO decisions VALUES "
                                        "(?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
                if cur.rowcount == 1:
                    return True
                self._con.execute("INSERT INTO duplicate_decisions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
            except sqlite3.Error as e:
                raise AuditError(f"audit log {self.path}: cannot record decision "
                                 f"{result['stamp_ns']}: {e}") from None
            self.duplicates += 1
            return False

    def record_ack(self, stamp_ns: int, actuator: str, status: str, detail: str = "",
                   latency_ms: float | None = None) -> None:
        with self._lock:
            self._con.execute("INSERT INTO acks (stamp_ns, actuator, status, detail, latency_ms, at_ns) "
                              "VALUES (?,?,?,?,?,?)",
                              (int(stamp_ns), actuator, status, detail, latency_ms, time.time_ns()))

    def record_image(self, stamp_ns: int, path: str | Path) -> None:
        with self._lock:
            self._con.execute("INSERT OR REPLACE INTO images VALUES (?,?)", (int(stamp_ns), str(path)))

    def close(self) -> None:
        with self._lock:
            self._con.close()
        self._checkpointer.close()


def read_decisions(path: str | Path, since_ns: int | None = None) -> list[dict[str, Any]]:
    """All decisions (oldest first) as dicts; `sources` and `result` decoded."""
    con = _open_ro(path)
    try:
        rows = con.execute("SELECT * FROM decisions WHERE decided_ns >= ? ORDER BY stamp_ns",
                           (since_ns or 0,)).fetchall()
        cols = [c[0] for c in con.execute("SELECT * FROM decisions LIMIT 0").description]
    finally:
        con.close()
    out = []
    for row in rows:
        d = dict(zip(cols, row, strict=True))
        d["sources"] = json.loads(d["sources"])
        d["result"] = json.loads(d["result"])
        out.append(d)
    return out


def _open_ro(path: str | Path) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise AuditError(f"audit log {p} not found")
    try:
        con = sqlite3.connect(str(p), timeout=10)
        con.execute("SELECT 1 FROM decisions LIMIT 1")
    except sqlite3.Error as e:
        raise AuditError(f"audit log {p}: not a sorter audit database ({e})") from None
    return con


def summary(path: str | Path, since_ns: int | None = None) -> dict[str, Any]:
    """Shift summary: counts per decision, action and reason; decision latency percentiles;
    actuator acknowledgement counts."""
    con = _open_ro(path)
    since = since_ns or 0
    try:
        def counts(sql: str) -> dict[str, int]:
            return {str(k): int(n) for k, n in con.execute(sql, (since,)).fetchall()}

        total = con.execute("SELECT COUNT(*) FROM decisions WHERE decided_ns >= ?", (since,)).fetchone()[0]
        span = con.execute("SELECT MIN(decided_ns), MAX(decided_ns) FROM decisions WHERE decided_ns >= ?",
                           (since,)).fetchone()
        lat = np.array([r[0] for r in con.execute(
            "SELECT decision_ms FROM decisions WHERE decided_ns >= ? AND decision_ms IS NOT NULL",
            (since,))], dtype=float)
        out = {
            "db": str(path), "decisions": int(total),
            "first_ns": span[0], "last_ns": span[1],
            "per_verdict": counts("SELECT verdict, COUNT(*) FROM decisions WHERE decided_ns >= ? "
                                  "GROUP BY verdict ORDER BY 2 DESC"),
            "per_action": counts("SELECT action, COUNT(*) FROM decisions WHERE decided_ns >= ? "
                                 "GROUP BY action ORDER BY 2 DESC"),
            "per_reason": counts("SELECT reason_code, COUNT(*) FROM decisions WHERE decided_ns >= ? "
                                 "GROUP BY reason_code ORDER BY 2 DESC"),
            "fail_safe": int(con.execute("SELECT COUNT(*) FROM decisions WHERE decided_ns >= ? AND "
                                         "fail_safe = 1", (since,)).fetchone()[0]),
            "decision_ms": ({"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                             "max": float(lat.max())} if lat.size else None),
            "acks": {f"{a}:{s}": int(n) for a, s, n in con.execute(
                "SELECT actuator, status, COUNT(*) FROM acks WHERE at_ns >= ? GROUP BY actuator, status "
                "ORDER BY 1, 3 DESC", (since,))},
            "images": int(con.execute("SELECT COUNT(*) FROM images").fetchone()[0]),
            "duplicates": _count_duplicates(con, since),
        }
    finally:
        con.close()
    return out


def format_summary(s: dict[str, Any]) -> str:
    def t(ns):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"

    lines = [f"audit log: {s['db']}", f"period: {t(s['first_ns'])} .. {t(s['last_ns'])}",
             f"decisions: {s['decisions']}  (fail-safe: {s['fail_safe']})"]
    for title, key in (("per decision", "per_verdict"), ("per action", "per_action"),
                       ("per reason", "per_reason")):
        lines.append(f"{title}:")
        total = max(s["decisions"], 1)
        lines += [f"  {k:<18} {n:>8}  {100.0 * n / total:5.1f} %" for k, n in s[key].items()]
    lat = s["decision_ms"]
    lines.append("decision latency after last result: " + (
        f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms" if lat else "n/a"))
    if s["acks"]:
        lines.append("actuator acknowledgements:")
        lines += [f"  {k:<30} {n:>8}" for k, n in s["acks"].items()]
    lines.append(f"reject images saved: {s['images']}")
    if s.get("duplicates"):
        lines.append(f"decisions for stamps already logged (replays): {s['duplicates']} "
                     "(kept in table duplicate_decisions; table decisions holds the first one)")
    return "\n".join(lines)


def _count_duplicates(con: sqlite3.Connection, since: int) -> int:
    try:
        return int(con.execute("SELECT COUNT(*) FROM duplicate_decisions WHERE decided_ns >= ?",
                               (since,)).fetchone()[0])
    except sqlite3.OperationalError:  # an audit file written before that table existed
        return 0
