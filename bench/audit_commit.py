#!/usr/bin/env python3
"""Audit-log commit latency in isolation: `AuditLog.record_decision` at a steady rate in a
process that does nothing else, to separate the cost of the SQLite commit itself from the
contention the sorter soak (bench/sorter_soak.py) sees on a busy machine.

  python bench/audit_commit.py [--n 3000] [--rate 100] [--sync normal|full]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defect_perception.core.audit import AuditLog  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="decisions to commit")
    ap.add_argument("--rate", type=float, default=100.0, help="decisions per second")
    ap.add_argument("--sync", default="normal", choices=("normal", "full"))
    args = ap.parse_args(argv)
    result = {"schema": "defect_perception/result/1", "verdict": "pass", "label": "normal", "score": 0.1,
              "reason": "all sources pass"}
    sources = {"inspector": {"verdict": "pass", "score": 0.1, "model": "m", "sha256": "0" * 64,
                             "latency_ms": {"infer": 40.0}}}
    lat = []
    with tempfile.TemporaryDirectory() as tmp:
        log = AuditLog(Path(tmp) / "audit.sqlite", args.sync)
        due = time.perf_counter()
        for i in range(args.n):
            t0 = time.perf_counter()
            log.record_decision({**result, "stamp_ns": 1_700_000_000_000_000_000 + i}, action="pass",
                                reason_code="pass", fail_safe=False, sources=sources, decision_ms=0.3)
            lat.append((time.perf_counter() - t0) * 1000)
            due += 1 / args.rate
            time.sleep(max(0.0, due - time.perf_counter()))
        log.close()
    a = np.asarray(lat)
    print(f"{args.n} commits at {args.rate:g}/s, sync={args.sync}: p50 {np.percentile(a, 50):.3f} ms, "
          f"p99 {np.percentile(a, 99):.3f} ms, max {a.max():.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
