"""Classification postprocessing: verdict, review band, per-class thresholds, category tree."""
from __future__ import annotations

import numpy as np
import pytest

from defect_perception.core.postprocess import OutputError, postprocess
from defect_perception.core.postprocess.classification import decide, softmax

CLASSES = ["normal", "open", "mousebite", "short", "spur"]
TREE = {"open": "missing_copper", "mousebite": "missing_copper", "short": "extra_copper",
        "spur": "extra_copper", "missing_copper": "defect", "extra_copper": "defect"}


def card(**th):
    return {"task": "classification", "classes": CLASSES, "pass_classes": ["normal"],
            "category_tree": TREE, "thresholds": {"reject": 0.5, **th}}


def logits_for(p):
    return {"logits": np.log(np.asarray(p, np.float32))[None]}


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([1000.0, 0.0, -1000.0]))
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0) and p[0] == pytest.approx(1.0)


def test_confident_fine_class_rejects_with_full_hierarchy():
    r = postprocess(logits_for([0.05, 0.85, 0.05, 0.03, 0.02]), card(fine_min=0.5), {})
    assert (r["verdict"], r["label"]) == ("reject", "open")
    assert r["score"] == pytest.approx(0.85, abs=1e-5)
    levels = [(h["level"], h["label"]) for h in r["hierarchy"]]
    assert levels == [("defect", "defect"), ("group", "missing_copper"), ("type", "open")]
    assert r["hierarchy"][0]["score"] == pytest.approx(0.95, abs=1e-5)
    assert r["hierarchy"][1]["score"] == pytest.approx(0.90, abs=1e-5)


def test_unsure_fine_class_falls_back_to_coarse_label_and_review():
    # defect is certain, missing copper is likely, but open vs mousebite is a coin toss
    r = postprocess(logits_for([0.02, 0.45, 0.43, 0.05, 0.05]), card(fine_min=0.6), {})
    assert r["verdict"] == "review" and r["label"] == "missing_copper"
    assert "fine class not confident" in r["reason"]
    assert r["score"] == pytest.approx(0.88, abs=1e-5)


def test_pass_and_review_band():
    c = card(review_band=[0.2, 0.5])
    assert postprocess(logits_for([0.9, 0.04, 0.02, 0.02, 0.02]), c, {})["verdict"] == "pass"
    r = postprocess(logits_for([0.7, 0.2, 0.04, 0.03, 0.03]), c, {})
    assert r["verdict"] == "review" and "review band" in r["reason"]
    r = postprocess(logits_for([0.4, 0.5, 0.04, 0.03, 0.03]), c, {})
    assert r["verdict"] == "reject"


def test_pass_result_names_the_good_class():
    r = postprocess(logits_for([0.9, 0.04, 0.02, 0.02, 0.02]), card(), {})
    assert (r["verdict"], r["label"]) == ("pass", "normal")
    assert r["score"] == pytest.approx(0.9, abs=1e-5) and r["p_defect"] == pytest.approx(0.1, abs=1e-5)


def test_per_class_threshold_rejects_a_critical_class_early():
    p = np.array([0.7, 0.02, 0.02, 0.24, 0.02])
    assert decide(p, card())["verdict"] == "pass"
    r = decide(p, card(per_class={"short": 0.2}))
    assert (r["verdict"], r["label"]) == ("reject", "short")


def test_without_tree_the_top_defect_class_is_the_label():
    c = {"task": "classification", "classes": ["ok", "scratch", "dent"], "thresholds": {"reject": 0.5}}
    r = decide(np.array([0.1, 0.3, 0.6]), c)
    assert (r["verdict"], r["label"]) == ("reject", "dent")  # pass class "ok" recognised by name
    assert [h["level"] for h in r["hierarchy"]] == ["defect", "type"]


def test_bad_logits_raise_naming_the_output():
    with pytest.raises(OutputError, match="'logits' contains 1 NaN"):
        postprocess({"logits": np.array([[0.1, np.nan, 0, 0, 0]], np.float32)}, card(), {})
    with pytest.raises(OutputError, match="3 classes, the card lists 5"):
        postprocess({"logits": np.zeros((1, 3), np.float32)}, card(), {})
    with pytest.raises(OutputError, match="'logits' is missing"):
        postprocess({"scores": np.zeros((1, 5), np.float32)}, card(), {})


def test_no_group_confident_gives_plain_defect_label_for_review():
    c = {"classes": ["normal", "open", "short"], "pass_classes": ["normal"],
         "category_tree": {"open": "missing_copper", "short": "extra_copper"},
         "thresholds": {"reject": 0.5, "fine_min": 0.6}}
    r = decide(np.array([0.1, 0.45, 0.45]), c)
    assert (r["verdict"], r["label"]) == ("review", "defect")
    assert r["hierarchy"] == [{"level": "defect", "label": "defect", "score": pytest.approx(0.9)}]
