"""Contracts every part builds on: result JSON, model card, DeepPCB reader, shipped weights."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from defect_perception.core.model_card import ModelCardError, load_card, validate_card, write_card
from defect_perception.core.result import ResultError, make_result, parse_result, validate_result
from defect_perception.core.stats import RollingStats


def _card(**over):
    card = {"name": "m", "task": "classification", "input": {"size": [32, 32], "color": "bgr"},
            "outputs": [{"name": "logits", "meaning": "class logits"}], "classes": ["normal", "open"]}
    card.update(over)
    return card


def test_result_roundtrip_and_nan_becomes_null():
    r = make_result(stamp_ns=12, frame_id="camera", source="inspector", verdict="review",
                    score=float("nan"), reason="NaN output")
    back = parse_result(json.dumps(r), topic="/line/inspector/result")
    assert back["score"] is None and back["detections"] == [] and back["anomaly_score"] is None
    assert set(validate_result(back)) >= {"schema", "stamp_ns", "hierarchy", "latency_ms"}


def test_result_errors_name_topic_and_field():
    with pytest.raises(ResultError, match="/line/anomaly/result: malformed JSON"):
        parse_result("{not json", topic="/line/anomaly/result")
    bad = make_result(stamp_ns=1, frame_id="c", source="s", verdict="pass")
    bad["verdict"] = "maybe"
    with pytest.raises(ResultError, match="verdict"):
        validate_result(bad)
    del bad["latency_ms"]
    with pytest.raises(ResultError, match="latency_ms"):
        parse_result(json.dumps(bad), topic="t")
    with pytest.raises(ResultError):
        make_result(stamp_ns=1, frame_id="c", source="s", verdict="ok")


def test_model_card_validation_names_file_and_field(tmp_path):
    validate_card(_card())
    with pytest.raises(ModelCardError, match=r"model.json: field 'task'"):
        validate_card(_card(task="segmentation"), tmp_path / "model.json")
    with pytest.raises(ModelCardError, match=r"input.size"):
        validate_card(_card(input={"size": [32]}))
    with pytest.raises(ModelCardError, match="input.std"):
        validate_card(_card(input={"size": [8, 8], "std": [0.0]}))
    write_card(tmp_path, _card())
    with pytest.raises(ModelCardError, match="model.onnx.*missing"):
        load_card(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"x")
    card = load_card(tmp_path)
    assert card["_onnx"].endswith("model.onnx") and card["schema"].startswith("defect_perception/model_card")
    (tmp_path / "model.json").write_text("{broken")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_card(tmp_path)
    with pytest.raises(ModelCardError, match="model card not found"):
        load_card(tmp_path / "nowhere")


def test_rolling_stats_percentiles_and_rate():
    t = iter(np.arange(0, 10.0, 0.1))
    s = RollingStats(window=50, clock=lambda: next(t))
    for v in range(100):
        s.add(float(v))
    s.incr("drops", 2)
    p = s.percentiles()
    assert p["p50"] == pytest.approx(74.5) and p["p99"] == pytest.approx(98.51)
    assert s.rate_hz() == pytest.approx(10.0)
    assert s.summary()["drops"] == "2" and s.summary()["frames"] == "100"
    assert math.isnan(RollingStats().percentiles()["p50"])
