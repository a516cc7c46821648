"""Ground truth for replayed parts: from the recording's label topic or a sidecar file.

A label says whether the part is good (`pass`) or defective (`reject`), optionally with the
defect types. Sidecar files key each label by frame `index` (0-based order of the images in
the recording) or by part `stamp_ns` (the image header stamp), in CSV, JSON (a list, or an
object with a `labels` or `frames` list, as `make-sample` writes) or JSON Lines:

    index,label,defect_types          {"index": 3, "label": "reject", "defect_types": ["open"]}
    0,pass,
    3,reject,open;short
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from defect_perception.evaluation import EvaluationError

GOOD_WORDS = {"pass", "good", "ok", "normal", "template", "0", "false"}
BAD_WORDS = {"reject", "defect", "defective", "bad", "ng", "fail", "nok", "1", "true"}


@dataclass(frozen=True)
class Truth:
    """One part's ground truth. `label` is `pass` (good) or `reject` (defective)."""

    label: str
    defect_types: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"label": self.label, "defect_types": list(self.defect_types)}


@dataclass
class LabelEntry:
    """A sidecar row before it is matched to a frame: exactly one of index / stamp_ns is set."""

    truth: Truth
    index: int | None = None
    stamp_ns: int | None = None
    where: str = ""

    def key(self) -> str:
        return f"index {self.index}" if self.index is not None else f"stamp_ns {self.stamp_ns}"


def normalise_label(value, where: str) -> str:
    text = str(value).strip().lower()
    if text in GOOD_WORDS:
        return "pass"
    if text in BAD_WORDS:
        return "reject"
    raise EvaluationError(f"{where}: label {value!r} is neither good ({', '.join(sorted(GOOD_WORDS))}) "
                          f"nor defective ({', '.join(sorted(BAD_WORDS))})")


def _types(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    text = str(value).replace("|", ";").replace(",", ";")
    return tuple(t.strip() for t in text.split(";") if t.strip())


def truth_from_obj(obj: dict, where: str) -> Truth:
    """Truth from a label message / sidecar object (`label`, optional `defect_types`)."""
    if "label" not in obj:
        raise EvaluationError(f"{where}: no 'label' field (got keys {sorted(obj)})")
    types = obj.get("defect_types", obj.get("defect_type", obj.get("types")))
    truth = Truth(normalise_label(obj["label"], where), _types(types))
    return truth


def _entry(obj: dict, where: str) -> LabelEntry:
    truth = truth_from_obj(obj, where)
    index = obj.get("index", obj.get("frame"))
    stamp = obj.get("stamp_ns", obj.get("stamp"))
    index = None if index in (None, "") else index
    stamp = None if stamp in (None, "") else stamp
    if index is None and stamp is None:
        raise EvaluationError(f"{where}: needs an 'index' (frame number) or 'stamp_ns' (part stamp)")
    try:
        return LabelEntry(truth, index=int(index) if index is not None else None,
                          stamp_ns=int(stamp) if index is None else None, where=where)
    except (TypeError, ValueError):
        raise EvaluationError(f"{where}: index/stamp_ns must be integers, got "
                              f"index={index!r} stamp_ns={stamp!r}") from None


def load_sidecar(path: str | Path) -> list[LabelEntry]:
    """Read a sidecar label file (.csv, .json, .jsonl); errors name the file and row."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"labels file {path} does not exist")
    text = path.read_text()
    entries: list[LabelEntry] = []
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        for i, row in enumerate(rows, start=2):
            row = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}
            entries.append(_entry(row, f"{path}:{i}"))
    elif path.suffix.lower() == ".jsonl":
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                entries.append(_entry(_json(line, f"{path}:{i}"), f"{path}:{i}"))
    else:
        data = _json(text, str(path))
        if isinstance(data, dict):  # {"labels": [...]} or make-sample's {"frames": [...]}
            data = data.get("labels", data.get("frames"))
        if not isinstance(data, list):
            raise EvaluationError(f"{path}: expected a JSON list of label objects, or an object with a "
                                  f"'labels' or 'frames' list")
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise EvaluationError(f"{path}: entry {i} is a {type(obj).__name__}, expected an object")
            entries.append(_entry(obj, f"{path} entry {i}"))
    if not entries:
        raise EvaluationError(f"labels file {path} holds no labels")
    return entries


def _json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{where}: not valid JSON ({e.msg}, line {e.lineno})") from None


def match_sidecar(entries: list[LabelEntry], stamps: list[int], source: str = "labels"
                  ) -> tuple[dict[int, Truth], list[LabelEntry]]:
    """Map sidecar entries onto frame indices. `stamps[i]` is frame i's header stamp.
    Returns ({index: Truth}, unmatched entries); raises when no entry matches any frame,
    since a report scored against nothing would look complete and mean nothing."""
    by_stamp = {s: i for i, s in enumerate(stamps)}
    out: dict[int, Truth] = {}
    unmatched: list[LabelEntry] = []
    for e in entries:
        idx = e.index if e.index is not None else by_stamp.get(e.stamp_ns)
        if idx is None or not 0 <= idx < len(stamps):
            unmatched.append(e)
        else:
            out[idx] = e.truth
    if not out:
        sample = ", ".join(e.key() for e in unmatched[:3])
        raise EvaluationError(
            f"{source}: none of the {len(entries)} labels matches a frame of the recording "
            f"({len(stamps)} frames, indices 0..{len(stamps) - 1}, stamps "
            f"{stamps[0] if stamps else '-'}..{stamps[-1] if stamps else '-'}); e.g. {sample}")
    return out, unmatched
