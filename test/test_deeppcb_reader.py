"""DeepPCB reader: counts on the real data, and broken files named with path and line."""
from __future__ import annotations

import pytest

from defect_perception.training.deeppcb import DEFECT_TYPES, DatasetError, deterministic_split, read_split


def test_real_splits(deeppcb):
    trainval, test = read_split(deeppcb, "trainval"), read_split(deeppcb, "test")
    assert len(test) == 168 and len(trainval) >= 999
    assert not {s.name for s in trainval} & {s.name for s in test}
    assert all(len(s.boxes) == len(s.types) >= 1 for s in test)
    assert {t for s in trainval for t in s.types} == set(DEFECT_TYPES)
    a = deterministic_split(trainval, (0.7, 0.15, 0.15))
    b = deterministic_split(list(reversed(trainval)), (0.7, 0.15, 0.15))
    assert [sorted(s.name for s in p) for p in a] == [sorted(s.name for s in p) for p in b]
    assert 0.6 < len(a[0]) / len(trainval) < 0.8


def test_bad_label_line_and_missing_image_are_named(tiny_deeppcb, tmp_path):
    lines = tiny_deeppcb
    ann = tmp_path / lines[1].split()[1]
    ann.write_text(ann.read_text() + "10 10 5 5 3\n")
    with pytest.raises(DatasetError, match=rf"{ann.name}:\d+: bad annotation line"):
        read_split(tmp_path, "test")
    assert len(read_split(tmp_path, "test", on_error="skip")) == 2
    missing = tmp_path / lines[0].split()[0].replace(".jpg", "_temp.jpg")
    missing.unlink()
    with pytest.raises(DatasetError, match=rf"test.txt:1: image .*{missing.name} is missing"):
        read_split(tmp_path, "test", on_error="fail")
    with pytest.raises(DatasetError, match="split list not found"):
        read_split(tmp_path, "trainval")
