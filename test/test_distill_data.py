"""Classifier datasets: DeepPCB tiles from the real data, and bad inputs named with path (and
line), with the skip-vs-fail flag."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from defect_perception.training import deeppcb as dp
from defect_perception.training.classification import data
from defect_perception.training.classification.config import ConfigError, load_config
from defect_perception.training.deeppcb import DatasetError


def test_deeppcb_tiles_contain_their_defect(deeppcb):
    samples = dp.read_split(deeppcb, "test")[:4]
    ts = data.deeppcb_tiles(samples, tile=128, size=64, seed=0, normal_per_defect=1.5)
    n_def = sum(len(s.boxes) for s in samples)
    assert ts.images.shape[1:] == (64, 64) and ts.images.dtype == np.uint8
    assert (ts.labels > 0).sum() == n_def                       # one tile per annotated defect
    assert (ts.labels == 0).sum() >= n_def                      # template tile at each defect + free areas
    assert ts.tree["open"] == "missing_copper" and ts.classes[0] == "normal"
    # the defect lies inside its tile, and the template tile is the same place of the template
    s = samples[0]
    src = ts.sources[0]                                         # "<name>_test@x,y:<type>"
    x, y = (int(v) for v in src.split("@")[1].split(":")[0].split(","))
    x1, y1, x2, y2 = s.boxes[0]
    assert x <= x1 and y <= y1 and x2 <= x + 128 and y2 <= y + 128
    assert ts.sources[1] == f"{s.name}_temp@{x},{y}"
    again = data.deeppcb_tiles(samples, tile=128, size=64, seed=0, normal_per_defect=1.5)
    assert np.array_equal(again.images, ts.images)              # deterministic


def test_deeppcb_corrupt_image_fail_or_skip(tiny_deeppcb, tmp_path):
    lines = tiny_deeppcb
    broken = tmp_path / lines[0].split()[0].replace(".jpg", "_test.jpg")
    broken.write_bytes(b"not a jpeg")
    samples = dp.read_split(tmp_path, "test")
    with pytest.raises(DatasetError, match=f"{broken}: unreadable"):
        data.deeppcb_tiles(samples, on_error="fail")
    ts = data.deeppcb_tiles(samples, on_error="skip")
    assert len(ts.skipped) == 1 and str(broken) in ts.skipped[0]
    assert len(ts) > 0 and not any(s.startswith(samples[0].name) for s in ts.sources)


def _folder(tmp_path):
    for c in ("normal", "scratch"):
        (tmp_path / c).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / c / f"{i}.png"), np.full((20, 20), 40 * i, np.uint8))
    return tmp_path


def test_folder_unreadable_image_fail_or_skip(tmp_path):
    root = _folder(tmp_path)
    bad = root / "scratch" / "9.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=f"{bad}: unreadable or corrupt image"):
        data.folder_dataset(root, 16)
    ts = data.folder_dataset(root, 16, on_error="skip")
    assert len(ts) == 6 and ts.counts() == {"normal": 3, "scratch": 3}
    assert ts.skipped == [f"{bad}: unreadable or corrupt image"]


def test_label_file_and_tree_file_errors_name_path_and_line(tmp_path):
    root = _folder(tmp_path)
    (root / "labels.csv").write_text("normal/0.png,normal\n# comment\nscratch/1.png\n")
    with pytest.raises(DatasetError, match=r"labels.csv:3: bad label line 'scratch/1.png'"):
        data.folder_dataset(root, 16)
    (root / "labels.csv").write_text("normal/0.png,normal\nscratch/1.png,dent\n")
    with pytest.raises(DatasetError, match=r"scratch/1.png: class 'dent' is not one of"):
        data.folder_dataset(root, 16, classes=["normal", "scratch"])
    (root / "labels.csv").unlink()
    (root / "tree.txt").write_text("scratch surface\nsurface defect extra\n")
    with pytest.raises(DatasetError, match=r"tree.txt:2: bad tree line"):
        data.folder_dataset(root, 16)
    (root / "tree.txt").write_text("scratch surface\nsurface scratch\n")
    with pytest.raises(DatasetError, match="cycle"):
        data.folder_dataset(root, 16)
    (root / "tree.txt").write_text("scratch surface\nsurface defect\n")
    assert data.folder_dataset(root, 16).tree == {"scratch": "surface", "surface": "defect"}


def test_folder_split_is_deterministic_and_disjoint(tmp_path):
    root = _folder(tmp_path)
    a, b = data.folder_parts(root, 16), data.folder_parts(root, 16)
    assert a["train"].sources == b["train"].sources
    seen = [s for k in ("train", "val", "test") for s in a[k].sources]
    assert len(seen) == len(set(seen)) == 6


def test_augment_keeps_shape_and_changes_pixels():
    img = np.zeros((16, 16), np.uint8)
    img[2:6, 2:12] = 255
    aug = data.Augment(rot90=True, flip=True, rotate_deg=10, brightness=0.2, contrast=0.2)
    rng = np.random.default_rng(0)
    outs = [aug(img, rng) for _ in range(8)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, img) for o in outs)
    x = data.to_input(np.stack([img]))
    assert x.shape == (1, 3, 16, 16) and x.min() == -1.0 and x.max() == 1.0   # (x/255 - 0.5) / 0.5


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'simkd'"):
        load_config(None, {"method": "simdk", "teacher": "t.pt"})
    with pytest.raises(ConfigError, match="label-free KD has none"):
        load_config(None, {"method": "labelfree", "teacher": "t.pt", "hierarchy": True})
    p = tmp_path / "c.yaml"
    p.write_text("steps: many\n")
    with pytest.raises(ConfigError, match=r"c.yaml: key 'steps' must be int"):
        load_config(p)
