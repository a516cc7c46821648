"""Packaging: package.xml and setup.py agree, every node of the line is installable and
runnable the same way, and (where colcon is available) `colcon build` produces an ament layout."""
from __future__ import annotations

import importlib.util
import inspect
import os
import runpy
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import defect_perception
from defect_perception.line_spec import NODES

REPO = Path(__file__).resolve().parents[1]
PKG = "defect_perception"


def setup_kwargs() -> dict:
    """Run setup.py with setuptools.setup captured (the real data_files logic runs)."""
    import setuptools

    captured: dict = {}
    real, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        os.chdir(REPO)
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = real
        os.chdir(cwd)
    return captured


def test_package_xml_and_setup_py_agree():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    kw = setup_kwargs()
    assert root.findtext("name") == kw["name"] == PKG
    assert root.findtext("version") == kw["version"] == defect_perception.__version__
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "std_srvs", "diagnostic_msgs", "rcl_interfaces",
            "launch", "launch_ros"} <= deps
    assert (REPO / "resource" / PKG).is_file()
    assert {"ros", "train", "tensorrt", "test"} <= set(kw["extras_require"])
    assert not any(r.split("=")[0].startswith(("torch", "timm")) for r in kw["install_requires"]), \
        "the runtime install must stay lean (torch belongs in [train])"


def test_console_scripts_cover_every_node_and_the_cli():
    entries = setup_kwargs()["entry_points"]["console_scripts"]
    scripts = dict(s.replace(" ", "").split("=", 1) for s in entries)
    assert scripts["defect-perception"] == "defect_perception.cli:main"
    for spec in NODES:
        assert scripts[spec.executable] == f"{spec.module}:main"


def test_data_files_install_launch_config_models_and_sample():
    kw = setup_kwargs()
    installed = {os.path.join(dest, os.path.basename(f)): f
                 for dest, files in kw["data_files"] for f in files}
    share = f"share/{PKG}"
    assert installed[f"share/ament_index/resource_index/packages/{PKG}"] == f"resource/{PKG}"
    assert f"{share}/package.xml" in installed
    assert f"{share}/launch/line.launch.py" in installed
    assert f"{share}/config/line.yaml" in installed
    for top in ("models", "data"):
        files = [p for p in (REPO / top).rglob("*") if p.is_file() and not p.name.startswith(".")
                 and not any(part.startswith(".") for part in p.relative_to(REPO).parts)]
        for p in files:
            rel = str(p.relative_to(REPO))
            assert f"{share}/{rel}" in installed, f"{rel} is not installed"


def test_cli_help_runs_without_heavy_imports():
    r = subprocess.run([sys.executable, "-m", "defect_perception.cli", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "line" in r.stdout and "param" in r.stdout
    code = ("import sys, defect_perception.cli as c, defect_perception.commands.line, "
            "defect_perception.commands.param; sys.exit(int('torch' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0, "torch imported"


@pytest.mark.parametrize("spec", NODES, ids=[n.name for n in NODES])
def test_node_module_convention(spec):
    """`python -m defect_perception.nodes.<name>` works, and the in-process mode finds the class;
    the node publishes /diagnostics through nodes/base.py Diagnostics."""
    if not spec.available():
        pytest.skip(f"{spec.module} is not in this build yet")
    from rclpy.node import Node

    from defect_perception.launcher.composed import node_class

    source = Path(importlib.util.find_spec(spec.module).origin).read_text()
    assert 'if __name__ == "__main__":' in source and "def main(" in source
    cls = node_class(spec.name)
    assert issubclass(cls, Node)
    family = [c for c in cls.__mro__ if c.__module__.startswith("defect_perception.nodes")]
    assert any("Diagnostics(" in inspect.getsource(c) for c in family), f"{cls.__name__} has no Diagnostics"


def _colcon() -> str | None:
    return os.environ.get("COLCON") or shutil.which("colcon")


@pytest.mark.skipif(_colcon() is None, reason="colcon not installed (pip install colcon-common-extensions, "
                                              "or set COLCON=/path/to/colcon)")
def test_colcon_build_gives_an_ament_install_layout(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / PKG).symlink_to(REPO)
    r = subprocess.run([_colcon(), "build", "--base-paths", "src"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    inst = tmp_path / "install" / PKG
    for script in ["defect-perception"] + [n.executable for n in NODES]:
        assert (inst / "lib" / PKG / script).is_file(), script  # where `ros2 run` looks
    share = inst / "share" / PKG
    for rel in ("package.xml", "launch/line.launch.py", "config/line.yaml"):
        assert (share / rel).is_file(), rel
    assert (inst / "share/ament_index/resource_index/packages" / PKG).is_file()


def test_parameter_docs_generator_covers_every_declared_parameter():
    """docs/parameters.md is generated from the nodes' ParamSpec tables (see its header)."""
    from defect_perception.launcher.param_docs import node_specs, render

    text = render()
    for spec in NODES:
        if spec.available():
            names = [s.name for s in node_specs(spec)]
            assert names, f"{spec.name}: no ParamSpec table found"
            assert all(f"| `{n}` |" in text for n in names)


def test_readme_links_every_document():
    """README's docs index links every docs/*.md (add a row there when adding a document)."""
    readme = (REPO / "README.md").read_text()
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if f"(docs/{p.name})" not in readme]
    assert not missing, f"README.md does not link: {missing}"
