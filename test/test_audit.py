"""Audit log: WAL, what each row holds, the shift summary and the `audit` command."""
from __future__ import annotations

import sqlite3
import time

import pytest

from defect_perception.cli import main as cli
from defect_perception.commands.audit import parse_since
from defect_perception.core.audit import AuditError, AuditLog, read_decisions, summary
from defect_perception.core.fusion import Fuser, FusionConfig
from defect_perception.core.result import make_result

T0 = 1_763_800_000_000_000_000


def _fill(db, n=40):
    log = AuditLog(db)
    f = Fuser(FusionConfig(sources=("inspector",), window_ms=10))
    for i in range(n):
        stamp = T0 + i * 10**6
        if i % 10 == 9:  # missing result -> fail-safe at the deadline
            f.on_part(stamp, stamp)
            (d,) = f.poll(stamp + 10 * 10**6)
            ms = None
        else:
            verdict = "reject" if i % 4 == 0 else "pass"
            d = f.on_result("inspector", make_result(
                stamp_ns=stamp, frame_id="camera", source="inspector", verdict=verdict, label="short",
                score=0.8, model={"name": "student", "sha256": "cd" * 32}, latency_ms={"infer": 7.0}), stamp)
            ms = float(i % 5) + 0.5
        result = d.to_result({"decision": ms} if ms is not None else {})
        log.record_decision(result, action=d.action, reason_code=d.reason_code, fail_safe=d.fail_safe,
                            sources=d.sources_summary(), decision_ms=ms)
        log.record_ack(stamp, "plc", "ack", "counter 1", 1.2)
    log.close()


def test_audit_rows_summary_and_wal(tmp_path):
    db = tmp_path / "a" / "audit.sqlite"
    _fill(db)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    rows = read_decisions(db)
    assert len(rows) == 40 and len({r["stamp_ns"] for r in rows}) == 40
    r0 = rows[0]
    assert r0["verdict"] == "reject" and r0["sources"]["inspector"]["model"]["name"] == "student"
    assert r0["sources"]["inspector"]["latency_ms"] == {"infer": 7.0} and r0["result"]["source"] == "sorter"
    s = summary(db)
    assert s["decisions"] == 40 and s["fail_safe"] == 4
    assert s["per_reason"] == {"pass": 26, "source_reject": 10, "missing_result": 4}
    assert s["per_verdict"]["reject"] == 14 and s["acks"] == {"plc:ack": 40}
    assert s["decision_ms"]["p50"] == pytest.approx(2.5) and s["decision_ms"]["max"] == 4.5


def test_audit_command_prints_shift_summary(tmp_path, capsys):
    db = tmp_path / "audit.sqlite"
    _fill(db, 20)
    assert cli(["audit", str(db), "--since", "1h"]) == 0
    out = capsys.readouterr().out
    assert "decisions: 20" in out and "missing_result" in out and "p99" in out and "plc:ack" in out
    assert cli(["audit", str(db), "--since", "yesterday-ish"]) == 2
    assert "--since 'yesterday-ish'" in capsys.readouterr().err
    assert cli(["audit", str(tmp_path / "nope.sqlite")]) == 1
    assert "nope.sqlite not found" in capsys.readouterr().err
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 50)
    assert cli(["audit", str(tmp_path / "junk.sqlite")]) == 1
    assert parse_since("30m", now=1000.0 + 1800) == int(1000.0 * 1e9)
    assert parse_since("2026-11-22T06:00") == int(time.mktime((2026, 11, 22, 6, 0, 0, 0, 0, -1)) * 1e9)
    with pytest.raises(AuditError, match="not found"):
        summary(tmp_path / "missing.sqlite")


def test_replayed_stamp_is_counted_and_both_decisions_are_committed(tmp_path):
    """Replaying the same stamps into an existing audit file used to keep the old decision and
    drop the new one silently (INSERT OR IGNORE). Both are on disk now, and the caller is told."""
    db = tmp_path / "audit.sqlite"
    _fill(db, 3)
    log = AuditLog(db)
    f = Fuser(FusionConfig(sources=("inspector",), window_ms=10))
    d = f.on_result("inspector", make_result(stamp_ns=T0, frame_id="camera", source="inspector",
                                             verdict="pass", label="ok", score=0.6), T0)
    first = log.record_decision(d.to_result(), action=d.action, reason_code=d.reason_code,
                                fail_safe=d.fail_safe, sources=d.sources_summary())
    fresh = f.on_result("inspector", make_result(stamp_ns=T0 + 10**9, frame_id="camera", source="inspector",
                                                 verdict="pass"), T0)
    new = log.record_decision(fresh.to_result(), action=fresh.action, reason_code=fresh.reason_code,
                              fail_safe=fresh.fail_safe, sources=fresh.sources_summary())
    log.close()
    assert first is False and new is True and log.duplicates == 1
    con = sqlite3.connect(db)
    kept = con.execute("SELECT verdict FROM decisions WHERE stamp_ns=?", (T0,)).fetchone()[0]
    dup = con.execute("SELECT verdict, label FROM duplicate_decisions WHERE stamp_ns=?", (T0,)).fetchall()
    con.close()
    assert kept == "reject" and dup == [("pass", "ok")]  # first decision kept, the replayed one stored too
    s = summary(db)
    assert s["decisions"] == 4 and s["duplicates"] == 1
    from defect_perception.core.audit import format_summary

    assert "already logged (replays): 1" in format_summary(s)
