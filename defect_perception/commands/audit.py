"""`defect-perception audit DB [--since ...]`: shift summary of the sorter's audit log."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("db", help="the sorter's audit database (parameter audit_db)")
    parser.add_argument("--since", help="only decisions since: '8h', '30m', '2d', or an ISO time "
                                        "'2026-11-22T06:00' (local time)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def parse_since(text: str | None, now: float | None = None) -> int | None:
    """'8h' / '30m' / '45s' / '2d' ago, or an ISO date/time, as epoch nanoseconds."""
    if not text:
        return None
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        secs = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return int((now - secs) * 1e9)
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: use a duration like 8h, 30m, 2d or an ISO time "
                         "like 2026-11-22T06:00") from None
    return int(t.timestamp() * 1e9)


def run(args: argparse.Namespace) -> int:
    from defect_perception.core.audit import AuditError, format_summary, summary

    try:
        since = parse_since(args.since)
    except ValueError as e:
        print(f"audit: {e}", file=sys.stderr)
        return 2
    try:
        s = summary(args.db, since)
    except AuditError as e:
        print(f"audit: {e}", file=sys.stderr)
        return 1
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 0
