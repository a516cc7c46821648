"""Ground-truth label sidecars for folder sources (`labels.csv`).

Format, one row per image (a header row `filename,label,defect_type` is optional):
    board_001.png,pass
    board_002.png,reject,short;open
The label is `pass` or `reject` (aliases: ok/good/normal -> pass, ng/bad/defect -> reject);
defect types are separated by `;` or `|`. Repeated rows for one file add defect types.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from defect_perception.sources.base import Label, SourceError

ALIASES = {"pass": "pass", "ok": "pass", "good": "pass", "normal": "pass",
           "reject": "reject", "ng": "reject", "bad": "reject", "defect": "reject"}


def read_labels_csv(path: Path) -> dict[str, Label]:
    """filename -> Label. Raises SourceError naming the file and line for a bad row."""
    labels: dict[str, Label] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise SourceError(f"labels file {path}: cannot read ({e.strerror})") from None
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        row = [c.strip() for c in row]
        if not row or not row[0] or row[0].startswith("#"):
            continue
        if lineno == 1 and row[0].lower() in ("filename", "file", "image"):
            continue
        if len(row) < 2:
            raise SourceError(f"labels file {path}:{lineno}: expected 'filename,label[,defect_type]',"
                              f" got {','.join(row)!r}")
        name, raw = row[0], row[1].lower()
        if raw not in ALIASES:
            raise SourceError(f"labels file {path}:{lineno}: label {row[1]!r} for {name} is not"
                              f" pass or reject")
        types = [t for c in row[2:] for t in re.split(r"[;|]", c) if t.strip()]
        lab = labels.setdefault(name, Label(ALIASES[raw]))
        if ALIASES[raw] == "reject":
            lab.label = "reject"
        lab.defect_types.extend(t.strip() for t in types if t.strip() not in lab.defect_types)
    return labels
