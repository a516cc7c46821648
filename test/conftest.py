"""Test session setup: a private ROS domain per run, local-only discovery, data paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEEPPCB = Path(os.environ.get("DEEPPCB_DIR", REPO.parent / "shared" / "datasets" / "deeppcb"))

_domain_ctx = None


def pytest_configure(config):
    """Reserve a ROS domain before any test (or subprocess) touches DDS."""
    global _domain_ctx
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if "ROS_DOMAIN_ID" not in os.environ:
        try:
            from domain_coordinator import domain_id
        except ImportError:
            return
        _domain_ctx = domain_id()
        os.environ["ROS_DOMAIN_ID"] = str(_domain_ctx.__enter__())


def pytest_unconfigure(config):
    if _domain_ctx is not None:
        _domain_ctx.__exit__(None, None, None)


@pytest.fixture(scope="session")
def deeppcb() -> Path:
    if not (DEEPPCB / "trainval.txt").is_file():
        pytest.fail(f"DeepPCB not found at {DEEPPCB} (expected ../shared/datasets/deeppcb)")
    return DEEPPCB


@pytest.fixture()
def tiny_deeppcb(deeppcb, tmp_path) -> list[str]:
    """The first three DeepPCB test pairs copied into tmp_path (safe to break); their list lines."""
    import shutil

    lines = (deeppcb / "test.txt").read_text().splitlines()[:3]
    for line in lines:
        img, ann = line.split()
        for rel in (img.replace(".jpg", "_test.jpg"), img.replace(".jpg", "_temp.jpg"), ann):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(deeppcb / rel, tmp_path / rel)
    (tmp_path / "test.txt").write_text("\n".join(lines) + "\n")
    return lines


@pytest.fixture()
def ros_context():
    """An rclpy context of its own for in-process node tests; shut down afterwards."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: tiny models gain nothing from more, and the CI box is shared."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
