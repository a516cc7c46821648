"""The result JSON contract (version 1) shared by inspector, anomaly and sorter.

Fields that do not apply are null or empty, never omitted; `reason` is an optional
extension saying why a fail-safe or review verdict was given.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any

SCHEMA_ID = "defect_perception/result/1"
VERDICTS = ("pass", "reject", "review")


class ResultError(ValueError):
    """A result JSON that breaks the contract."""


def make_result(*, stamp_ns: int, frame_id: str, source: str, verdict: str,
                model: dict | None = None, label: str | None = None, score: float | None = None,
                hierarchy: list[dict] | None = None, detections: list[dict] | None = None,
                anomaly_score: float | None = None, latency_ms: dict | None = None,
                reason: str | None = None) -> dict[str, Any]:
    if verdict not in VERDICTS:
        raise ResultError(f"verdict {verdict!r} is not one of {VERDICTS}")
    return {
        "schema": SCHEMA_ID,
        "stamp_ns": int(stamp_ns),
        "frame_id": frame_id,
        "source": source,
        "model": model,
        "verdict": verdict,
        "label": label,
        "score": _num(score),
        "hierarchy": hierarchy or [],
        "detections": detections or [],
        "anomaly_score": _num(anomaly_score),
        "latency_ms": {k: round(float(v), 3) for k, v in (latency_ms or {}).items()},
        "reason": reason,
    }


def _num(x: float | None) -> float | None:
    """JSON has no NaN: a non-finite score becomes null (and the caller sets a reason)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(resources.files("defect_perception.core").joinpath(
        "schemas/result_v1.json").read_text())


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    return jsonschema.validators.validator_for(schema())(schema())


def validate_result(obj: dict) -> dict:
    """Check against the shipped JSON schema (with jsonschema when installed, else the
    required-field and type checks that matter on the line). Returns obj."""
    try:
        import jsonschema
    except ImportError:  # runtime installs may lack it
        jsonschema = None
    if jsonschema is not None:
        # a cached validator: jsonschema.validate() re-checks the schema on every call (~13 ms)
        e = jsonschema.exceptions.best_match(_validator().iter_errors(obj))
        if e is not None:
            path = "/".join(str(p) for p in e.absolute_path) or "<root>"
            raise ResultError(f"result field {path}: {e.message}") from None
        return obj
    missing = [k for k in schema()["required"] if k not in obj]
    if missing:
        raise ResultError(f"result is missing fields: {', '.join(missing)}")
    if obj["schema"] != SCHEMA_ID:
        raise ResultError(f"result field schema: {obj['schema']!r} != {SCHEMA_ID!r}")
    if obj["verdict"] not in VERDICTS:
        raise ResultError(f"result field verdict: {obj['verdict']!r} not in {VERDICTS}")
    return obj


def parse_result(text: str, topic: str = "result") -> dict:
    """Parse and validate a JSON string from a topic; errors name the topic."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultError(f"{topic}: malformed JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(obj, dict):
        raise ResultError(f"{topic}: JSON is a {type(obj).__name__}, expected an object")
    try:
        return validate_result(obj)
    except ResultError as e:
        raise ResultError(f"{topic}: {e}") from None


def dumps(result: dict) -> str:
    return json.dumps(result, separators=(",", ":"))
