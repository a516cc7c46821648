"""A broken YAML file a user wrote is named, with what it was for and what is wrong."""
from __future__ import annotations

import pytest

from defect_perception.actuation.config import ActuatorConfigError, load_config
from defect_perception.line_spec import LineSpecError, read_params_file


@pytest.mark.parametrize("text, why", [
    ("actuators: [\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping at the top, got list"),
    ("other: 1\n", "expected a top-level 'actuators:' list"),
])
def test_actuator_config_errors_name_the_file(tmp_path, text, why):
    p = tmp_path / "act.yaml"
    p.write_text(text)
    with pytest.raises(ActuatorConfigError, match=why) as e:
        load_config(p)
    assert str(p) in str(e.value)
    with pytest.raises(ActuatorConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_parameter_file_errors_name_the_file(tmp_path):
    p = tmp_path / "line.yaml"
    p.write_text("/**/camera:\n  ros__parameters: {fps: [\n")
    with pytest.raises(LineSpecError, match=f"parameter file {p}: not valid YAML"):
        read_params_file(p)
    p.write_text("")
    assert not any(read_params_file(p).values())  # empty file: every node on its defaults
