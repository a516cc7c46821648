"""Broken dataset files in the training commands (train-detector, compress-detector,
train-anomaly): one line `defect-perception <cmd>: <file>[:<line>]: ...` on stderr, exit 2,
no traceback, before any training starts; `--on-error skip` goes on without the sample.
Runs the real CLI in a subprocess on a tiny broken copy of DeepPCB (3 pairs)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from defect_perception.training.deeppcb import DatasetError, read_split

REPO = Path(__file__).resolve().parents[1]
# anomaly runs that reach training must stay tiny (they must not, except the skip run)
TINY_ANOMALY = {"size": 32, "student_width": 4, "steps": 2, "stage1_steps": 2, "batch": 2, "threads": 1,
                "context_grid": 2, "calib_fraction": 0.5, "pretrained": "false"}


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "defect_perception.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def last_error_line(out: subprocess.CompletedProcess, command: str) -> str:
    """The command's error: the last stderr line (logging/progress lines come before it)."""
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"defect-perception {command}: "), out.stderr[-2000:]
    return line


@pytest.fixture()
def broken_deeppcb(tiny_deeppcb, tmp_path) -> tuple[Path, list[str]]:
    """The 3 test pairs, also listed as trainval (what the training commands read)."""
    (tmp_path / "trainval.txt").write_text((tmp_path / "test.txt").read_text())
    return tmp_path, tiny_deeppcb


def corrupt(path: Path) -> Path:
    path.write_bytes(b"\x00not a jpeg at all")
    return path


def test_train_detector_names_an_unreadable_image(broken_deeppcb):
    root, lines = broken_deeppcb
    bad = corrupt(root / lines[1].split()[0].replace(".jpg", "_test.jpg"))
    out = cli("train-detector", "--data", str(root), "--epochs", "1", "--out", str(root / "run" / "b.pt"))
    assert last_error_line(out, "train-detector") == (
        f"defect-perception train-detector: {bad}: unreadable or corrupt image")
    assert not (root / "run").exists()  # stopped while loading, nothing trained
    # all samples broken and skipped: still a one-line error, not a crash in anchor fitting
    for line in lines:
        corrupt(root / line.split()[0].replace(".jpg", "_test.jpg"))
    out = cli("train-detector", "--data", str(root), "--epochs", "1", "--on-error", "skip",
              "--out", str(root / "run" / "b.pt"))
    assert "no usable training samples" in last_error_line(out, "train-detector")
    assert "3 bad sample(s) skipped" in out.stderr


def test_compress_detector_names_the_bad_annotation_line(broken_deeppcb):
    root, lines = broken_deeppcb
    ann = root / lines[2].split()[1]
    n = len(ann.read_text().splitlines())
    ann.write_text(ann.read_text() + "10 10 5 5 3\n")
    out = cli("compress-detector", "--data", str(root), "--work", str(root / "work"))
    line = last_error_line(out, "compress-detector")
    assert f"{ann}:{n + 1}: bad annotation line '10 10 5 5 3'" in line
    assert not (root / "work").exists()


def test_compress_detector_refuses_an_unknown_kd_teacher_before_training(broken_deeppcb):
    root, _ = broken_deeppcb
    cfg = root / "detector.yaml"
    cfg.write_text((REPO / "config/train/detector_small_2x.yaml").read_text().replace(
        "kd_teacher: sparse", "kd_teacher: teacher.pt"))
    out = cli("compress-detector", "--config", str(cfg), "--data", str(root), "--work", str(root / "work"))
    line = last_error_line(out, "compress-detector")
    assert "compress.kd_teacher: 'teacher.pt' is not one of baseline, sparse" in line
    assert not (root / "work").exists()


def test_detector_data_skips_bad_samples_on_request(broken_deeppcb):
    from defect_perception.training.detector.pipeline import load_config, load_data

    root, lines = broken_deeppcb
    corrupt(root / lines[0].split()[0].replace(".jpg", "_temp.jpg"))  # template of sample 1
    ann = root / lines[1].split()[1]
    ann.write_bytes(b"1 2 3 4 1\n\xff\xfe\n")  # not text: named with its line
    cfg = load_config(None, {"data": {"root": str(root), "template": True}, "model": {"img_size": 64}})
    with pytest.raises(DatasetError, match=rf"{ann.name}:2: not a text annotation file"):
        load_data(cfg, need_test=False)
    cfg["data"]["on_error"] = "skip"
    data = load_data(cfg, need_test=False)
    assert len(data.train) + len(data.val) == 1  # only the intact sample is left
    assert {img.shape for img in data.train.images + data.val.images} == {(64, 64, 2)}
    cfg["data"]["on_error"] = "ignore"
    with pytest.raises(ValueError, match=r"data.on_error: 'ignore' is not one of fail, skip"):
        load_data(cfg, need_test=False)
    (root / "test.txt").write_bytes(b"\xff\xfe\xfd")
    with pytest.raises(DatasetError, match=r"test.txt: cannot read split list"):
        read_split(root, "test")


def anomaly_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny_anomaly.yaml"
    cfg.write_text("".join(f"{k}: {v}\n" for k, v in TINY_ANOMALY.items()))
    return cfg


def test_train_anomaly_names_an_unreadable_template(broken_deeppcb, tmp_path):
    root, lines = broken_deeppcb
    bad = corrupt(root / lines[2].split()[0].replace(".jpg", "_temp.jpg"))
    out = cli("train-anomaly", "--deeppcb", str(root), "--config", str(anomaly_config(tmp_path)),
              "--work-dir", str(tmp_path / "run"), "--no-progress")
    assert last_error_line(out, "train-anomaly") == (
        f"defect-perception train-anomaly: {bad}: unreadable or corrupt image")
    assert not (tmp_path / "run").exists()


def test_train_anomaly_tune_scoring_images_are_checked_before_training(broken_deeppcb, tmp_path):
    root, lines = broken_deeppcb
    from defect_perception.training.anomaly.data import deeppcb_templates, split_train_calib

    _, calib = split_train_calib(deeppcb_templates(root), TINY_ANOMALY["calib_fraction"])
    assert calib  # the tested image of a calibration template is what --tune-scoring reads
    bad = corrupt(calib[0].with_name(calib[0].name.replace("_temp", "_test")))
    out = cli("train-anomaly", "--deeppcb", str(root), "--config", str(anomaly_config(tmp_path)),
              "--tune-scoring", "--work-dir", str(tmp_path / "run"), "--no-progress")
    assert last_error_line(out, "train-anomaly") == (
        f"defect-perception train-anomaly: {bad}: unreadable or corrupt image")
    assert "stage" not in out.stdout.lower() and not (tmp_path / "run").exists()  # no training ran


def test_train_anomaly_on_error_skip(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        cv2.imwrite(str(good / f"g{i}.png"), rng.integers(0, 255, (40, 40), dtype=np.uint8))
    bad = corrupt(good / "g3.png")
    cfg = str(anomaly_config(tmp_path))
    out = cli("train-anomaly", "--images", str(good), "--config", cfg, "--work-dir", str(tmp_path / "r"),
              "--no-progress")
    assert last_error_line(out, "train-anomaly").endswith(f"{bad}: unreadable or corrupt image")
    out = cli("train-anomaly", "--images", str(good), "--config", cfg, "--work-dir", str(tmp_path / "r"),
              "--no-progress", "--on-error", "skip")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped 1 bad input(s)" in out.stdout and f"{bad}" in out.stderr
    assert (tmp_path / "r" / "anomaly.pt").is_file()
